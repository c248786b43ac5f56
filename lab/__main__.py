"""`python -m lab up|down|status`."""

import sys

from lab.cli import main

sys.exit(main())
