"""One accepted connection, for its whole life, over either transport: the server's half of
the handshake (`accept_channel`, which builds the channel the hello asks for), then the channel
until its peer goes away (`serve_connection`).

How a backend serves its listening socket::

    poller = Poller()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(poller.run, handler)
        while True:
            conn, _ = await listener.accept()
            nursery.start_soon(serve_connection, conn, poller, handler, ...)

`serve_connection` runs the handshake, then `poller.add`s a shared-memory channel and awaits
the end of its socket (EOF: the client is gone, even if it was killed), or runs a
socket-transport channel's own loop; in every case it finally closes the channel, which
detaches it from the poller, runs the `on_close` callbacks, unmaps the region and closes the
descriptors and the socket.
"""

from __future__ import annotations

import errno
import hmac
import logging
import os
import secrets
from collections.abc import Callable

import trio

from channel.protocol import limits
from channel.protocol.codec import TOKEN_SIZE
from channel.protocol.errors import HandshakeRefused, ProtocolError
from channel.protocol.handshake import (
    Hello,
    PeerCredentials,
    Refusal,
    Release,
    admit_all,
    make_accept,
    parse_hello,
)
from channel.protocol.layout import Region
from channel.transport.handshake_io import (
    PEER_LEFT,
    check_descriptors,
    close_all,
    peer_credentials,
    read_hello,
    refuse,
    send_frame,
)
from channel.transport.server_api import Handler, Identity, ServedChannel
from channel.transport.shm_server import Poller, ServerChannel
from channel.transport.socket_server import SocketServerChannel

log = logging.getLogger(__name__)


async def accept_channel(
    sock: trio.socket.SocketType | trio.SocketStream,
    *,
    next_channel_id: Callable[[], int],
    secret: bytes | None = None,
    trust_forwarded: Callable[[PeerCredentials], bool] = lambda creds: False,
    authorize: Callable[[PeerCredentials], str | None] = lambda creds: None,
    admit: Callable[[PeerCredentials, Hello], Release] = admit_all,
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
        if reason == PEER_LEFT:
            raise Refusal(reason, errno.ECONNRESET)
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
        who = Identity(token, creds, peer, hello.role)
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
            channel = ServerChannel(raw, region, sq_efd, cq_efd, who, idle_spin=idle_spin)
        else:
            channel = SocketServerChannel(raw, who)
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


async def serve_connection(
    sock: trio.socket.SocketType,
    poller: Poller,
    handler: Handler,
    *,
    next_channel_id: Callable[[], int],
    secret: bytes | None = None,
    trust_forwarded: Callable[[PeerCredentials], bool] = lambda creds: False,
    authorize: Callable[[PeerCredentials], str | None] = lambda creds: None,
    admit: Callable[[PeerCredentials, Hello], Release] = lambda creds, hello: lambda: None,
    on_channel: Callable[[ServedChannel], None] | None = None,
    deadline: float | None = None,
) -> None:
    """Serve one accepted connection for its whole life: handshake (refused peers get their
    reason and are hung up on), then the channel until its peer goes away; always closes.
    `on_channel` runs right after the handshake, e.g. to register `on_close` callbacks;
    `authorize`, `admit` and `deadline` are `accept_channel`'s."""
    try:
        channel = await accept_channel(
            sock,
            next_channel_id=next_channel_id,
            secret=secret,
            trust_forwarded=trust_forwarded,
            authorize=authorize,
            admit=admit,
            idle_spin=poller.clock.idle_spin,
            deadline=deadline,
        )
    except HandshakeRefused as exc:
        # A peer that hangs up before saying hello is usually a liveness probe.
        quiet = exc.errno == errno.ECONNRESET
        log.log(logging.DEBUG if quiet else logging.INFO, "handshake refused: %s", exc)
        sock.close()
        return
    except BaseException:
        sock.close()
        raise
    try:
        if on_channel is not None:
            on_channel(channel)
        if channel.closed:
            return
        if isinstance(channel, SocketServerChannel):
            await channel.run(handler)
        else:
            poller.add(channel)
            await channel.watch_peer()
    finally:
        channel.close()
