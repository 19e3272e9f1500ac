"""``python -m dinolab`` (also what ``torchrun -m dinolab`` runs)."""

import sys

from dinolab.cli import main

sys.exit(main())
