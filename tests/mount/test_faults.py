"""Faults of the backing store: a full export, a deleted export root and a failing disk give
the caller a clear errno at once (each failing call is timed against FIRST_ERROR_BOUND), and
the server keeps serving everything else."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.mounting import ringfs_mount

#: A failing call must fail this soon: a fault is an answer, never a hang.
FIRST_ERROR_BOUND = 1.0


def _fails_fast(call: Callable[[], object]) -> OSError:
    """Run `call`, which must raise OSError within FIRST_ERROR_BOUND; the error."""
    start = time.monotonic()
    with pytest.raises(OSError) as exc:
        call()
    took = time.monotonic() - start
    print(f"\n{exc.value.strerror}: after {took * 1e3:.1f} ms")
    assert took < FIRST_ERROR_BOUND
    return exc.value


def test_full_export_gives_enospc_and_the_rest_keeps_working(tmp_path: Path) -> None:
    export = tmp_path / "export"
    export.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(export)], check=True)
    try:
        (export / "kept").write_text("still here")
        with ringfs_mount(tmp_path, "cache=none", export=export) as m:
            with open(m.path / "filler", "wb", buffering=0) as out:
                chunk = os.urandom(64 * 1024)
                for _ in range(31):  # up to just under 2 MiB: fits
                    out.write(chunk)
                error = _fails_fast(lambda: [out.write(chunk) for _ in range(33)])
            assert error.errno == errno.ENOSPC
            assert (m.path / "kept").read_text() == "still here"
            os.unlink(m.path / "filler")  # space comes back, and so do writes
            (m.path / "after").write_text("written after ENOSPC")
            assert (export / "after").read_text() == "written after ENOSPC"
    finally:
        subprocess.run(["umount", "-l", str(export)], check=False)


def test_deleted_export_root_gives_clear_errors_and_the_server_lives(tmp_path: Path) -> None:
    export = tmp_path / "export"
    export.mkdir()
    (export / "a").write_text("a")
    with ringfs_mount(tmp_path, "cache=none", export=export) as m:
        assert (m.path / "a").read_text() == "a"
        shutil.rmtree(export)
        for probe in (
            lambda: (m.path / "a").read_text(),
            lambda: (m.path / "new").write_text("x"),
            lambda: os.mkdir(m.path / "dir"),
        ):
            assert _fails_fast(probe).errno in (errno.ENOENT, errno.ESTALE)
        os.listdir(m.path)  # an empty, deleted directory lists as empty
        assert os.path.ismount(m.path)
        os.kill(m.server_pid, 0)  # the server is still there


def test_eio_from_the_backing_store_reaches_the_caller(tmp_path: Path) -> None:
    export = tmp_path / "export"
    (export / "disk").mkdir(parents=True)
    (export / "good").write_text("good")
    failing = subprocess.Popen(
        [sys.executable, "-m", "tests.support.failing_fs", str(export / "disk")],
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert failing.stdout is not None and failing.stdout.readline() == "ready\n"
        assert os.path.ismount(export / "disk")
        with ringfs_mount(tmp_path, "cache=none", export=export) as m:
            assert os.listdir(m.path / "disk") == ["bad"]
            assert _fails_fast((m.path / "disk" / "bad").read_bytes).errno == errno.EIO
            assert (m.path / "good").read_text() == "good"  # the rest is unaffected
    finally:
        subprocess.run(["fusermount3", "-u", str(export / "disk")], check=False)
        failing.wait(10)
