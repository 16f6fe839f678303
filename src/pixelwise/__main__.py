"""``python -m pixelwise`` (also what ``torchrun -m pixelwise`` runs)."""

import sys

from pixelwise.cli import main

sys.exit(main())
