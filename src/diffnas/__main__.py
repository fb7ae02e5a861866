"""``python -m diffnas ...``: the same command line as the ``diffnas`` console script (also what
``torchrun -m diffnas`` and a checkout without installation, ``PYTHONPATH=src``, use)."""

from .cli import main

raise SystemExit(main())
