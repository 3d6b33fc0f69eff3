"""``python -m p2paid``: the same as the ``p2paid`` command."""

import sys

from p2paid.cli.main import main

sys.exit(main())
