"""`python -m proxy` is the `sluice` command."""

import sys

from .edge.cli import main

sys.exit(main())
