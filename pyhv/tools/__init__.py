"""pyhv's entry points for people: the ``pyhv`` command (:mod:`~pyhv.tools.cli`), the
built-in demo guest (:mod:`~pyhv.tools.demo`) and the long hostile-input checks
(:mod:`~pyhv.tools.stress`)."""
