"""`python -m ikd` is the `ikd` command."""

import sys

from ikd.cli import main

sys.exit(main())
