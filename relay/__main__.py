"""`python -m relay` runs the command-line interface."""

import sys

from relay.cli import main

sys.exit(main())
