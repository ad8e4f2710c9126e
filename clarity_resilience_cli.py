"""The ``clarity-resilience`` console script's entry point, outside the package.

A console script imports its module's package before calling it: Ctrl-C during that
import would print Python's traceback before any of the command's code runs. This
module is imported alone, installs the command's one-line interrupt handler, and only
then imports the package.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType
from typing import NoReturn

__all__ = ["main"]


def _interrupted(signum: int, frame: FrameType | None) -> NoReturn:
    os.write(2, b"clarity-resilience: interrupted\n")
    os._exit(130)


def main() -> NoReturn:
    """Run the command line as a program (see ``clarity_resilience._cli.run``)."""
    signal.signal(signal.SIGINT, _interrupted)
    from clarity_resilience._cli import run

    run()


if __name__ == "__main__":  # pragma: no cover - run through the console script
    main()
    sys.exit(0)
