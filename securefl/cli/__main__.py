"""``python -m securefl.cli``."""

import sys

from securefl.cli import main

sys.exit(main())
