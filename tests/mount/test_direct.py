"""Application channels on a real mount: discovery, the whole flow, identity, stolen tokens,
revocation, and coherence with what the mount shows."""

from __future__ import annotations

import errno
import json
import multiprocessing
import multiprocessing.connection
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from channel.protocol.opcodes import Op
from fusefront.direct import AsyncDirectClient, DirectClient
from tests.support.mounting import Mount, ringfs, ringfs_mount
from tests.support.users import NOBODY, as_user
from tests.support.worlds import temporary_world


@pytest.fixture
def world(tmp_path: Path) -> Iterator[Path]:
    """A base directory every user can reach (tmp_path's parents are root's alone)."""
    with temporary_world("ringfs-direct-", "/tmp") as base:
        yield base


# Not test_limits' mount: this one caches (cache=auto) and starts empty.
@pytest.fixture
def mount(world: Path) -> Iterator[Mount]:
    # allow_other: other users' processes may use the mount (and so find its control socket)
    with ringfs_mount(world, "cache=auto,allow_other") as m:
        m.export.chmod(0o777)
        yield m


def test_discovery_from_the_mount_point_and_the_whole_flow(mount: Mount) -> None:
    info = json.loads(os.getxattr(mount.path, "user.ringfs.info"))
    assert stat.S_IMODE(os.stat(info["control_socket"]).st_mode) == 0o666
    with DirectClient.connect(mount.path) as fs:
        fs.mkdir("d", 0o755)
        fd = fs.open("d/f", os.O_RDWR | os.O_CREAT, 0o640)
        assert fs.write(fd, b"hello ") == 6
        assert fs.write(fd, b"world") == 5
        assert fs.pread(fd, 100, 0) == b"hello world"
        buf = bytearray(8)
        assert fs.readinto(fd, buf, offset=6) == 5 and bytes(buf[:5]) == b"world"
        assert fs.pwrite(fd, b"HELLO", 0) == 5
        fs.fsync(fd)
        fs.close(fd)
        st = fs.stat("d/f")
        assert st.st_size == 11 and stat.S_IMODE(st.st_mode) == 0o640
        assert fs.listdir("d") == ["f"] and fs.listdir("/") == ["d"]
        fs.rename("d/f", "d/g")
        fd = fs.open("./d/x/../g")
        assert fs.read(fd, 5) == b"HELLO" and fs.read(fd, 100) == b" world"
        fs.close(fd)
        with pytest.raises(OSError) as exc:
            fs.stat("d/missing")
        assert exc.value.errno == errno.ENOENT
        with pytest.raises(OSError) as exc:
            fs.open("../outside")
        assert exc.value.errno == errno.EXDEV
        fs.unlink("d/g")
        fs.rmdir("d")
        assert fs.listdir() == []
    assert list(mount.export.iterdir()) == []


def test_trio_client_does_the_same(mount: Mount) -> None:
    async def main() -> bytes:
        async with AsyncDirectClient.connect(mount.path) as fs:
            fd = await fs.open("t", os.O_RDWR | os.O_CREAT)
            await fs.pwrite(fd, b"from trio", 0)
            sizes = []
            async with trio.open_nursery() as nursery:  # many calls in flight at once
                for _ in range(8):

                    async def stat_it() -> None:
                        sizes.append((await fs.stat("t")).st_size)

                    nursery.start_soon(stat_it)
            assert sizes == [9] * 8
            data = await fs.pread(fd, 100, 0)
            await fs.close(fd)
            return data

    assert trio.run(main) == b"from trio"
    assert (mount.export / "t").read_bytes() == b"from trio"


def test_the_server_acts_as_the_application(mount: Mount) -> None:
    secret = mount.path / "secret"
    secret.write_text("root only")
    secret.chmod(0o600)

    def nobody_reads() -> str:
        with DirectClient.connect(mount.path) as fs:
            fs.stat("secret")  # the directory is searchable: stat works
            try:
                fs.open("secret")
            except OSError as exc:
                return errno.errorcode[exc.errno or 0]
            return "opened"

    assert as_user(nobody_reads) == "EACCES"

    def nobody_creates() -> None:
        with DirectClient.connect(mount.path) as fs:
            fs.close(fs.open("mine", os.O_CREAT | os.O_WRONLY, 0o644))

    as_user(nobody_creates)
    assert (mount.export / "mine").stat().st_uid == NOBODY


def test_a_token_copied_from_another_channel_is_refused(mount: Mount) -> None:
    with DirectClient.connect(mount.path) as a, DirectClient.connect(mount.path) as b:
        assert a.client.token != b.client.token
        own = b.client.side.token
        b.client.side.token = a.client.token  # b's commands now carry a's token
        try:
            assert b.client.call(Op.GETATTR, ino=1).status == -errno.EACCES
        finally:
            b.client.side.token = own
        assert b.client.call(Op.GETATTR, ino=1).status == 0


def _server_fds(mount: Mount) -> int:
    return len(os.listdir(f"/proc/{mount.server_pid}/fd"))


def _settled_fds(mount: Mount) -> int:
    """The server's descriptor count once it stopped changing (channels that just ended are
    released as the server notices them)."""
    samples = [_server_fds(mount)]
    deadline = time.monotonic() + 10
    while len(samples) < 5 or len(set(samples[-5:])) > 1:
        assert time.monotonic() < deadline, samples
        os.stat(mount.path / "f0")  # a round trip between samples, not a sleep
        samples.append(_server_fds(mount))
    return samples[-1]


def test_exit_releases_everything_the_application_held(mount: Mount) -> None:
    for i in range(20):
        (mount.export / f"f{i}").write_text("x")
    with DirectClient.connect(mount.path) as fs:
        fs.stat("f0")  # warm: the server's own descriptors settle
    baseline = _settled_fds(mount)

    def hold_and_die() -> None:
        fs = DirectClient.connect(mount.path)
        for i in range(20):
            fs.open(f"f{i}")
        os._exit(0)  # no close, no goodbye

    dying = multiprocessing.get_context("fork").Process(target=hold_and_die)
    dying.start()
    dying.join(30)
    assert dying.exitcode == 0
    deadline = time.monotonic() + 10
    # At most the baseline: a channel that ended just before it was sampled may be released
    # only now, taking the count below it.
    while _server_fds(mount) > baseline:  # the server frees the channel as it notices
        assert time.monotonic() < deadline, (_server_fds(mount), baseline)
        os.stat(mount.path / "f0")  # a round trip between samples, not a sleep


def test_unmount_ends_every_application_channel(world: Path) -> None:
    with ringfs_mount(world) as m:
        fs = DirectClient.connect(m.path)
        fd = fs.open("f", os.O_CREAT | os.O_RDWR)
        assert ringfs("umount", str(m.path)).returncode == 0
        start = time.monotonic()
        with pytest.raises(OSError) as exc:
            fs.pwrite(fd, b"too late", 0)
        assert exc.value.errno == errno.ENOTCONN
        assert time.monotonic() - start < 1.0
        fs.shutdown()


@pytest.mark.parametrize("cache", ["none", "auto", "always"])
def test_what_the_application_writes_the_mount_shows_at_once(world: Path, cache: str) -> None:
    with ringfs_mount(world, f"cache={cache}") as m:
        f = m.path / "f"
        f.write_text("version 1")
        assert f.read_text() == "version 1"  # cached by the kernel now
        gone = m.path / "gone"
        gone.write_text("x")
        assert gone.exists()
        with DirectClient.connect(m.path) as fs:
            for n in range(2, 6):  # same size each time: only invalidation can show it
                fd = fs.open("f", os.O_WRONLY)
                fs.pwrite(fd, f"version {n}".encode(), 0)
                fs.close(fd)
                assert f.read_text() == f"version {n}"
            fs.unlink("gone")
            assert not gone.exists()
            fd = fs.open("new", os.O_CREAT | os.O_WRONLY)
            fs.write(fd, b"made by the application")
            fs.close(fd)
            assert (m.path / "new").read_text() == "made by the application"


def test_the_example_reads_a_file_through_its_own_channel(mount: Mount) -> None:
    import hashlib
    import subprocess
    import sys

    content = os.urandom(300_000)
    (mount.export / "blob").write_bytes(content)
    example = Path(__file__).resolve().parents[2] / "examples" / "direct_read.py"
    out = subprocess.run(
        [sys.executable, str(example), str(mount.path), "blob"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    assert f"300000 bytes, sha256 {hashlib.sha256(content).hexdigest()}" in out


def test_the_control_socket_refuses_what_it_should_not_forward(mount: Mount) -> None:
    from channel.protocol.errors import ChannelError
    from channel.protocol.handshake import PeerCredentials, make_hello
    from channel.transport.handshake_io import exchange
    from fusefront.direct import control_socket

    path = control_socket(mount.path)
    forged = PeerCredentials(pid=1, uid=0, gid=0)
    for hello, why in [
        (make_hello("app", transport="socket"), "shared-memory"),  # no region to hand over
        (make_hello("driver"), "shared-memory app"),  # only application channels
        (make_hello("app", on_behalf_of=forged), "shared-memory app"),  # no forged identity
        (make_hello("app"), "file descriptors"),  # the region's descriptors are missing
        (b"\x92garbage", "hello"),
    ]:
        with pytest.raises(ChannelError) as refused:
            exchange(path, hello, ())
        assert why in str(refused.value), (why, refused.value)
    with DirectClient.connect(mount.path) as fs:  # and it keeps serving
        assert fs.listdir() == []
