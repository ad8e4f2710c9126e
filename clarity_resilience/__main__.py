"""Run the command-line interface: ``python -m clarity_resilience``."""

from __future__ import annotations

import signal
import sys

if __name__ == "__main__":
    try:
        from ._cli import run
    except KeyboardInterrupt:
        # Ctrl-C before the command's own handler is in place: the same one line.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        sys.stderr.write("clarity-resilience: interrupted\n")
        sys.exit(130)
    run()
