"""``python -m diffnas.cli`` (the same as ``diffnas``)."""

import sys

from . import main

sys.exit(main())
