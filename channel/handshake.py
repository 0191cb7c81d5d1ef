"""The setup conversation over a Unix stream socket: hello, then accept or refusal.

Messages are msgpack maps, each framed by a 4-byte little-endian length (at most
`limits.MAX_HANDSHAKE_MESSAGE`). The hello of a shared-memory channel carries, with
SCM_RIGHTS, the region's memfd, the SQ eventfd and the CQ eventfd (in that order); a hello with
`transport: "socket"` carries no descriptor and the channel's commands then travel framed over
this same socket (`channel.socket_transport`).

hello  = {"version": 1, "role": "driver"|"app"|"stats", "transport": "shm"|"socket",
          "geometry": [sq_entries, cq_entries, slot_size, buf_count, buf_size] (shm only),
          "secret": bytes (optional), "on_behalf_of": {"pid", "uid", "gid", "groups"} (optional),
          "readonly": True (optional: the channel belongs to a read-only mount)}
accept = {"accept": True, "channel_id": int, "token": 16 bytes, "server_pid": int}
refuse = {"accept": False, "reason": str, "errno": int}

A refusal's errno says what kind it is (EACCES: not allowed, EAGAIN: a limit, ETIMEDOUT:
too slow, EPROTO: malformed); the client raises it as `HandshakeRefused`, an OSError.
The whole handshake, the wait for a handshake slot included, has `limits.HANDSHAKE_TIMEOUT`
from accept() on (`deadline`). `accept_forever` is the accept loop both the server and the
driver's control socket run: it backs off and keeps serving when accept() finds no
descriptor or memory, instead of failing (and taking every channel with it).

The module has a pure part (`make_*`/`parse_*`, no I/O, so tests feed it bytes), the server's
trio side (`accept_channel`) and the client's blocking side (`connect`, `forward`). The server
answers every failed hello with a refusal and its reason, never by hanging up, and closes the
descriptors it received. The socket stays open after the handshake: its end means the peer
is gone, and both sides watch for that.
"""

from __future__ import annotations

import array
import contextlib
import errno
import hmac
import logging
import os
import secrets
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgpack
import trio

from channel import doorbell, limits
from channel.errors import HandshakeRefused, ProtocolError
from channel.layout import Geometry, Region, size_is_sealed
from channel.protocol import TOKEN_SIZE

if TYPE_CHECKING:
    from channel.poller import ServerChannel
    from channel.socket_transport import SocketServerChannel

log = logging.getLogger(__name__)

ROLES = frozenset({"driver", "app", "stats"})
TRANSPORTS = frozenset({"shm", "socket"})
LENGTH = struct.Struct("<I")
_FD_SIZE = array.array("i").itemsize
#: Room for more descriptors than a hello may carry, so that "too many" is seen, not truncated.
_ANCILLARY_FDS = 16


@dataclass(frozen=True, slots=True)
class PeerCredentials:
    """Who is on the other end: the kernel's word (SO_PEERCRED), or a trusted driver's."""

    pid: int
    uid: int
    gid: int
    groups: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Hello:
    version: int
    role: str
    transport: str
    geometry: Geometry | None
    secret: bytes | None
    on_behalf_of: PeerCredentials | None
    readonly: bool = False

    @property
    def fd_count(self) -> int:
        """Descriptors this hello must arrive with."""
        return limits.HANDSHAKE_FDS if self.transport == "shm" else 0


@dataclass(frozen=True, slots=True)
class Accept:
    channel_id: int
    token: bytes
    server_pid: int


class Refusal(Exception):
    """Why a hello is refused, and the errno the client will raise it with."""

    def __init__(self, reason: str, code: int = errno.EPROTO) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


#: What an admission check hands back for an admitted channel: called once when it ends.
Release = Callable[[], None]


def _admit_all(creds: PeerCredentials, hello: Hello) -> Release:
    return lambda: None


# -- pure part -------------------------------------------------------------------------------


def frame(payload: bytes) -> bytes:
    """Prefix a message with its length."""
    if len(payload) > limits.MAX_HANDSHAKE_MESSAGE:
        raise ValueError(f"handshake message of {len(payload)} bytes is too long")
    return LENGTH.pack(len(payload)) + payload


def _credentials_to_map(creds: PeerCredentials) -> dict[str, Any]:
    return {"pid": creds.pid, "uid": creds.uid, "gid": creds.gid, "groups": list(creds.groups)}


def make_hello(
    role: str = "app",
    geometry: Geometry | None = None,
    *,
    transport: str = "shm",
    secret: bytes | None = None,
    on_behalf_of: PeerCredentials | None = None,
    readonly: bool = False,
    version: int = limits.PROTOCOL_VERSION,
) -> bytes:
    """The hello's payload (unframed)."""
    hello: dict[str, Any] = {"version": version, "role": role, "transport": transport}
    if readonly:
        hello["readonly"] = True
    if transport == "shm":
        hello["geometry"] = (geometry or Geometry()).as_list()
    if secret is not None:
        hello["secret"] = secret
    if on_behalf_of is not None:
        hello["on_behalf_of"] = _credentials_to_map(on_behalf_of)
    return bytes(msgpack.packb(hello, use_bin_type=True))


def _unpack_map(data: bytes) -> dict[str, Any]:
    try:
        value = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception:  # msgpack raises a spread of types for bad input
        raise ProtocolError("garbage hello: not a msgpack message") from None
    if not isinstance(value, dict):
        raise ProtocolError("garbage hello: not a map")
    return value


def _int_field(value: object, what: str) -> int:
    if type(value) is not int or not 0 <= value < 1 << 32:
        raise ProtocolError(f"{what} must be a 32-bit unsigned integer")
    return value


def _parse_credentials(value: object) -> PeerCredentials:
    if not isinstance(value, dict):
        raise ProtocolError("on_behalf_of must be a map")
    groups = value.get("groups", [])
    if not isinstance(groups, list) or len(groups) > 65536:
        raise ProtocolError("on_behalf_of.groups must be a list of integers")
    return PeerCredentials(
        _int_field(value.get("pid"), "on_behalf_of.pid"),
        _int_field(value.get("uid"), "on_behalf_of.uid"),
        _int_field(value.get("gid"), "on_behalf_of.gid"),
        tuple(_int_field(g, "on_behalf_of.groups") for g in groups),
    )


def parse_hello(data: bytes) -> Hello:
    """Validate a hello's payload; ProtocolError whose message is the refusal's reason."""
    hello = _unpack_map(data)
    version = hello.get("version")
    if version != limits.PROTOCOL_VERSION:
        raise ProtocolError(
            f"wrong version: {version!r}, this server speaks {limits.PROTOCOL_VERSION}"
        )
    role = hello.get("role")
    if role not in ROLES:
        raise ProtocolError(f"unknown role {role!r}")
    transport = hello.get("transport", "shm")
    if transport not in TRANSPORTS:
        raise ProtocolError(f"unknown transport {transport!r}")
    geometry = Geometry.from_list(hello.get("geometry")) if transport == "shm" else None
    secret = hello.get("secret")
    if secret is not None and not isinstance(secret, bytes):
        raise ProtocolError("secret must be bytes")
    forwarded = hello.get("on_behalf_of")
    on_behalf_of = None if forwarded is None else _parse_credentials(forwarded)
    readonly = hello.get("readonly", False)
    if not isinstance(readonly, bool):
        raise ProtocolError("readonly must be true or false")
    return Hello(version, role, transport, geometry, secret, on_behalf_of, readonly)


def make_accept(channel_id: int, token: bytes, server_pid: int) -> bytes:
    answer = {"accept": True, "channel_id": channel_id, "token": token, "server_pid": server_pid}
    return bytes(msgpack.packb(answer, use_bin_type=True))


def make_refusal(reason: str, code: int = errno.EPROTO) -> bytes:
    refusal = {"accept": False, "reason": reason, "errno": code}
    return bytes(msgpack.packb(refusal, use_bin_type=True))


def parse_answer(data: bytes) -> Accept:
    """The server's answer: an Accept, HandshakeRefused(errno, reason), or ProtocolError."""
    try:
        answer = _unpack_map(data)
    except ProtocolError:
        raise ProtocolError("garbage answer from the server") from None
    if answer.get("accept") is False:
        code = answer.get("errno")
        if type(code) is not int or not 0 < code < 4096:
            code = errno.EPROTO
        raise HandshakeRefused(code, str(answer.get("reason", "no reason given")))
    channel_id, token, server_pid = (answer.get(k) for k in ("channel_id", "token", "server_pid"))
    if not (
        answer.get("accept") is True
        and type(channel_id) is int
        and type(server_pid) is int
        and isinstance(token, bytes)
        and len(token) == TOKEN_SIZE
    ):
        raise ProtocolError("malformed accept from the server")
    return Accept(channel_id, token, server_pid)


def _fds_from_ancillary(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.extend(array.array("i", data[: len(data) - len(data) % _FD_SIZE]))
    return fds


def close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def read_secret(path: str | os.PathLike[str]) -> bytes:
    """The secret in `path`, as both `ringfs serve --secret-file` and `ringfs mount
    --secret-file` read it (surrounding whitespace, such as a final newline, is not part)."""
    with open(path, "rb") as f:
        return f.read().strip()


# -- server side (trio) ----------------------------------------------------------------------


def peer_uid(sock: socket.socket | trio.socket.SocketType) -> int:
    """The connecting process's uid from the kernel (one getsockopt, nothing read)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", raw)[1])


def peer_credentials(sock: socket.socket | trio.socket.SocketType) -> PeerCredentials:
    """The connecting process's identity from the kernel, with its supplementary groups."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return PeerCredentials(pid, uid, gid, supplementary_groups(pid))


#: accept() found no descriptor or memory for the new connection: it stays queued, and the
#: loop tries again after a pause (trio's own serve_listeners does the same).
_ACCEPT_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: accept() failed for that one connection only (it was aborted before it was taken).
_ACCEPT_SKIP_ERRNOS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM})


async def accept_forever(
    listener: trio.socket.SocketType, start: Callable[[trio.socket.SocketType], None]
) -> None:
    """Accept connections until cancelled, handing each to `start` (which must not block).
    Running out of descriptors or memory is logged once per episode and waited out."""
    starved = False
    while True:
        try:
            conn, _ = await listener.accept()
        except OSError as exc:
            if exc.errno in _ACCEPT_SKIP_ERRNOS:
                continue
            if exc.errno not in _ACCEPT_RESOURCE_ERRNOS:
                raise
            if not starved:
                log.warning("accept() failed (%s): backing off, still serving", exc)
                starved = True
            await trio.sleep(limits.ACCEPT_BACKOFF)
            continue
        if starved:
            log.warning("accept() works again")
            starved = False
        start(conn)


async def refuse(sock: trio.socket.SocketType, reason: str, code: int) -> None:
    """Send a refusal, briefly; a peer that is gone or does not read is not waited for."""
    with contextlib.suppress(OSError, trio.BrokenResourceError, trio.ClosedResourceError):
        with trio.move_on_after(limits.HANDSHAKE_TIMEOUT):
            await send_frame(sock, make_refusal(reason, code))


def supplementary_groups(pid: int) -> tuple[int, ...]:
    """The `Groups:` line of /proc/<pid>/status (empty if the process is already gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Groups:"):
                    return tuple(int(g) for g in line.split()[1:])
    except (OSError, ValueError):
        pass
    return ()


async def read_hello(sock: trio.socket.SocketType) -> tuple[bytes, list[int], str | None]:
    """Read one framed message and every descriptor that came with it. Returns the payload,
    the fds, and a refusal reason if the framing itself is bad (the fds are still returned
    so that the caller closes them)."""
    data = bytearray()
    fds: list[int] = []
    need = LENGTH.size
    ancillary = socket.CMSG_SPACE(_ANCILLARY_FDS * _FD_SIZE)
    while len(data) < need:
        chunk, ancdata, msg_flags, _addr = await sock.recvmsg(need - len(data), ancillary)
        fds.extend(_fds_from_ancillary(ancdata))
        if msg_flags & socket.MSG_CTRUNC:
            return b"", fds, "wrong number of file descriptors (too many)"
        if not chunk:
            return b"", fds, "connection closed during the hello"
        data += chunk
        if need == LENGTH.size and len(data) >= LENGTH.size:
            (length,) = LENGTH.unpack_from(data)
            if length > limits.MAX_HANDSHAKE_MESSAGE:
                return b"", fds, f"garbage hello: length {length} exceeds the limit"
            need = LENGTH.size + length
    return bytes(data[LENGTH.size :]), fds, None


async def send_frame(sock: trio.socket.SocketType, payload: bytes) -> None:
    message = memoryview(frame(payload))
    while message:
        sent = await sock.send(message)
        message = message[sent:]


def check_descriptors(hello: Hello, fds: list[int]) -> None:
    if len(fds) != hello.fd_count:
        raise ProtocolError(
            f"wrong number of file descriptors: {len(fds)}, expected {hello.fd_count}"
        )
    if hello.transport != "shm":
        return
    memfd, sq_efd, cq_efd = fds
    if not (doorbell.is_eventfd(sq_efd) and doorbell.is_eventfd(cq_efd)):
        raise ProtocolError("the SQ and CQ descriptors must be eventfds")
    if not size_is_sealed(memfd):
        raise ProtocolError("the region must be a memfd sealed against shrinking")


async def accept_channel(
    sock: trio.socket.SocketType | trio.SocketStream,
    *,
    next_channel_id: Callable[[], int],
    secret: bytes | None = None,
    trust_forwarded: Callable[[PeerCredentials], bool] = lambda creds: False,
    authorize: Callable[[PeerCredentials], str | None] = lambda creds: None,
    admit: Callable[[PeerCredentials, Hello], Release] = _admit_all,
    idle_spin: float = limits.DEFAULT_IDLE_SPIN,
    deadline: float | None = None,
) -> ServerChannel | SocketServerChannel:
    """Run the server's half of a handshake on a freshly accepted connection.

    Returns a `ServerChannel` (shared memory) or a `SocketServerChannel` (socket transport),
    which owns the socket from then on. On any failure the peer gets a refusal with its
    reason, every received descriptor is closed and HandshakeRefused is raised; the socket is
    left to the caller to close. `next_channel_id` is called only for accepted channels.
    `authorize(peer)` returns None to admit the kernel-reported peer, or the refusal reason
    (EACCES). `admit(creds, hello)`, once the identity the channel will be served as is
    known, either raises Refusal or takes the channel's share of a quota and returns what
    gives it back (run when the channel ends, or at once if the handshake fails after it).
    The hello must arrive by `deadline` (trio time; default HANDSHAKE_TIMEOUT from now).
    """
    from channel.poller import ServerChannel
    from channel.socket_transport import SocketServerChannel

    raw = sock.socket if isinstance(sock, trio.SocketStream) else sock
    peer = peer_credentials(raw)
    fds: list[int] = []
    reason: str | None = None
    payload = b""
    if deadline is None:
        deadline = trio.current_time() + limits.HANDSHAKE_TIMEOUT
    with trio.move_on_at(deadline) as waited:
        payload, fds, reason = await read_hello(raw)
    region: Region | None = None
    release: Release | None = None
    try:
        if waited.cancelled_caught:
            raise Refusal(
                f"handshake timed out (limit {limits.HANDSHAKE_TIMEOUT:g} s)", errno.ETIMEDOUT
            )
        if reason is not None:
            raise ProtocolError(reason)
        refusal = authorize(peer)
        if refusal is not None:
            raise Refusal(refusal, errno.EACCES)
        hello = parse_hello(payload)
        check_descriptors(hello, fds)
        if secret is not None and not (
            hello.secret is not None and hmac.compare_digest(hello.secret, secret)
        ):
            raise Refusal("bad secret", errno.EACCES)
        creds = peer
        if hello.on_behalf_of is not None:
            if not trust_forwarded(peer):
                raise Refusal("this peer is not trusted to forward credentials", errno.EACCES)
            creds = hello.on_behalf_of
        release = admit(creds, hello)
        token = secrets.token_bytes(TOKEN_SIZE)
        channel: ServerChannel | SocketServerChannel
        if hello.transport == "shm":
            assert hello.geometry is not None
            memfd, sq_efd, cq_efd = fds
            try:
                region = Region.attach(memfd, hello.geometry)
            except (OSError, ValueError) as exc:
                raise ProtocolError(f"cannot map the region: {exc}") from None
            os.set_blocking(sq_efd, False)
            os.set_blocking(cq_efd, False)
            channel = ServerChannel(
                raw,
                region,
                sq_efd,
                cq_efd,
                token=token,
                creds=creds,
                peer=peer,
                role=hello.role,
                channel_id=0,
                idle_spin=idle_spin,
            )
        else:
            channel = SocketServerChannel(
                raw, token=token, creds=creds, peer=peer, role=hello.role, channel_id=0
            )
        channel.readonly = hello.readonly
        channel.on_close.append(release)
    except (ProtocolError, Refusal) as exc:
        if release is not None:
            release()
        if region is not None:  # pragma: no cover - nothing after attach raises ProtocolError
            region.close(close_fd=False)
        close_all(fds)
        code = exc.code if isinstance(exc, Refusal) else errno.EPROTO
        await refuse(raw, str(exc), code)
        raise HandshakeRefused(code, str(exc)) from None
    channel.channel_id = next_channel_id()
    try:
        await send_frame(raw, make_accept(channel.channel_id, token, os.getpid()))
    except BaseException:
        channel.close()
        raise
    return channel


# -- client side (blocking) ------------------------------------------------------------------


def _recv_exactly(sock: socket.socket, count: int) -> bytes:
    data = bytearray()
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise HandshakeRefused(
                errno.ECONNRESET, "the server closed the connection during the handshake"
            )
        data += chunk
    return bytes(data)


def recv_message(sock: socket.socket) -> bytes:
    """One framed message (blocking)."""
    (length,) = LENGTH.unpack(_recv_exactly(sock, LENGTH.size))
    if length > limits.MAX_HANDSHAKE_MESSAGE:
        raise ProtocolError(f"handshake message of {length} bytes is too long")
    return _recv_exactly(sock, length)


def send_message(sock: socket.socket, payload: bytes, fds: Sequence[int] = ()) -> None:
    """One framed message, with `fds` attached to its first byte (blocking)."""
    message = frame(payload)
    sent = socket.send_fds(sock, [message], list(fds)) if fds else sock.send(message)
    if sent < len(message):
        sock.sendall(message[sent:])


def someone_listens(path: str | os.PathLike[str]) -> bool:
    """Does a process accept connections on the socket `path` (not a stale socket file)?"""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(os.fspath(path))
        except (TimeoutError, BlockingIOError):
            return True  # its queue is full: alive, only busy
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        return True


def _connect_within(sock: socket.socket, path: str, deadline: float) -> None:
    """connect(), retried while the listener's queue is full: a Unix socket with a timeout
    fails at once with EAGAIN then (others may be flooding it), instead of waiting."""
    pause = 0.001
    while True:
        try:
            sock.connect(path)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise HandshakeRefused(
                    errno.EAGAIN, "the server's queue of connections stayed full"
                ) from None
            time.sleep(pause)  # nothing to wait on: the kernel offers no wake-up for this
            pause = min(pause * 2, 0.05)


def exchange(
    socket_path: str | os.PathLike[str],
    hello: bytes,
    fds: Sequence[int] = (),
    timeout: float = limits.HANDSHAKE_TIMEOUT,
) -> tuple[socket.socket, Accept]:
    """Connect, send a hello (with `fds`), read the answer. Returns the connected socket,
    which must stay open for the channel's lifetime. Raises HandshakeRefused or
    ProtocolError (the socket is then closed)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(timeout)
        _connect_within(sock, os.fspath(socket_path), time.monotonic() + timeout)
        try:
            send_message(sock, hello, fds)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before it read the hello: its refusal is already here to read
        try:
            answer = recv_message(sock)
        except ConnectionResetError:
            raise HandshakeRefused(
                errno.ECONNRESET, "the server hung up during the handshake"
            ) from None
        accept = parse_answer(answer)
        sock.settimeout(None)
    except TimeoutError:
        sock.close()
        raise HandshakeRefused(
            errno.ETIMEDOUT, "the server did not answer the hello in time"
        ) from None
    except BaseException:
        sock.close()
        raise
    return sock, accept


@dataclass(slots=True)
class ClientConnection:
    """What a client holds after a successful shared-memory handshake."""

    sock: socket.socket
    accept: Accept
    region: Region
    sq_efd: int
    cq_efd: int

    def close(self) -> None:
        self.sock.close()
        self.region.close()
        close_all((self.sq_efd, self.cq_efd))


def connect(
    socket_path: str | os.PathLike[str],
    *,
    role: str = "app",
    geometry: Geometry | None = None,
    secret: bytes | None = None,
    on_behalf_of: PeerCredentials | None = None,
    timeout: float = limits.HANDSHAKE_TIMEOUT,
    readonly: bool = False,
) -> ClientConnection:
    """Create a region and its two eventfds and hand them to the server (blocking)."""
    geometry = geometry or Geometry()
    region = Region.create(geometry)
    sq_efd = doorbell.make_eventfd()
    cq_efd = doorbell.make_eventfd()
    try:
        hello = make_hello(
            role, geometry, secret=secret, on_behalf_of=on_behalf_of, readonly=readonly
        )
        sock, accept = exchange(socket_path, hello, (region.fd, sq_efd, cq_efd), timeout)
    except BaseException:
        region.close()
        close_all((sq_efd, cq_efd))
        raise
    return ClientConnection(sock, accept, region, sq_efd, cq_efd)


def forward(
    socket_path: str | os.PathLike[str],
    fds: Sequence[int],
    geometry: Geometry,
    on_behalf_of: PeerCredentials,
    *,
    role: str = "app",
    secret: bytes | None = None,
    timeout: float = limits.HANDSHAKE_TIMEOUT,
    readonly: bool = False,
) -> tuple[socket.socket, Accept]:
    """A trusted driver's handshake for an application: the application's memfd and
    eventfds and its credentials go to the server (with the mount's `readonly`, which the
    server then enforces on the application's channel too). The driver keeps the returned
    socket open exactly as long as the application's channel should live."""
    hello = make_hello(role, geometry, secret=secret, on_behalf_of=on_behalf_of, readonly=readonly)
    return exchange(socket_path, hello, fds, timeout)
