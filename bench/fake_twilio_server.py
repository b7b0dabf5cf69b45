"""Run the tests' fake Twilio as a process of its own, for the benchmarks: prints its base URL, serves
until standard input closes.

    .venv/bin/python -m bench.fake_twilio_server ACCOUNT_SID AUTH_TOKEN
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fakes.fake_twilio import FakeTwilio  # noqa: E402


def main() -> int:
    if len(sys.argv) != 3:
        print("usage: python -m bench.fake_twilio_server ACCOUNT_SID AUTH_TOKEN", file=sys.stderr)
        return 2
    fake = FakeTwilio(account_sid=sys.argv[1], auth_token=sys.argv[2]).start()
    print(fake.base_url, flush=True)
    try:
        sys.stdin.read()  # until the benchmark closes our standard input, or goes away
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
