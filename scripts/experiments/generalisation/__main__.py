"""``python -m scripts.experiments.generalisation``: see :mod:`scripts.experiments.generalisation.run`."""

import sys

from scripts.experiments.generalisation.run import main

sys.exit(main())
