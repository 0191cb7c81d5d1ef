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


def _probe(*args: str) -> str:
    """Run a probe under benchmarks/; its output, once it exited 0."""
    done = subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("kind", ["nop", "read", "bare"])
def test_server_cost_probe_runs(kind: str) -> None:
    assert f"{kind} batch=4: 100 commands" in _probe("benchmarks/server_cost.py", kind, "4", "25")


def test_sides_cost_probe_runs() -> None:
    assert "200 round trips" in _probe("benchmarks/sides_cost.py", "200")
