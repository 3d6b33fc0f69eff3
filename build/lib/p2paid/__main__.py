"""``python -m p2paid``: the same as the ``p2paid`` command."""

import sys

from .cli import main

sys.exit(main())
