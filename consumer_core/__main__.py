"""``python -m consumer_core``: the ``bridge`` CLI, whatever else is called bridge on PATH."""

import sys

from consumer_core.cli import main

sys.exit(main())
