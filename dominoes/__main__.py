"""``python -m dominoes`` is the ``dominoes`` command."""

import sys

from ._cli import main

sys.exit(main())
