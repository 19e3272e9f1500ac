"""``python -m dinolab.pretrain`` (also what ``torchrun -m dinolab.pretrain`` runs)."""

import sys

from dinolab.pretrain.cli import main

sys.exit(main())
