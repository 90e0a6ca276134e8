"""``python -m aligngemini.cli``: the same as the ``aligngemini`` command."""

import sys

from aligngemini.cli import main

sys.exit(main())
