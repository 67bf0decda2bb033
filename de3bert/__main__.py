"""`python -m de3bert`: the library's commands (list, train, eval); also what `accelerate launch` runs."""

import sys

from de3bert.cli import main

sys.exit(main())
