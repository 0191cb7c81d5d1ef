"""The in-process cost probes under benchmarks/ still run against today's interfaces.

They are what callgrind counts are taken with (`server_cost.py`, `sides_cost.py`), so a
refactor that breaks them silently loses the project its repeatable measurements. Each runs
here with a handful of commands; its timings are not looked at, only that it completed every
command and said so.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("kind", ["nop", "read", "bare"])
def test_server_cost_probe_runs(kind: str) -> None:
    done = subprocess.run(
        [sys.executable, "benchmarks/server_cost.py", kind, "4", "25"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"{kind} batch=4: 100 commands" in done.stdout


def test_sides_cost_probe_runs() -> None:
    done = subprocess.run(
        [sys.executable, "benchmarks/sides_cost.py", "200"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "200 round trips" in done.stdout
