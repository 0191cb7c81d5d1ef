"""The handshake: pure message checks, and a real server refusing bad hellos with a reason."""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import trio

from channel.protocol import handshake, layout, limits
from channel.protocol.errors import HandshakeRefused, ProtocolError
from channel.protocol.handshake import PeerCredentials
from channel.protocol.layout import Geometry, Region
from channel.protocol.opcodes import Op
from channel.transport import doorbell, handshake_io
from channel.transport.serve import accept_channel
from channel.transport.shm_client import BlockingClient
from harness.echo_server import EchoServer

SMALL = Geometry(sq_entries=8, cq_entries=8, slot_size=512, buf_count=2, buf_size=4096)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EchoServer]:
    with EchoServer(tmp_path_factory.mktemp("hs") / "sock") as srv:
        yield srv


@pytest.fixture(scope="module")
def secret_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EchoServer]:
    path = tmp_path_factory.mktemp("hs_secret") / "sock"
    with EchoServer(path, "--secret", "c0ffee", "--trust-forwarded") as srv:
        yield srv


def _server_holds(server: EchoServer, memfd_name: str) -> bool:
    fd_dir = Path(f"/proc/{server.pid}/fd")
    for entry in fd_dir.iterdir():
        try:
            if memfd_name in os.readlink(entry):
                return True
        except OSError:
            continue
    return False


def _raw_exchange(path: Path, payload: bytes, fds: Sequence[int] = (), framed: bool = True) -> str:
    """Send a hello (or raw bytes) and return the refusal reason; fail on an accept."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(limits.HANDSHAKE_TIMEOUT + 5)
        sock.connect(str(path))
        message = handshake.frame(payload) if framed else payload
        socket.send_fds(sock, [message], list(fds)) if fds else sock.sendall(message)
        answer = handshake_io.recv_message(sock)
    with pytest.raises(HandshakeRefused) as refused:
        handshake.parse_answer(answer)
    return str(refused.value)


class _Parts:
    """A region and two eventfds, as a client would send them; closed after the test."""

    def __init__(self, geometry: Geometry = SMALL, name: str = "ringfs") -> None:
        self.region = Region.create(geometry, name)
        self.sq = doorbell.make_eventfd()
        self.cq = doorbell.make_eventfd()

    @property
    def fds(self) -> list[int]:
        return [self.region.fd, self.sq, self.cq]

    def close(self) -> None:
        self.region.close()
        os.close(self.sq)
        os.close(self.cq)


@pytest.fixture
def parts() -> Iterator[_Parts]:
    p = _Parts(name=f"hs-test-{os.getpid()}-{time.monotonic_ns()}")
    yield p
    p.close()


# -- pure part --------------------------------------------------------------------------------


def test_hello_round_trip() -> None:
    creds = PeerCredentials(12, 1000, 1000, (4, 27))
    hello = handshake.parse_hello(
        handshake.make_hello("driver", SMALL, secret=b"s", on_behalf_of=creds)
    )
    assert (hello.role, hello.transport, hello.geometry) == ("driver", "shm", SMALL)
    assert (hello.secret, hello.on_behalf_of, hello.fd_count) == (b"s", creds, 3)
    socket_hello = handshake.parse_hello(handshake.make_hello(transport="socket"))
    assert socket_hello.geometry is None and socket_hello.fd_count == 0


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (handshake.make_hello(version=2), "wrong version"),
        (handshake.make_hello("root"), "unknown role"),
        (b"\xc1garbage", "garbage hello"),
        (b"\x93\x01\x02\x03", "not a map"),
        (handshake.make_hello(transport="carrier pigeon"), "unknown transport"),
    ],
)
def test_parse_hello_rejects(payload: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        handshake.parse_hello(payload)


def test_answers() -> None:
    accept = handshake.parse_answer(handshake.make_accept(7, b"t" * 16, 99))
    assert accept == handshake.Accept(7, b"t" * 16, 99)
    with pytest.raises(HandshakeRefused, match="because"):
        handshake.parse_answer(handshake.make_refusal("because"))
    with pytest.raises(ProtocolError):
        handshake.parse_answer(handshake.make_accept(7, b"short", 99))


# -- a real server ----------------------------------------------------------------------------


def test_accept_gives_token(server: EchoServer) -> None:
    with BlockingClient.connect(server.path, geometry=SMALL) as client:
        assert len(client.token) == 16
        assert client.server_pid == server.pid
        assert client.call(Op.NOP, "hi").check().body == "hi"
        line = server.wait_line(lambda ln: ln.startswith(f"open {client.channel_id} "))
        assert line == f"open {client.channel_id} {os.getpid()}"


def test_wrong_version(server: EchoServer, parts: _Parts) -> None:
    reason = _raw_exchange(server.path, handshake.make_hello(geometry=SMALL, version=9), parts.fds)
    assert "wrong version" in reason


def test_memfd_smaller_than_geometry(server: EchoServer) -> None:
    fd = os.memfd_create("small", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    sq, cq = doorbell.make_eventfd(), doorbell.make_eventfd()
    try:
        os.ftruncate(fd, SMALL.region_size // 2)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, layout.SIZE_SEALS)
        reason = _raw_exchange(server.path, handshake.make_hello(geometry=SMALL), [fd, sq, cq])
    finally:
        for f in (fd, sq, cq):
            os.close(f)
    assert "memfd holds" in reason


def test_unsealed_memfd(server: EchoServer) -> None:
    fd = os.memfd_create("unsealed", os.MFD_CLOEXEC)
    sq, cq = doorbell.make_eventfd(), doorbell.make_eventfd()
    try:
        os.ftruncate(fd, SMALL.region_size)
        reason = _raw_exchange(server.path, handshake.make_hello(geometry=SMALL), [fd, sq, cq])
    finally:
        for f in (fd, sq, cq):
            os.close(f)
    assert "sealed" in reason


def test_bad_magic_and_fds_closed(server: EchoServer, parts: _Parts) -> None:
    parts.region.buf[0:8] = b"NOTRINGS"
    reason = _raw_exchange(server.path, handshake.make_hello(geometry=SMALL), parts.fds)
    assert "bad magic" in reason
    # The refused memfd must not stay open in the server (checked with a deadline: the
    # refusal is sent before the descriptors are closed only in the sense of task order).
    name = os.readlink(f"/proc/self/fd/{parts.region.fd}").split("/")[-1].split(" ")[0]
    deadline = time.monotonic() + 2
    while _server_holds(server, name):
        assert time.monotonic() < deadline, "the server kept a refused memfd open"
        time.sleep(0.01)


def test_geometry_mismatch(server: EchoServer, parts: _Parts) -> None:
    other = Geometry(sq_entries=4, cq_entries=8, slot_size=512, buf_count=2, buf_size=4096)
    reason = _raw_exchange(server.path, handshake.make_hello(geometry=other), parts.fds)
    assert "disagrees" in reason


def test_garbage_hello(server: EchoServer) -> None:
    assert "garbage hello" in _raw_exchange(server.path, os.urandom(64) + b"\xc1")
    too_long = (limits.MAX_HANDSHAKE_MESSAGE + 1).to_bytes(4, "little") + b"x" * 16
    assert "garbage hello" in _raw_exchange(server.path, too_long, framed=False)


def test_bad_geometry(server: EchoServer, parts: _Parts) -> None:
    hello = handshake.make_hello(geometry=SMALL).replace(b"\x08", b"\x07", 1)
    assert "power of two" in _raw_exchange(server.path, hello, parts.fds)


def test_wrong_number_of_fds(server: EchoServer, parts: _Parts) -> None:
    hello = handshake.make_hello(geometry=SMALL)
    assert "wrong number of file descriptors" in _raw_exchange(server.path, hello, parts.fds[:2])
    socket_hello = handshake.make_hello(transport="socket")
    assert "wrong number" in _raw_exchange(server.path, socket_hello, parts.fds)


def test_not_eventfds(server: EchoServer, parts: _Parts) -> None:
    r, w = os.pipe()
    try:
        hello = handshake.make_hello(geometry=SMALL)
        reason = _raw_exchange(server.path, hello, [parts.region.fd, r, w])
    finally:
        os.close(r)
        os.close(w)
    assert "eventfds" in reason


def test_bad_secret(secret_server: EchoServer) -> None:
    with pytest.raises(HandshakeRefused, match="bad secret"):
        BlockingClient.connect(secret_server.path, geometry=SMALL, secret=b"wrong")
    with pytest.raises(HandshakeRefused, match="bad secret"):
        BlockingClient.connect(secret_server.path, geometry=SMALL)
    with BlockingClient.connect(secret_server.path, geometry=SMALL, secret=b"\xc0\xff\xee") as c:
        assert c.call(Op.NOP, 1).body == 1


def test_forwarded_credentials(server: EchoServer, secret_server: EchoServer) -> None:
    app = PeerCredentials(pid=4242, uid=1234, gid=5678, groups=(9, 10))
    with pytest.raises(HandshakeRefused, match="not trusted"):
        BlockingClient.connect(server.path, geometry=SMALL, on_behalf_of=app)
    with BlockingClient.connect(
        secret_server.path, geometry=SMALL, secret=b"\xc0\xff\xee", on_behalf_of=app
    ) as client:
        assert client.call(Op.NOP, {"whoami": True}).body == [4242, 1234, 5678, [9, 10]]
    with BlockingClient.connect(secret_server.path, geometry=SMALL, secret=b"\xc0\xff\xee") as c:
        pid, uid, gid, _groups = c.call(Op.NOP, {"whoami": True}).body
        assert (pid, uid, gid) == (os.getpid(), os.getuid(), os.getgid())


def test_server_survives_refusals(server: EchoServer) -> None:
    for _ in range(3):
        assert "garbage" in _raw_exchange(server.path, b"\xc1")
    with BlockingClient.connect(server.path, geometry=SMALL) as client:
        assert client.call(Op.NOP, [1, 2]).body == [1, 2]


async def test_a_peer_gone_before_its_hello_is_a_reset_not_a_protocol_error() -> None:
    """A peer that hangs up before its hello (a liveness probe) is refused with ECONNRESET,
    which the server logs quietly; a peer that sends garbage is EPROTO."""

    def next_id() -> int:
        return 1

    for sent, code in ((b"", errno.ECONNRESET), (b"\x01\x00\x00\x00\xc1", errno.EPROTO)):
        ours, theirs = trio.socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with ours, theirs:
            if sent:
                await theirs.send(sent)
            theirs.shutdown(socket.SHUT_WR)
            with pytest.raises(HandshakeRefused) as caught:
                await accept_channel(ours, next_channel_id=next_id)
            assert caught.value.errno == code, caught.value
