"""``python -m lamplighter``."""

from __future__ import annotations

import sys

from lamplighter.cli import main

sys.exit(main())
