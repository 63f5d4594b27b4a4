"""``python -m zhlora`` is the same as the ``zhlora`` command."""

import sys

from zhlora.cli import main

sys.exit(main())
