"""Who may connect to `ringfs serve`: the 0600 socket, --allow-uid/--allow-gid, the secret
file, and a clean exit on SIGTERM. Drives `python -m backend_server` as a real process."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from channel.protocol import limits
from channel.protocol.errors import HandshakeRefused
from channel.protocol.layout import Geometry
from channel.protocol.opcodes import Op
from channel.transport.shm_client import BlockingClient
from fusefront.mount import START_TIMEOUT, wait_for_socket

NOBODY = 65534
GEOMETRY = Geometry(sq_entries=8, cq_entries=8, slot_size=8192, buf_count=2, buf_size=65536)


@contextmanager
def server(tmp_path: Path, *args: str) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    export = tmp_path / "export"
    export.mkdir(exist_ok=True)
    # pytest's tmp_path sits under a 0700 directory; other users must reach the socket file,
    # so that only its own mode (and the server's policy) decides who connects.
    sockdir = Path(tempfile.mkdtemp(prefix="ringfs-access-"))
    sockdir.chmod(0o755)
    sock = sockdir / "server.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "backend_server", str(export), "--socket", str(sock), *args],
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_socket(str(sock), time.monotonic() + START_TIMEOUT, proc)
        yield sock, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        assert proc.stderr is not None
        proc.stderr.close()
        shutil.rmtree(sockdir, ignore_errors=True)


def connect_as(sock: Path, uid: int, secret: bytes | None = None) -> str:
    """Handshake from a child process running as `uid`; returns 'ok' or the refusal."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        result = "ok"
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            with BlockingClient.connect(sock, geometry=GEOMETRY, secret=secret) as client:
                client.call(Op.GETATTR, ino=1).check()
        except HandshakeRefused as exc:
            result = f"refused: {exc}"
        except OSError as exc:
            result = f"oserror: {exc.errno}"
        except BaseException as exc:
            result = f"error: {exc!r}"
        os.write(write_end, result.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as answer:
        result = answer.read().decode()
    os.waitpid(pid, 0)
    return result


def test_socket_is_0600_and_only_the_owner_connects(tmp_path: Path) -> None:
    with server(tmp_path) as (sock, _):
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        assert connect_as(sock, 0) == "ok"
        # The file mode alone keeps uid 65534 out: connect() itself is refused.
        assert connect_as(sock, NOBODY) == "oserror: 13"


def test_allow_uid_opens_the_socket_to_that_user_only(tmp_path: Path) -> None:
    with server(tmp_path, f"--allow-uid={NOBODY}") as (sock, _):
        assert stat.S_IMODE(sock.stat().st_mode) == 0o666
        assert connect_as(sock, NOBODY) == "ok"
        refusal = connect_as(sock, 4242)
        assert refusal.startswith("refused") and "not allowed" in refusal


def test_allow_gid_admits_members_of_that_group(tmp_path: Path) -> None:
    with server(tmp_path, "--allow-gid=4343") as (sock, _):
        assert connect_as(sock, 4343) == "ok"  # connect_as sets gid = uid
        assert connect_as(sock, 4242).startswith("refused")


def test_secret_file_must_be_presented(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(b"s3cret\n")
    with server(tmp_path, "--secret-file", str(secret_file)) as (sock, _):
        assert connect_as(sock, 0, secret=b"s3cret") == "ok"
        wrong = connect_as(sock, 0, secret=b"guess")
        assert wrong.startswith("refused") and "secret" in wrong
        assert connect_as(sock, 0).startswith("refused")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_exits_cleanly_and_removes_the_socket(tmp_path: Path, signum: int) -> None:
    with server(tmp_path) as (sock, proc):
        with BlockingClient.connect(sock, geometry=GEOMETRY) as client:
            client.call(Op.GETATTR, ino=1).check()
            proc.send_signal(signum)
            assert proc.wait(10) == 0
        assert not sock.exists()


def test_channels_per_uid_are_bounded(tmp_path: Path) -> None:
    with server(tmp_path) as (sock, _):
        clients = [
            BlockingClient.connect(sock, geometry=GEOMETRY)
            for _ in range(limits.MAX_CHANNELS_PER_UID)
        ]
        try:
            with pytest.raises(HandshakeRefused, match="already holds"):
                BlockingClient.connect(sock, geometry=GEOMETRY)
            clients.pop().close()
            # The server notices the closed channel (its socket's EOF) and frees the quota.
            deadline = time.monotonic() + 5
            while True:
                try:
                    clients.append(BlockingClient.connect(sock, geometry=GEOMETRY))
                    break
                except HandshakeRefused:
                    assert time.monotonic() < deadline, "a closed channel still counts"
                    time.sleep(0.01)  # the server's close runs in another process
            clients[-1].call(Op.GETATTR, ino=1).check()
        finally:
            for client in clients:
                client.close()
