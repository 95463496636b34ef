"""``python -m fsfsl_utils.data export|pack``: see :mod:`fsfsl_utils.data.cli`."""

import sys

from .cli import main

sys.exit(main())
