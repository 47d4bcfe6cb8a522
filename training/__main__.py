"""`python -m training ...` is `ensemble-train ...`."""

import sys

from training.cli import main

sys.exit(main())
