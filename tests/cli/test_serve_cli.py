"""`ringfs serve` as users run it: a secret that `ringfs mount --secret-file` presents, and
a second server on a live socket refused instead of taking it over."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from channel.protocol.layout import Geometry
from channel.protocol.opcodes import Op
from channel.transport.shm_client import BlockingClient
from fusefront.direct import DirectClient
from fusefront.mount import START_TIMEOUT, wait_for_socket
from tests.support.mounting import RINGFS, ringfs

GEOMETRY = Geometry(sq_entries=8, cq_entries=8, slot_size=8192, buf_count=2, buf_size=65536)


@pytest.fixture
def base() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ringfs-serve-", dir="/tmp"))
    path.chmod(0o755)
    (path / "export").mkdir()
    (path / "mnt").mkdir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def serving(base: Path, *args: str) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [*RINGFS, "serve", str(base / "export"), "--socket", str(base / "sock"), *args],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_socket(str(base / "sock"), time.monotonic() + START_TIMEOUT, proc)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        assert proc.stderr is not None
        proc.stderr.close()


@contextlib.contextmanager
def mounted(base: Path, *args: str) -> Iterator[subprocess.CompletedProcess[str]]:
    result = ringfs("mount", str(base / "sock"), str(base / "mnt"), *args, check=False)
    try:
        yield result
    finally:
        mnt = base / "mnt"
        if os.path.ismount(mnt) and ringfs("umount", str(mnt), check=False).returncode != 0:
            subprocess.run(["fusermount3", "-uz", str(base / "mnt")], check=False)


def test_mount_presents_the_secret_file_to_serve(base: Path) -> None:
    secret = base / "secret"
    secret.write_text("correct horse\n")
    secret.chmod(0o600)
    wrong = base / "wrong"
    wrong.write_text("battery staple\n")
    with serving(base, "--secret-file", str(secret)):
        with mounted(base) as refused:
            assert refused.returncode != 0 and "bad secret" in refused.stderr
            assert not os.path.ismount(base / "mnt")
        with mounted(base, "--secret-file", str(wrong)) as refused:
            assert refused.returncode != 0 and "bad secret" in refused.stderr
        with mounted(base, "--secret-file", str(secret), "-o", "allow_other") as ok:
            assert ok.returncode == 0, ok.stderr
            (base / "mnt" / "hello").write_bytes(b"through the mount")
            assert (base / "export" / "hello").read_bytes() == b"through the mount"
            # the driver presents the secret for the application channels it forwards too
            with DirectClient.connect(base / "mnt") as fs:
                fd = fs.open("hello")
                assert fs.pread(fd, 100, 0) == b"through the mount"


def test_a_second_serve_on_a_live_socket_is_refused(base: Path) -> None:
    with serving(base) as first:
        second = subprocess.run(
            [*RINGFS, "serve", str(base / "export"), "--socket", str(base / "sock")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 1
        assert "already listening on" in second.stderr and str(base / "sock") in second.stderr
        assert first.poll() is None
        with BlockingClient.connect(base / "sock", geometry=GEOMETRY) as client:
            assert client.call(Op.GETATTR, ino=1).check().body[0] == 1
            assert client.server_pid == first.pid  # `ringfs serve` execs the server
        # A stale socket (its server killed without a chance to remove it) is replaced.
        first.kill()
        first.wait(10)
    assert (base / "sock").exists()
    with serving(base) as third:
        with BlockingClient.connect(base / "sock", geometry=GEOMETRY) as client:
            client.call(Op.NOP).check()
        assert third.poll() is None


def test_up_refuses_a_socket_another_server_answers_on(base: Path) -> None:
    with serving(base) as first:
        up = ringfs(
            "up", str(base / "export"), str(base / "mnt"), "--socket", str(base / "sock"),
            check=False,
        )  # fmt: skip
        try:
            assert up.returncode != 0 and "already listening on" in up.stderr
            assert not os.path.ismount(base / "mnt")
        finally:
            if os.path.ismount(base / "mnt"):
                ringfs("umount", str(base / "mnt"), check=False)
        assert first.poll() is None
