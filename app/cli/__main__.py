"""``python -m app.cli``: the same as the ``proreason`` command."""

import sys

from app.cli import main

sys.exit(main())
