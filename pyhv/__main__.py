"""``python -m pyhv`` is the ``pyhv`` command."""

from .tools.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
