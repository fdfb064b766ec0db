"""Build glue: setuptools builds the cffi extension pyhv._core from csrc/ (see pyproject.toml)."""

from setuptools import setup

setup(cffi_modules=["csrc/ffi_build.py:ffibuilder"])
