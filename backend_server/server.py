"""The server process: listening socket, access policy, poller, backend, clean shutdown.

`ringfs serve EXPORT --socket PATH` ends up in `serve()`. The socket is created mode 0600 (only
the server's own user, and root, can connect); `--allow-uid`/`--allow-gid` open it to those
users and groups, and every other peer is refused with a reason at handshake. An optional
secret file must then be presented too. SIGTERM/SIGINT stop accepting, let the commands in
flight finish, release every channel and exit 0. A socket path on which a live server
answers is refused (`SocketInUse`), never taken over.

Limits (all in `channel.protocol.limits`; SECURITY.md lists them with their tests): per peer uid at
most MAX_HANDSHAKES_PER_UID connections waiting for or in their handshake, and
MAX_PENDING_HANDSHAKES in all, each with HANDSHAKE_TIMEOUT from accept() to the answer;
per served identity MAX_CHANNELS_PER_UID channels (`ChannelQuota`, taken once the identity
is known: the application's for a forwarded channel, never the driver's); and a descriptor
budget that keeps RESERVED_FDS for the trusted driver's channel (`DescriptorBudget`, shared
with the backend's handle limits). Every refusal reaches the client as a reason and errno.
"""

from __future__ import annotations

import collections
import errno
import functools
import itertools
import logging
import os
import signal
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from backend_server.backend import Backend
from channel.protocol import limits
from channel.protocol.handshake import Hello, PeerCredentials, Refusal, Release
from channel.transport.descriptors import DescriptorBudget, raise_soft_limit
from channel.transport.handshake_io import accept_forever, peer_uid, refuse, someone_listens
from channel.transport.serve import serve_connection
from channel.transport.server_api import ServedChannel
from channel.transport.shm_server import Poller

log = logging.getLogger(__name__)

SHORT_OF_DESCRIPTORS = "the server is short of file descriptors: try later"
NO_SLOT = f"the server is busy: no handshake slot came free within {limits.HANDSHAKE_TIMEOUT:g} s"

#: Connections waiting for accept(); handshakes are short, so a small backlog is plenty.
LISTEN_BACKLOG = 128


@dataclass
class AccessPolicy:
    """Who may connect: the server's own user and root always; then the allow lists."""

    allow_uids: set[int] = field(default_factory=set)
    allow_gids: set[int] = field(default_factory=set)
    #: Every local user may connect (each is still served only as itself).
    everyone: bool = False

    @property
    def widened(self) -> bool:
        return bool(self.everyone or self.allow_uids or self.allow_gids)

    def refusal(self, peer: PeerCredentials) -> str | None:
        """None if `peer` may connect, else the reason it may not."""
        if self.everyone or peer.uid in (0, os.geteuid()) or peer.uid in self.allow_uids:
            return None
        if {peer.gid, *peer.groups} & self.allow_gids:
            return None
        return f"uid {peer.uid} is not allowed to use this server"


class ChannelQuota:
    """At most `limits.MAX_CHANNELS_PER_UID` open channels per user: the identity the channel
    is served as (for a channel a driver forwards, the application's; never the driver's).
    The share is taken in the handshake, as soon as that identity is known and before the
    answer is sent, so concurrent handshakes past the quota are refused with the reason,
    never accepted and then dropped. A trusted driver's own channel is not counted: one per
    mount, and it must connect whatever the users of the mount hold."""

    def __init__(
        self, per_uid: int = limits.MAX_CHANNELS_PER_UID, budget: DescriptorBudget | None = None
    ) -> None:
        self.per_uid = per_uid
        self.budget = budget
        self.open: collections.Counter[int] = collections.Counter()

    def admit(self, creds: PeerCredentials, hello: Hello) -> Release:
        if hello.role == "driver" and hello.on_behalf_of is None and trusted_forwarder(creds):
            return _nothing
        uid = creds.uid
        if self.open[uid] >= self.per_uid:
            raise Refusal(
                f"uid {uid} already holds {self.per_uid} channels (limit MAX_CHANNELS_PER_UID)",
                errno.EAGAIN,
            )
        # (the connection's descriptors are counted from accept() on)
        if self.budget is not None and not self.budget.room():
            raise Refusal(SHORT_OF_DESCRIPTORS, errno.EAGAIN)
        self.open[uid] += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.open[uid] -= 1

        return release


def _nothing() -> None:
    pass


class HandshakeSlots:
    """Connections waiting for, or in, their handshake: at most MAX_HANDSHAKES_PER_UID per
    peer uid (more are refused at once) and MAX_PENDING_HANDSHAKES in all (more wait, within
    their handshake deadline). Root and the server's user, who forward for many users and
    limit each themselves, are not counted per uid."""

    def __init__(self) -> None:
        self.per_uid: collections.Counter[int] = collections.Counter()
        self.all = trio.Semaphore(limits.MAX_PENDING_HANDSHAKES)

    def refusal(self, uid: int) -> str | None:
        if uid not in (0, os.geteuid()) and self.per_uid[uid] >= limits.MAX_HANDSHAKES_PER_UID:
            return (
                f"uid {uid} already has {limits.MAX_HANDSHAKES_PER_UID} connections in their "
                "handshake (limit MAX_HANDSHAKES_PER_UID)"
            )
        return None


def trusted_forwarder(peer: PeerCredentials) -> bool:
    """Only root or the server's own user may hand over another process's credentials."""
    return peer.uid in (0, os.geteuid())


class SocketInUse(Exception):
    """A live server already answers on the socket path; the message says so."""


def bind_listener(path: str, policy: AccessPolicy) -> trio.socket.SocketType:
    """A listening Unix socket at `path`, replacing a stale socket file (never anything else,
    and never the socket of a server that still answers: SocketInUse)."""
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            if someone_listens(path):
                raise SocketInUse(
                    f"a server is already listening on {path}; stop it first or choose "
                    "another --socket"
                )
            os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old_umask = os.umask(0o177)  # the socket file is born 0600: no window where it is wider
    try:
        sock.bind(path)
    finally:
        os.umask(old_umask)
    if policy.widened:
        os.chmod(path, 0o666)  # the policy, checked per peer, is what restricts then
    sock.listen(LISTEN_BACKLOG)
    return trio.socket.from_stdlib_socket(sock)


async def serve(
    export: str,
    socket_path: str,
    *,
    policy: AccessPolicy | None = None,
    secret: bytes | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    on_channel: Callable[[ServedChannel], None] | None = None,
) -> None:
    """Serve `export` on `socket_path` until SIGTERM/SIGINT."""
    policy = policy or AccessPolicy()
    raise_soft_limit()
    budget = DescriptorBudget()
    backend = Backend(export, budget=budget)
    # the inodes' descriptors: a bounded cache (backend_server.inodes), not one per inode
    budget.extra = lambda: backend.table.cached_fds
    try:
        listener = bind_listener(socket_path, policy)
    except BaseException:
        backend.close()
        raise
    quota = ChannelQuota(budget=budget)
    slots = HandshakeSlots()
    poller = Poller()
    channel_ids = itertools.count(1)
    backend_done = trio.Event()

    async def run_backend(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await backend.run(task_status=task_status)
        finally:
            backend_done.set()

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(run_backend)
            polling = trio.CancelScope()

            async def poll() -> None:
                with polling:
                    await poller.run(backend.handler, others_busy=backend.threads_busy)

            nursery.start_soon(poll)

            accepting = trio.CancelScope()

            async def serve_one(conn: trio.socket.SocketType) -> None:
                # One connection's failure must never take the server (and every other
                # channel) down with it. A handshake slot is held only until the handshake
                # ends, so silent connections cannot pile up tasks without bound.
                deadline = trio.current_time() + limits.HANDSHAKE_TIMEOUT
                budget.held += limits.FDS_PER_CONNECTION
                counted: int | None = None
                slot_held = False

                def release_slot() -> None:
                    nonlocal slot_held, counted
                    if slot_held:
                        slot_held = False
                        slots.all.release()
                    if counted is not None:
                        slots.per_uid[counted] -= 1
                        counted = None

                def opened(channel: ServedChannel) -> None:
                    release_slot()
                    if on_channel is not None:
                        on_channel(channel)

                try:
                    uid = peer_uid(conn)
                    # A trusted peer (the driver) may use the reserve (its applications'
                    # channels are checked against it once their identity is known, in
                    # quota.admit); nobody else may.
                    if uid not in (0, os.geteuid()) and not budget.room():
                        await refuse(conn, SHORT_OF_DESCRIPTORS, errno.EAGAIN)
                        return
                    refusal = slots.refusal(uid)
                    if refusal is not None:
                        await refuse(conn, refusal, errno.EAGAIN)
                        return
                    counted = uid
                    slots.per_uid[uid] += 1
                    with trio.move_on_at(deadline):
                        await slots.all.acquire()
                        slot_held = True
                    if not slot_held:
                        await refuse(conn, NO_SLOT, errno.EAGAIN)
                        return
                    await serve_connection(
                        conn,
                        poller,
                        backend.handler,
                        next_channel_id=functools.partial(next, channel_ids),
                        secret=secret,
                        trust_forwarded=trusted_forwarder,
                        authorize=policy.refusal,
                        admit=quota.admit,
                        on_channel=opened,
                        deadline=deadline,
                    )
                except Exception:
                    log.exception("a connection failed")
                finally:
                    release_slot()
                    conn.close()
                    budget.held -= limits.FDS_PER_CONNECTION

            async def accept_loop() -> None:
                with accepting:
                    await accept_forever(listener, lambda conn: nursery.start_soon(serve_one, conn))

            nursery.start_soon(accept_loop)
            task_status.started()
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                # Said once SIGTERM is ours to handle: whoever waits for this line may stop us.
                log.info("serving %s on %s (pid %d)", export, socket_path, os.getpid())
                async for signum in signals:
                    log.info("signal %d: finishing commands in flight, then exiting", signum)
                    break
            # Stop taking commands (inline ones are already complete: they never await),
            # let the slow ones in worker threads finish and complete, then end everything.
            accepting.cancel()
            polling.cancel()
            backend.stop()
            await backend_done.wait()
            nursery.cancel_scope.cancel()
    finally:
        listener.close()
        backend.close()
        try:
            os.unlink(socket_path)
        except FileNotFoundError:
            pass
