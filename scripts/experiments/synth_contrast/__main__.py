"""``python -m scripts.experiments.synth_contrast``: see :mod:`scripts.experiments.synth_contrast.run`."""

import sys

from scripts.experiments.synth_contrast.run import main

sys.exit(main())
