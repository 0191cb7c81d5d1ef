"""The handshake's I/O over a Unix socket: the server's trio side, the client's blocking side.

The messages themselves are `channel.protocol.handshake`'s. The whole handshake, the wait for
a handshake slot included, has `limits.HANDSHAKE_TIMEOUT` from accept() on (`deadline`).
`accept_forever` is the accept loop both the server and the driver's control socket run: it
backs off and keeps serving when accept() finds no descriptor or memory, instead of failing
(and taking every channel with it). The server answers every failed hello with a refusal and
its reason, never by hanging up, and closes the descriptors it received (`read_hello`,
`check_descriptors`, `refuse`, `send_frame`; `channel.transport.serve.accept_channel` runs
them); the client side is `connect`, `forward` and `exchange`. The socket stays open after the
handshake: its end means the peer is gone, and both sides watch for that.
"""

from __future__ import annotations

import array
import contextlib
import errno
import logging
import os
import socket
import stat
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypedDict, Unpack

import trio

from channel.protocol import limits
from channel.protocol.errors import HandshakeRefused, ProtocolError
from channel.protocol.handshake import (
    LENGTH,
    Accept,
    Hello,
    PeerCredentials,
    frame,
    make_hello,
    make_refusal,
    parse_answer,
)
from channel.protocol.layout import Geometry, Region, size_is_sealed
from channel.transport import doorbell

log = logging.getLogger(__name__)

_FD_SIZE = array.array("i").itemsize
#: Room for more descriptors than a hello may carry, so that "too many" is seen, not truncated.
_ANCILLARY_FDS = 16

#: `read_hello`'s reason when the peer hung up before its hello was complete: not malformed
#: input but a peer gone (often a liveness probe), refused with ECONNRESET rather than EPROTO.
PEER_LEFT = "connection closed during the hello"


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


def read_secret(path: str | os.PathLike[str] | None) -> bytes | None:
    """The secret in `path`, as both `ringfs serve --secret-file` and `ringfs mount
    --secret-file` read it (surrounding whitespace, such as a final newline, is not part);
    None without a path."""
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read().strip()


def socket_path_problem(path: str) -> str | None:
    """Why a listening socket cannot be created at `path`, or None: its directory must
    exist, and nothing but a (stale) socket may be there already (a server replaces only a
    socket file). Checked by the server and by `ringfs up` before it starts one."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        return f"directory {directory} does not exist"
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISSOCK(st.st_mode):
        return "it exists and is not a socket"
    return None


# -- server side (trio) ----------------------------------------------------------------------


#: struct ucred, as SO_PEERCRED returns it: pid, uid, gid.
PEERCRED = struct.Struct("3i")


def _ucred(sock: socket.socket | trio.socket.SocketType) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end, from the kernel."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, PEERCRED.size)
    pid, uid, gid = PEERCRED.unpack(raw)
    return pid, uid, gid


def peer_uid(sock: socket.socket | trio.socket.SocketType) -> int:
    """The connecting process's uid from the kernel (one getsockopt, nothing read)."""
    return _ucred(sock)[1]


def peer_credentials(sock: socket.socket | trio.socket.SocketType) -> PeerCredentials:
    """The connecting process's identity from the kernel, with its supplementary groups."""
    pid, uid, gid = _ucred(sock)
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
            return b"", fds, PEER_LEFT
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


#: `listener_pid` of a listener that is alive but whose queue is full: it cannot say who it is.
BUSY_LISTENER = 0


def listener_pid(path: str | os.PathLike[str]) -> int | None:
    """The pid of the process accepting connections on the Unix socket `path`; None when
    nobody does (no socket there, or a stale one); BUSY_LISTENER when one does but its queue
    is full. The one way both the server (before it replaces a socket) and the driver (which
    waits for its server) ask whether a server is there."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(os.fspath(path))
        except (TimeoutError, BlockingIOError):
            return BUSY_LISTENER  # its queue is full: alive, only busy
        except (ConnectionRefusedError, FileNotFoundError, NotADirectoryError):
            return None
        return _ucred(probe)[0]


def someone_listens(path: str | os.PathLike[str]) -> bool:
    """Does a process accept connections on the socket `path` (not a stale socket file)?"""
    return listener_pid(path) is not None


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


class HelloOptions(TypedDict, total=False):
    """What a client may ask for at handshake, over either transport: the keywords of every
    client's `connect`/`open`, declared once (their defaults are `_hello`'s)."""

    role: str
    secret: bytes | None
    on_behalf_of: PeerCredentials | None
    timeout: float
    readonly: bool


class ShmHelloOptions(HelloOptions, total=False):
    """A shared-memory client's `HelloOptions`, and the geometry of the region it creates."""

    geometry: Geometry | None


def _hello(
    transport: str,
    *,
    geometry: Geometry | None = None,
    role: str = "app",
    secret: bytes | None = None,
    on_behalf_of: PeerCredentials | None = None,
    timeout: float = limits.HANDSHAKE_TIMEOUT,
    readonly: bool = False,
) -> tuple[bytes, float]:
    """(the hello's payload, the handshake's timeout) for the client's options."""
    hello = make_hello(
        role,
        geometry,
        transport=transport,
        secret=secret,
        on_behalf_of=on_behalf_of,
        readonly=readonly,
    )
    return hello, timeout


def connect(
    socket_path: str | os.PathLike[str], **options: Unpack[ShmHelloOptions]
) -> ClientConnection:
    """Create a region and its two eventfds and hand them to the server (blocking)."""
    geometry = options["geometry"] = options.get("geometry") or Geometry()
    region = Region.create(geometry)
    sq_efd = doorbell.make_eventfd()
    cq_efd = doorbell.make_eventfd()
    try:
        hello, timeout = _hello("shm", **options)
        sock, accept = exchange(socket_path, hello, (region.fd, sq_efd, cq_efd), timeout)
    except BaseException:
        region.close()
        close_all((sq_efd, cq_efd))
        raise
    return ClientConnection(sock, accept, region, sq_efd, cq_efd)


def connect_socket(
    socket_path: str | os.PathLike[str], **options: Unpack[HelloOptions]
) -> tuple[socket.socket, Accept]:
    """The handshake of a socket-transport client: no region, no descriptors (blocking)."""
    hello, timeout = _hello("socket", **options)
    return exchange(socket_path, hello, (), timeout)


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
