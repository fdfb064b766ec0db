"""Build glue: setuptools builds the cffi extension pyhv._core from csrc/ (see pyproject.toml)."""

from setuptools import setup

# The C core uses only CPython's limited API (cffi builds _core.abi3.so), so one wheel serves
# every CPython from the oldest supported one (requires-python in pyproject.toml) on.
setup(cffi_modules=["csrc/ffi_build.py:ffibuilder"],
      options={"bdist_wheel": {"py_limited_api": "cp310"}})
