"""`python -m scheduler`: run the promise sweeps alone, as `clinicbot scheduler run` does."""

from __future__ import annotations

import sys

from bot.cli import main

if __name__ == "__main__":
    sys.exit(main(["scheduler", "run", *sys.argv[1:]]))
