"""``python -m scripts.experiments.trust``: see :mod:`scripts.experiments.trust.run`."""

import sys

from scripts.experiments.trust.run import main

sys.exit(main())
