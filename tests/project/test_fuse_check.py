"""The suite's FUSE check (tests/conftest.py), run for real in a pytest subprocess.

The subprocess gets `RINGFS_FUSE_DEVICE` pointing at a path that does not exist, so FUSE is
unusable for it alone (this machine's /dev/fuse and everyone's mounts are left alone). A run
that includes a mount test must then refuse to start with exit code 3 and the message; a run
of only pure tests must pass.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import NO_FUSE_EXIT

REPO = Path(__file__).resolve().parents[2]


def _pytest(device: Path | str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, RINGFS_FUSE_DEVICE=str(device))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_mount_test_without_fuse_fails_the_run(tmp_path: Path) -> None:
    run = _pytest(
        tmp_path / "no-fuse-here",
        "tests/protocol/test_protocol.py",
        "tests/mount/test_posix_on_mount.py",
    )
    output = run.stdout + run.stderr
    assert run.returncode == NO_FUSE_EXIT, output
    assert "refuse to skip mount tests" in output, output
    assert "no-fuse-here is missing" in output, output
    assert "test_posix_on_mount.py" in output, output
    # Refused before anything ran: not even the pure tests of the same run passed or skipped.
    assert " passed" not in output and "skipped" not in output, output


def test_a_deselected_mount_test_needs_no_fuse(tmp_path: Path) -> None:
    """Selection counts, not the files named: -k leaving only pure tests runs them."""
    run = _pytest(
        tmp_path / "no-fuse-here",
        "tests/driver/test_nodes.py",
        "tests/mount/test_faults.py",
        "-k",
        "test_nodes",
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert " passed" in run.stdout


def test_pure_tests_run_without_fuse(tmp_path: Path) -> None:
    run = _pytest(
        tmp_path / "no-fuse-here", "tests/protocol/test_protocol.py", "tests/protocol/test_ring.py"
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert " passed" in run.stdout and "skipped" not in run.stdout, run.stdout


def test_the_device_override_cannot_loosen_the_check() -> None:
    """Naming something openable that is not the FUSE device still fails the run."""
    run = _pytest("/dev/null", "tests/mount/test_faults.py")
    assert run.returncode == NO_FUSE_EXIT, run.stdout + run.stderr
    assert "/dev/null is not the FUSE character device" in run.stdout + run.stderr
