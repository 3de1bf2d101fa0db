"""Entry point of ``python -m cybn``: runs the demo."""

import sys

from cybn._demo import main

if __name__ == "__main__":
    sys.exit(main())
