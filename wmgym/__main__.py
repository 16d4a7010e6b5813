"""``python -m wmgym ...``: the same as the ``wmgym`` command."""

import sys

from wmgym.cli import main

sys.exit(main(sys.argv[1:]))
