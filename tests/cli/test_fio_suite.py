"""benchmarks/fio_suite.py's harness (not its measurements): names checked before anything
runs, `--output DIR` honoured, the chart drawn from the committed results, and a tiny run
end to end (tmpfs and one ringfs mount, two metadata jobs, two rounds)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest

from tests.support.mounting import REPO

SUITE = REPO / "benchmarks" / "fio_suite.py"
RESULTS = REPO / "benchmarks" / "results"


def _suite(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SUITE), *args],
        cwd=REPO, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def _committed() -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in RESULTS.iterdir()}


@pytest.mark.parametrize(
    ("args", "message", "valid"),
    [
        (["--targets", "tmpfs,bogus"], "unknown target bogus; valid targets: ", "passthrough"),
        (["--jobs", "stat,nope,zap"], "unknown job nope, zap; valid jobs: ", "untar"),
        (["--targets", ","], "no target given; valid targets: ", "ringfs-auto"),
    ],
)
def test_an_unknown_name_exits_2_naming_the_valid_ones_and_writes_nothing(
    tmp_path: Path, args: list[str], message: str, valid: str
) -> None:
    before = _committed()
    out = tmp_path / "out"
    done = _suite(*args, "--output", str(out))
    assert done.returncode == 2
    assert message in done.stderr and valid in done.stderr
    assert "Traceback" not in done.stderr
    assert not out.exists()
    assert _committed() == before


def test_the_chart_of_the_committed_results(tmp_path: Path) -> None:
    done = _suite("--replot", str(RESULTS / "fio_suite.json"), "--output", str(tmp_path))
    assert done.returncode == 0, done.stderr
    chart = tmp_path / "fio_suite.png"
    assert done.stdout.strip() == f"fio_suite: chart={chart}"
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = matplotlib.image.imread(chart).shape
    assert (width, height) == (1500, 1050)
    assert [p.name for p in tmp_path.iterdir()] == ["fio_suite.png"]


def test_a_tiny_run_writes_everything_to_output_only(tmp_path: Path) -> None:
    before = _committed()
    out = tmp_path / "deep" / "out"
    done = _suite(
        "--quick", "--rounds", "2", "--targets", "tmpfs,ringfs-auto", "--jobs", "stat,create",
        "--output", str(out), timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr + done.stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "fio_suite-quick.json", "fio_suite-quick.md", "fio_suite-quick.png",
    ]  # fmt: skip
    report = json.loads((out / "fio_suite-quick.json").read_text())
    assert list(report["results"]) == ["tmpfs", "ringfs-auto"]
    for per_job in report["results"].values():
        assert list(per_job) == ["stat", "create"]
        for result in per_job.values():
            assert len(result["round_rates"]) == 2
            assert all(rate > 0 for rate in result["round_rates"])
            assert min(result["round_rates"]) <= result["ops_s"] <= max(result["round_rates"])
    assert _committed() == before
