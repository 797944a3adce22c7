"""``python -m scripts.experiments.skip_ablation``: see :mod:`scripts.experiments.skip_ablation.run`."""

import sys

from scripts.experiments.skip_ablation.run import main

sys.exit(main())
