"""`python -m diffwave` runs the command line."""

import sys

from diffwave.cli import main

sys.exit(main())
