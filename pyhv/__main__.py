"""``python -m pyhv`` is the ``pyhv`` command."""

from .tools.cli import main

raise SystemExit(main())
