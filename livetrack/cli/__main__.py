"""``python -m livetrack.cli``."""

import sys

from livetrack.cli import main

sys.exit(main())
