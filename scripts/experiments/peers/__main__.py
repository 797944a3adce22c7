"""``python -m scripts.experiments.peers``: see :mod:`scripts.experiments.peers.run`."""

import sys

from scripts.experiments.peers.run import main

sys.exit(main())
