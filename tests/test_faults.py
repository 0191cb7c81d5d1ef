"""Faults of the backing store: a full export and a deleted export root give the caller a clear
errno, and the server keeps serving everything else."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.mounting import ringfs_mount


def test_full_export_gives_enospc_and_the_rest_keeps_working(tmp_path: Path) -> None:
    export = tmp_path / "export"
    export.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(export)], check=True)
    try:
        (export / "kept").write_text("still here")
        with ringfs_mount(tmp_path, "cache=none", export=export) as m:
            with pytest.raises(OSError) as exc, open(m.path / "filler", "wb") as out:
                for _ in range(64):  # 4 MiB into a 2 MiB file system
                    out.write(os.urandom(64 * 1024))
                    out.flush()
                os.fsync(out.fileno())
            assert exc.value.errno == errno.ENOSPC
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
            with pytest.raises(OSError) as exc:
                probe()
            assert exc.value.errno in (errno.ENOENT, errno.ESTALE)
        os.listdir(m.path)  # an empty, deleted directory lists as empty
        assert os.path.ismount(m.path)
        os.kill(m.server_pid, 0)  # the server is still there


def test_eio_from_the_backing_store_reaches_the_caller(tmp_path: Path) -> None:
    import sys
    import time

    export = tmp_path / "export"
    (export / "disk").mkdir(parents=True)
    (export / "good").write_text("good")
    failing = subprocess.Popen(
        [sys.executable, "-m", "tests.failing_fs", str(export / "disk")],
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        deadline = time.monotonic() + 20
        while not os.path.ismount(export / "disk"):
            assert failing.poll() is None and time.monotonic() < deadline, "no failing fs"
            time.sleep(0.02)  # another process is mounting
        with ringfs_mount(tmp_path, "cache=none", export=export) as m:
            assert os.listdir(m.path / "disk") == ["bad"]
            with pytest.raises(OSError) as exc:
                (m.path / "disk" / "bad").read_bytes()
            assert exc.value.errno == errno.EIO
            assert (m.path / "good").read_text() == "good"  # the rest is unaffected
    finally:
        subprocess.run(["fusermount3", "-u", str(export / "disk")], check=False)
        failing.wait(10)
