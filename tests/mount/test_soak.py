"""The soak script's short run: 16 clients (8 on the mount, 8 on application channels) for
30 seconds, every read checked against what was written; nothing lost, corrupted or
unexpected."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_thirty_second_soak_with_sixteen_clients() -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "soak.py"),
            "--clients",
            "16",
            "--seconds",
            "30",
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("soak: clients=16 ") and last.endswith(" errors=0 ok"), last
    ops = int(last.split("ops=")[1].split()[0])
    assert ops > 1000  # the clients really worked
