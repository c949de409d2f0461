"""``python -m vreid``: the same as the ``vreid`` command."""

import sys

from vreid.cli import main

if __name__ == "__main__":
    sys.exit(main())
