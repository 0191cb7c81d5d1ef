"""The driver's control socket: applications ask here for a channel of their own.

An application finds the socket from the mount point alone (the root's `user.ringfs.info` names it),
creates its region and eventfds, and sends the same hello it would send a server
(`channel.transport.handshake_io.connect`). The driver reads who it is from the kernel (SO_PEERCRED,
with the supplementary groups of that pid), forwards the region, the eventfds and that identity to
the server over a link of its own (`handshake_io.forward`; the server trusts forwarded identities
only from root or its own user), and relays the answer: channel id and token, or the server's
refusal with its reason. From then on the application talks to the server directly through shared
memory; the driver only keeps the two sockets paired. When the application goes away its socket
closes, the driver closes the server link and the server frees the channel; when the mount goes away
the driver closes every pair, and each application sees its channel end (ChannelClosed) at once.

The socket is mode 0666: any local user may ask, and is served strictly as itself. So
whatever local users do to it must not hurt the mount or each other (limits from
`channel.protocol.limits`, each refusal sent as a reason with an errno the application raises):
accept() running out of descriptors is waited out (`handshake.accept_forever`), never fatal;
per uid at most MAX_HANDSHAKES_PER_UID connections in or waiting for their handshake and
MAX_CHANNELS_PER_UID channels, more are refused at once (EAGAIN); the whole handshake, the
wait for one of the MAX_PENDING_HANDSHAKES slots included, ends after HANDSHAKE_TIMEOUT
(ETIMEDOUT); and new connections are refused (EAGAIN) once the driver is down to the
RESERVED_FDS descriptors it keeps for the mount's own work. A read-only mount says so in
every hello it forwards, and the server refuses changes on those channels (EROFS).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import os
import socket

import trio

from channel.protocol import handshake, limits
from channel.protocol.errors import HandshakeRefused, ProtocolError
from channel.protocol.handshake import PeerCredentials, Refusal
from channel.transport import handshake_io
from channel.transport.descriptors import DescriptorBudget, raise_soft_limit

log = logging.getLogger(__name__)

#: Connections waiting for accept(); each is taken (and refused, if over a limit) at once.
LISTEN_BACKLOG = 128


class ControlSocket:
    def __init__(
        self,
        path: str,
        server_socket: str,
        *,
        secret: bytes | None = None,
        readonly: bool = False,
    ) -> None:
        self.path = path
        self.server_socket = server_socket
        self.secret = secret
        self.readonly = readonly
        #: channels held, and connections in (or waiting for) their handshake, per uid
        self.per_uid: collections.Counter[int] = collections.Counter()
        self.handshaking: collections.Counter[int] = collections.Counter()
        self._handshakes = trio.Semaphore(limits.MAX_PENDING_HANDSHAKES)
        self.budget = DescriptorBudget()

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            await listener.bind(self.path)
            os.chmod(self.path, 0o666)
            listener.listen(LISTEN_BACKLOG)
            raise_soft_limit()
            self.budget = DescriptorBudget()
            async with trio.open_nursery() as nursery:
                task_status.started()
                await handshake_io.accept_forever(
                    listener, lambda conn: nursery.start_soon(self._serve_one, conn)
                )
        finally:
            listener.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    async def _serve_one(self, conn: trio.socket.SocketType) -> None:
        """One application's connection, for its channel's whole life. Nothing it does may
        escape: the nursery it runs in is the mount's."""
        deadline = trio.current_time() + limits.HANDSHAKE_TIMEOUT
        self.budget.held += limits.FDS_PER_CONNECTION
        try:
            with conn:
                await self._serve(conn, deadline)
        except Exception:
            log.exception("an application's control connection failed")
        finally:
            self.budget.held -= limits.FDS_PER_CONNECTION

    def _refusal(self, uid: int) -> str | None:
        if not self.budget.room():
            return "the driver is short of file descriptors: try later"
        if self.handshaking[uid] >= limits.MAX_HANDSHAKES_PER_UID:
            return (
                f"uid {uid} already has {limits.MAX_HANDSHAKES_PER_UID} connections in their "
                "handshake (limit MAX_HANDSHAKES_PER_UID)"
            )
        if self.per_uid[uid] >= limits.MAX_CHANNELS_PER_UID:
            return (
                f"uid {uid} already holds {limits.MAX_CHANNELS_PER_UID} channels "
                "(limit MAX_CHANNELS_PER_UID)"
            )
        return None

    async def _serve(self, conn: trio.socket.SocketType, deadline: float) -> None:
        try:
            uid = handshake_io.peer_uid(conn)
        except OSError:
            return  # gone already
        refusal = self._refusal(uid)
        if refusal is not None:
            await handshake_io.refuse(conn, refusal, errno.EAGAIN)
            return
        # The channel's share is taken now, so that concurrent handshakes cannot pass the
        # quota together; it is given back if the handshake fails.
        self.handshaking[uid] += 1
        self.per_uid[uid] += 1
        try:
            link = await self._handshake(conn, deadline)
        except BaseException:
            self.per_uid[uid] -= 1
            raise
        finally:
            self.handshaking[uid] -= 1
        try:
            if link is not None:
                with link:
                    await _pair(conn, trio.socket.from_stdlib_socket(link))
        finally:
            self.per_uid[uid] -= 1

    async def _handshake(
        self, conn: trio.socket.SocketType, deadline: float
    ) -> socket.socket | None:
        """Wait for a slot and forward, all by `deadline`; the link to the server, or None
        after answering the application with the refusal."""
        code, reason = (
            errno.ETIMEDOUT,
            (
                f"handshake timed out (limit {limits.HANDSHAKE_TIMEOUT:g} s, the wait for one "
                f"of the driver's {limits.MAX_PENDING_HANDSHAKES} handshake slots included)"
            ),
        )
        with trio.move_on_at(deadline):
            try:
                async with self._handshakes:
                    return await self._forward(conn, deadline)
            except Refusal as exc:
                code, reason = exc.code, exc.reason
            except HandshakeRefused as exc:  # the server's answer: relayed as it is
                code, reason = exc.errno or errno.EPROTO, exc.strerror or str(exc)
            except ProtocolError as exc:
                code, reason = errno.EPROTO, str(exc)
            except OSError as exc:
                code = exc.errno or errno.EIO
                reason = f"the driver cannot reach its server: {exc.strerror or exc}"
        await handshake_io.refuse(conn, reason, code)
        return None

    async def _forward(self, conn: trio.socket.SocketType, deadline: float) -> socket.socket:
        """Read the application's hello, hand it to the server as that peer, answer."""
        payload, fds, reason = await handshake_io.read_hello(conn)
        try:
            if reason is not None:
                raise ProtocolError(reason)
            hello = handshake.parse_hello(payload)
            if hello.role != "app" or hello.transport != "shm" or hello.on_behalf_of:
                raise ProtocolError("the control socket hands out shared-memory app channels")
            handshake_io.check_descriptors(hello, fds)
            geometry = hello.geometry
            assert geometry is not None
            peer: PeerCredentials = handshake_io.peer_credentials(conn)
            timeout = max(0.001, deadline - trio.current_time())
            link, accept = await trio.to_thread.run_sync(
                lambda: handshake_io.forward(
                    self.server_socket,
                    fds,
                    geometry,
                    peer,
                    secret=self.secret,
                    readonly=self.readonly,
                    timeout=timeout,
                )
            )
        finally:
            handshake_io.close_all(fds)  # the server received its own copies
        try:
            await handshake_io.send_frame(
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
