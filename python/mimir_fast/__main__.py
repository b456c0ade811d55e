"""``python -m mimir_fast`` (and ``torchrun -m mimir_fast``): the ``mimir-fast`` command line."""

import sys

from mimir_fast.cli import main

if __name__ == "__main__":
    sys.exit(main())
