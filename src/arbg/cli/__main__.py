"""``python -m arbg.cli``: the ``arbg`` command."""

import sys

from arbg.cli import main

sys.exit(main())
