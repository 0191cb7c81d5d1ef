"""What the server needs of a channel, over either transport: the `ServedChannel` interface
(both `channel.transport.shm_server.ServerChannel` and
`channel.transport.socket_server.SocketServerChannel` implement it), the `Handler` that serves
one, and the close callbacks both run."""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from typing import NamedTuple, Protocol, TypeVar

from channel.protocol.codec import Command
from channel.protocol.handshake import PeerCredentials

log = logging.getLogger(__name__)


class ServedChannel(Protocol):
    """One channel as the server's operations see it: who is on it, a command's input data
    and output buffer, the completion, and its end."""

    token: bytes
    #: The effective identity: the forwarded one when a trusted driver sent on_behalf_of.
    creds: PeerCredentials
    #: The kernel's word on who holds the socket (the driver, for a forwarded channel).
    peer: PeerCredentials
    role: str
    channel_id: int
    #: The channel belongs to a read-only mount: the server refuses every change (EROFS).
    readonly: bool
    closed: bool
    #: Called once when the channel ends (close, corrupt ring, peer death or hang-up).
    on_close: list[Callable[[], None]]

    def input_data(self, cmd: Command) -> memoryview:
        """The bytes the client sent with `cmd` (empty without a data buffer)."""
        ...

    def output_buffer(self, cmd: Command) -> memoryview:
        """Where `cmd`'s reply data goes (empty without a data buffer)."""
        ...

    def complete(
        self, tag: int, status: int, body: bytes = b"", *, data_len: int = 0, value: int = 0
    ) -> None:
        """Publish `tag`'s completion; ignored once the channel is closed."""
        ...

    def close(self) -> None: ...


class Identity(NamedTuple):
    """Who a channel serves, as the handshake established it (`channel.transport.serve`
    builds it once, whichever transport the hello asks for)."""

    token: bytes
    #: The effective identity: the forwarded one when a trusted driver sent on_behalf_of.
    creds: PeerCredentials
    #: The kernel's word on who holds the socket (the driver, for a forwarded channel).
    peer: PeerCredentials
    role: str
    channel_id: int = 0


class ChannelIdentity:
    """The fields every server channel carries, over either transport: who is on it (as the
    handshake established), its number, its mount's read-only flag, and its end."""

    def __init__(self, who: Identity) -> None:
        self.token = who.token
        #: The effective identity: the forwarded one when a trusted driver sent on_behalf_of.
        self.creds = who.creds
        #: The kernel's word on who holds the socket (the driver, for a forwarded channel).
        self.peer = who.peer
        self.role = who.role
        self.channel_id = who.channel_id
        #: The channel belongs to a read-only mount: the server refuses every change (EROFS).
        self.readonly = False
        self.closed = False
        #: Called once when the channel ends (close, corrupt ring, peer death or hang-up).
        self.on_close: list[Callable[[], None]] = []

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.channel_id}, role={self.role}, pid={self.peer.pid})"


#: What serves a channel's commands: a plain sync callable, called in the trio thread.
Handler = Callable[[ServedChannel, Command], None]


def run_close_callbacks(callbacks: list[Callable[[], None]]) -> None:
    """Call each `on_close` callback once (each takes no argument); one that fails is logged
    and the others still run."""
    for callback in callbacks:
        try:
            callback()
        except Exception:
            log.exception("on_close callback %r failed", callback)


C = TypeVar("C", bound=ServedChannel)


def serve_command(handler: Callable[[C, Command], None], channel: C, cmd: Command) -> None:
    """Hand `cmd` to `handler`. A handler that raises is logged and the command answered EIO:
    one bad command never ends its channel's loop or the poller."""
    try:
        handler(channel, cmd)
    except Exception:
        log.exception("handler failed on %r of %r", cmd, channel)
        channel.complete(cmd.tag, -errno.EIO)
