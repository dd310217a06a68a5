"""``python -m edgejobs``: the same as the ``edgejobs`` command."""

import sys

from edgejobs.cli import main

sys.exit(main())
