"""``python -m server``: the same as ``ensemble-serve``."""

import sys

from server.cli import main

sys.exit(main())
