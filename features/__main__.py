"""``python -m dinolab.features`` (the ``features`` command)."""

import sys

from dinolab.features.cli import main

sys.exit(main())
