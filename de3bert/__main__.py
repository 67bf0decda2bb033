import sys

from de3bert.cli import main

sys.exit(main())
