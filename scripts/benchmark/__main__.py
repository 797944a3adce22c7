"""``python -m scripts.benchmark``: see :mod:`scripts.benchmark`."""

import sys

from scripts.benchmark.run import main

sys.exit(main())
