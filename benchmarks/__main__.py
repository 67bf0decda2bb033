"""`python -m benchmarks ...`: the same commands as the `de3bert` console entry."""

import sys

from .cli import main

sys.exit(main())
