"""Run the command-line interface: ``python -m clarity_resilience``."""

from __future__ import annotations

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
