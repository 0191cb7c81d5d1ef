"""Hostile local users against the limits (`channel.protocol.limits`, listed in SECURITY.md).

Each test takes resources as an unprivileged uid (65534, in a child process: see
`tests.support.hostile_users`) on a real `ringfs up ... -o allow_other` mount or a real server, and
then shows that root's `cat` through the mount and a new application channel still work
within BOUND, and that what was refused was refused with an errno and a reason that names
the limit: never a bare BrokenPipeError, never a dead mount.
"""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.thread  # imported here: the children that use it are not root
import errno
import json
import os
import resource
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from channel.protocol import limits
from channel.protocol.errors import HandshakeRefused
from channel.protocol.layout import Geometry
from channel.protocol.opcodes import Op
from channel.transport.shm_client import BlockingClient
from fusefront.direct import DirectClient
from tests.support.hostile_users import NOBODY, AsUser, answers, idle_connections
from tests.support.mounting import Mount, ringfs_mount
from tests.support.server_harness import ServerProcess, temporary_server
from tests.support.worlds import temporary_world

#: What "still works" means under attack on this shared 2-core machine: a cat or a new
#: channel's first calls take milliseconds quiet; a starved one would take seconds or fail.
BOUND = 2.0
#: Application channels of the tests: small regions, so that 64 of them are cheap.
SMALL = Geometry(sq_entries=8, cq_entries=8, slot_size=8192, buf_count=2, buf_size=65536)
CONTENT = b"root's data\n"


@pytest.fixture
def world() -> Iterator[Path]:
    """A base directory every user can reach (tmp_path's parents are root's alone)."""
    with temporary_world("ringfs-limits-", "/tmp") as base:
        yield base


@pytest.fixture
def mount(world: Path) -> Iterator[Mount]:
    with ringfs_mount(world, "cache=none,allow_other") as m:
        m.export.chmod(0o777)
        (m.export / "f").write_bytes(CONTENT)
        (m.export / "f").chmod(0o644)
        yield m


def control_socket(mount: Mount) -> str:
    return str(json.loads(os.getxattr(mount.path, "user.ringfs.info"))["control_socket"])


def root_still_served(mount: Mount) -> dict[str, float]:
    """Root's cat through the mount and a new application channel, each timed and checked."""
    start = time.monotonic()
    out = subprocess.run(["cat", str(mount.path / "f")], capture_output=True, timeout=30)
    cat = time.monotonic() - start
    assert out.returncode == 0 and out.stdout == CONTENT, out.stderr
    start = time.monotonic()
    with DirectClient.connect(mount.path, geometry=SMALL) as fs:
        fd = fs.open("f")
        assert fs.pread(fd, 100, 0) == CONTENT
    channel = time.monotonic() - start
    print(f"\nroot's cat {cat * 1e3:.1f} ms, new application channel {channel * 1e3:.1f} ms")
    assert cat < BOUND and channel < BOUND
    return {"cat": cat, "channel": channel}


def _other_user_channel(path: Path) -> tuple[float, None]:
    start = time.monotonic()
    with DirectClient.connect(path, geometry=SMALL) as fs:
        assert fs.stat("f").st_size == len(CONTENT)
    return time.monotonic() - start, None


# -- the driver's control socket ---------------------------------------------------------------
def test_idle_connections_of_one_user_hold_a_few_slots_and_are_refused_past_them(
    mount: Mount,
) -> None:
    path = control_socket(mount)
    with AsUser(NOBODY, lambda: idle_connections(path, 300)) as (refusals, waiting):
        assert waiting == limits.MAX_HANDSHAKES_PER_UID
        assert len(refusals) == 300 - limits.MAX_HANDSHAKES_PER_UID
        assert {code for code, _ in refusals} == {errno.EAGAIN}
        assert all("MAX_HANDSHAKES_PER_UID" in reason for _, reason in refusals)
        root_still_served(mount)
        with AsUser(NOBODY - 1, lambda: _other_user_channel(mount.path)) as elapsed:
            assert elapsed < BOUND


def test_an_idle_connection_is_refused_when_its_handshake_time_is_up(mount: Mount) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(control_socket(mount))
        start = time.monotonic()
        refusals, _ = answers([sock], limits.HANDSHAKE_TIMEOUT + 5, expect=1)
        elapsed = time.monotonic() - start
    assert refusals and refusals[0][0] == errno.ETIMEDOUT and "timed out" in refusals[0][1]
    assert limits.HANDSHAKE_TIMEOUT - 0.5 < elapsed < limits.HANDSHAKE_TIMEOUT + 2


def test_a_driver_out_of_descriptors_backs_off_and_keeps_the_mount(mount: Mount) -> None:
    """accept() failing with EMFILE (the driver's limit lowered below what it holds) must
    not end the mount: root's cat still works, and a connection queued meanwhile is served
    once descriptors are back."""
    driver = mount.driver_pid
    soft, hard = resource.prlimit(driver, resource.RLIMIT_NOFILE)
    result: dict[str, Any] = {}

    def connect() -> None:
        try:
            with DirectClient.connect(mount.path, geometry=SMALL) as fs:
                result["size"] = fs.stat("f").st_size
        except BaseException as exc:
            result["error"] = exc

    # accept() takes the lowest free number: a limit at it leaves accept() none at all
    held = {int(fd) for fd in os.listdir(f"/proc/{driver}/fd")}
    lowest_free = min(set(range(len(held) + 1)) - held)
    resource.prlimit(driver, resource.RLIMIT_NOFILE, (lowest_free, hard))
    try:
        waiter = threading.Thread(target=connect)
        waiter.start()
        start = time.monotonic()
        out = subprocess.run(["cat", str(mount.path / "f")], capture_output=True, timeout=30)
        assert out.stdout == CONTENT and time.monotonic() - start < BOUND
        assert waiter.is_alive(), result  # cannot be accepted while the driver has no descriptor
    finally:
        resource.prlimit(driver, resource.RLIMIT_NOFILE, (soft, hard))
    waiter.join(limits.HANDSHAKE_TIMEOUT + 5)
    assert result == {"size": len(CONTENT)}
    root_still_served(mount)


def test_a_driver_keeps_descriptors_for_the_mount(mount: Mount) -> None:
    """With the driver's limit lowered into its reserve, a new application channel is refused
    with the reason (EAGAIN) at once, root's cat goes on, and channels come back with the
    descriptors."""
    driver = mount.driver_pid
    soft, hard = resource.prlimit(driver, resource.RLIMIT_NOFILE)
    held = len(os.listdir(f"/proc/{driver}/fd"))
    resource.prlimit(driver, resource.RLIMIT_NOFILE, (held + limits.RESERVED_FDS - 16, hard))
    try:
        start = time.monotonic()
        with pytest.raises(HandshakeRefused) as caught:
            DirectClient.connect(mount.path, geometry=SMALL)
        assert time.monotonic() - start < BOUND
        assert caught.value.errno == errno.EAGAIN
        assert "short of file descriptors" in str(caught.value.strerror)
        out = subprocess.run(["cat", str(mount.path / "f")], capture_output=True, timeout=30)
        assert out.stdout == CONTENT
    finally:
        resource.prlimit(driver, resource.RLIMIT_NOFILE, (soft, hard))
    root_still_served(mount)


def _channels_up_to_the_quota(path: Path) -> tuple[Any, Any]:
    """As one user: concurrent connects past the quota, then channels one by one until the
    driver refuses; returns what happened and keeps the channels."""
    outcomes: list[str] = []

    def one() -> DirectClient | None:
        try:
            return DirectClient.connect(path, geometry=SMALL)
        except OSError as exc:
            outcomes.append(f"{type(exc).__name__} {exc.errno} {exc.strerror}")
            return None

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        burst = [c for c in pool.map(lambda _: one(), range(limits.MAX_CHANNELS_PER_UID + 8)) if c]
    held = len(burst)
    while True:
        client = one()
        if client is None:
            break
        burst.append(client)
    return (held, len(burst), outcomes), burst


def test_channels_count_against_the_application_user_and_refusals_say_why(mount: Mount) -> None:
    with AsUser(NOBODY, lambda: _channels_up_to_the_quota(mount.path)) as report:
        burst_held, held, outcomes = report
        assert burst_held <= limits.MAX_CHANNELS_PER_UID
        assert held == limits.MAX_CHANNELS_PER_UID
        # Every refusal, in the burst too, is a HandshakeRefused (an OSError) with EAGAIN and
        # the limit's name: never a BrokenPipeError or a channel dropped after its accept.
        assert all(o.startswith(f"HandshakeRefused {errno.EAGAIN} ") for o in outcomes), outcomes
        assert all("MAX_" in o for o in outcomes)
        assert "MAX_CHANNELS_PER_UID" in outcomes[-1]
        # One user at its quota locks nobody else out (the driver forwards them all, as root).
        root_still_served(mount)
        with AsUser(NOBODY - 1, lambda: _other_user_channel(mount.path)) as elapsed:
            assert elapsed < BOUND


# -- handles on the server -------------------------------------------------------------------
def _open_until_refused(path: Path, channels: int) -> tuple[Any, Any]:
    clients, counts = [], []
    for _ in range(channels):
        fs = DirectClient.connect(path, geometry=SMALL)
        clients.append(fs)
        opened = 0
        try:
            while True:
                fs.open("f")
                opened += 1
        except OSError as exc:
            counts.append((opened, exc.errno))
    return counts, clients


def test_handles_are_bounded_per_channel_and_per_user(mount: Mount) -> None:
    per_uid = limits.MAX_HANDLES_PER_UID // limits.MAX_HANDLES_PER_CHANNEL
    with AsUser(NOBODY, lambda: _open_until_refused(mount.path, per_uid + 1)) as counts:
        full = [(limits.MAX_HANDLES_PER_CHANNEL, errno.EMFILE)] * per_uid
        assert counts == [*full, (0, errno.EMFILE)]
        root_still_served(mount)


def test_the_server_keeps_descriptors_for_the_mount(mount: Mount) -> None:
    """With the server's limit lowered to just above what it holds plus its reserve, an
    application runs into ENFILE after a few opens while root's cat keeps working."""
    server = mount.server_pid
    soft, hard = resource.prlimit(server, resource.RLIMIT_NOFILE)
    held = len(os.listdir(f"/proc/{server}/fd"))
    resource.prlimit(server, resource.RLIMIT_NOFILE, (held + limits.RESERVED_FDS + 32, hard))
    try:
        with AsUser(NOBODY, lambda: _open_until_refused(mount.path, 1)) as counts:
            [(opened, code)] = counts
            assert code == errno.ENFILE and 0 < opened < 64
            for _ in range(3):  # each cat takes descriptors from the reserve, and gives back
                start = time.monotonic()
                out = subprocess.run(["cat", str(mount.path / "f")], capture_output=True)
                assert out.stdout == CONTENT and time.monotonic() - start < BOUND
    finally:
        resource.prlimit(server, resource.RLIMIT_NOFILE, (soft, hard))
    root_still_served(mount)


# -- the server's own accept loop ------------------------------------------------------------
@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    export = tmp_path / "export"
    export.mkdir()
    with temporary_server("ringfs-limits-", export) as srv:
        yield srv


def test_the_whole_server_handshake_has_a_deadline_the_wait_for_a_slot_included(
    server: ServerProcess,
) -> None:
    count = limits.MAX_PENDING_HANDSHAKES + 8  # root is not limited per uid: it forwards
    start = time.monotonic()
    socks = []
    for _ in range(count):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(server.path))
        socks.append(sock)
    refusals, waiting = answers(socks, limits.HANDSHAKE_TIMEOUT + 5, expect=count)
    elapsed = time.monotonic() - start
    assert not waiting and elapsed < limits.HANDSHAKE_TIMEOUT + 2
    # The ones that got a slot time out reading their hello; the ones that waited for a slot
    # are refused at their own deadline: still waiting (EAGAIN), or timed out on a slot that
    # came free just before it (ETIMEDOUT). None waits longer.
    kinds = [code for code, _ in refusals]
    assert set(kinds) <= {errno.EAGAIN, errno.ETIMEDOUT}
    assert kinds.count(errno.ETIMEDOUT) >= limits.MAX_PENDING_HANDSHAKES
    assert all("no handshake slot" in r for code, r in refusals if code == errno.EAGAIN)
    with server.client() as client:
        client.call(Op.NOP).check()


def test_idle_connections_of_one_user_are_refused_past_their_share_of_the_server(
    server: ServerProcess,
) -> None:
    with AsUser(NOBODY, lambda: idle_connections(server.path, 40)) as (refusals, waiting):
        assert waiting == limits.MAX_HANDSHAKES_PER_UID
        assert {code for code, _ in refusals} == {errno.EAGAIN}
        assert len(refusals) == 40 - limits.MAX_HANDSHAKES_PER_UID
        start = time.monotonic()
        with server.client() as client:
            client.call(Op.NOP).check()
        assert time.monotonic() - start < BOUND


def _server_channels_past_the_quota(path: Path) -> tuple[Any, Any]:
    outcomes: list[str] = []

    def one() -> BlockingClient | None:
        try:
            return BlockingClient.connect(path, geometry=SMALL)
        except OSError as exc:
            outcomes.append(f"{type(exc).__name__} {exc.errno} {exc.strerror}")
            return None

    clients = []
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        clients = [
            c for c in pool.map(lambda _: one(), range(limits.MAX_CHANNELS_PER_UID + 16)) if c
        ]
    while (client := one()) is not None:
        clients.append(client)
    for client in clients:
        client.call(Op.NOP).check()  # every accepted channel really is served
    return (len(clients), outcomes), clients


def test_concurrent_connects_past_the_server_quota_get_the_reason(server: ServerProcess) -> None:
    with AsUser(NOBODY, lambda: _server_channels_past_the_quota(server.path)) as report:
        held, outcomes = report
        assert held == limits.MAX_CHANNELS_PER_UID
        assert all(o.startswith(f"HandshakeRefused {errno.EAGAIN} ") for o in outcomes), outcomes
        assert "MAX_CHANNELS_PER_UID" in outcomes[-1]


def test_a_server_out_of_descriptors_backs_off_and_keeps_serving(server: ServerProcess) -> None:
    soft, hard = resource.prlimit(server.pid, resource.RLIMIT_NOFILE)
    result: dict[str, Any] = {}

    def connect() -> None:
        try:
            with server.client() as late:
                result["status"] = late.call(Op.NOP).status
        except BaseException as exc:
            result["error"] = exc

    with server.client() as existing:
        resource.prlimit(server.pid, resource.RLIMIT_NOFILE, (8, hard))
        try:
            waiter = threading.Thread(target=connect)
            waiter.start()
            for _ in range(100):  # the existing channel keeps being served meanwhile
                existing.call(Op.NOP).check()
            assert waiter.is_alive()
        finally:
            resource.prlimit(server.pid, resource.RLIMIT_NOFILE, (soft, hard))
        waiter.join(limits.HANDSHAKE_TIMEOUT + 5)
        assert result == {"status": 0}
        existing.call(Op.NOP).check()
    assert server.proc.poll() is None


def test_refusals_are_oserrors_with_an_errno() -> None:
    from channel.protocol import handshake

    with pytest.raises(HandshakeRefused) as caught:
        handshake.parse_answer(handshake.make_refusal("uid 7 holds 64 channels", errno.EAGAIN))
    assert isinstance(caught.value, OSError)
    assert caught.value.errno == errno.EAGAIN and caught.value.strerror == "uid 7 holds 64 channels"
    with pytest.raises(HandshakeRefused) as caught:  # an answer without errno: EPROTO
        handshake.parse_answer(b"\x82\xa6accept\xc2\xa6reason\xa1x")
    assert caught.value.errno == errno.EPROTO
