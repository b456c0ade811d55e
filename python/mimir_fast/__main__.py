"""``python -m mimir_fast`` (and ``torchrun -m mimir_fast``): the ``mimir-fast`` command line."""

import sys

from mimir_fast.cli import main

__all__: list[str] = []

if __name__ == "__main__":
    sys.exit(main())
