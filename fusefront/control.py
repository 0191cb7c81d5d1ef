"""The driver's control socket: applications ask here for a channel of their own.

An application finds the socket from the mount point alone (the root's `user.ringfs.info`
names it), creates its region and eventfds, and sends the same hello it would send a server
(`channel.handshake.connect`). The driver reads who it is from the kernel (SO_PEERCRED, with the
supplementary groups of that pid), forwards the region, the eventfds and that identity to
the server over a link of its own (`handshake.forward`; the server trusts forwarded
identities only from root or its own user), and relays the answer: channel id and token, or
the server's refusal with its reason. From then on the application talks to the server
directly through shared memory; the driver only keeps the two sockets paired. When the
application goes away its socket closes, the driver closes the server link and the server
frees the channel; when the mount goes away the driver closes every pair, and each
application sees its channel end (ChannelClosed) at once.

The socket is mode 0666: any local user may ask, and is served strictly as itself.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import socket

import trio

from channel import handshake, limits
from channel.errors import HandshakeRefused, ProtocolError
from channel.handshake import PeerCredentials

log = logging.getLogger(__name__)


class ControlSocket:
    def __init__(self, path: str, server_socket: str) -> None:
        self.path = path
        self.server_socket = server_socket
        self.per_uid: collections.Counter[int] = collections.Counter()
        self._handshakes = trio.Semaphore(limits.MAX_PENDING_HANDSHAKES)

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            await listener.bind(self.path)
            os.chmod(self.path, 0o666)
            listener.listen(64)
            async with trio.open_nursery() as nursery:
                task_status.started()
                while True:
                    conn, _ = await listener.accept()
                    nursery.start_soon(self._serve_one, conn)
        finally:
            listener.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    async def _serve_one(self, conn: trio.socket.SocketType) -> None:
        with conn:
            peer = handshake.peer_credentials(conn)
            try:
                async with self._handshakes:
                    link = await self._forward(conn, peer)
            except (HandshakeRefused, ProtocolError, OSError) as exc:
                with contextlib.suppress(OSError, trio.BrokenResourceError):
                    await handshake.send_frame(conn, handshake.make_refusal(str(exc)))
                return
            self.per_uid[peer.uid] += 1
            try:
                with link:
                    await _pair(conn, trio.socket.from_stdlib_socket(link))
            finally:
                self.per_uid[peer.uid] -= 1

    async def _forward(self, conn: trio.socket.SocketType, peer: PeerCredentials) -> socket.socket:
        """Read the application's hello, hand it to the server as that peer, answer."""
        if self.per_uid[peer.uid] >= limits.MAX_CHANNELS_PER_UID:
            raise ProtocolError(f"too many channels for uid {peer.uid}")
        payload, fds = b"", list[int]()
        reason: str | None = "handshake timed out"
        with trio.move_on_after(limits.HANDSHAKE_TIMEOUT):
            payload, fds, reason = await handshake.read_hello(conn)
        try:
            if reason is not None:
                raise ProtocolError(reason)
            hello = handshake.parse_hello(payload)
            if hello.role != "app" or hello.transport != "shm" or hello.on_behalf_of:
                raise ProtocolError("the control socket hands out shared-memory app channels")
            handshake.check_descriptors(hello, fds)
            geometry = hello.geometry
            assert geometry is not None
            link, accept = await trio.to_thread.run_sync(
                lambda: handshake.forward(self.server_socket, fds, geometry, peer)
            )
        finally:
            handshake.close_all(fds)  # the server received its own copies
        try:
            await handshake.send_frame(
                conn, handshake.make_accept(accept.channel_id, accept.token, accept.server_pid)
            )
        except BaseException:
            link.close()
            raise
        return link


async def _pair(app: trio.socket.SocketType, server: trio.socket.SocketType) -> None:
    """Return when either side hangs up (or the driver is cancelled): the caller then closes
    both, which ends the channel on both sides."""

    async def watch(sock: trio.socket.SocketType, scope: trio.CancelScope) -> None:
        with contextlib.suppress(OSError, trio.ClosedResourceError):
            await sock.recv(1)
        scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch, app, nursery.cancel_scope)
        nursery.start_soon(watch, server, nursery.cancel_scope)
