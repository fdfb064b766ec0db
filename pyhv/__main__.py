"""``python -m pyhv`` is the ``pyhv`` command."""

from .cli import main

raise SystemExit(main())
