"""``python -m scripts.experiments.tumour_family``: see :mod:`scripts.experiments.tumour_family.run`."""

import sys

from scripts.experiments.tumour_family.run import main

sys.exit(main())
