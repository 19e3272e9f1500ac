"""``python -m pretrain`` (also what ``torchrun -m pretrain`` runs)."""

import sys

from pretrain.cli import main

sys.exit(main())
