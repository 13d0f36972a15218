"""``python -m glmtune.cli ...`` (and ``accelerate launch -m glmtune.cli ...``): the same as ``glmtune ...``."""

import sys

from glmtune.cli import main

if __name__ == "__main__":
    main(sys.argv[1:])
