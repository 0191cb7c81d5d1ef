"""The server process: listening socket, access policy, poller, backend, clean shutdown.

`ringfs serve EXPORT --socket PATH` ends up in `serve()`. The socket is created mode 0600 (only
the server's own user, and root, can connect); `--allow-uid`/`--allow-gid` open it to those
users and groups, and every other peer is refused with a reason at handshake. An optional
secret file must then be presented too. SIGTERM/SIGINT stop accepting, let the commands in
flight finish, release every channel and exit 0.
"""

from __future__ import annotations

import collections
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
from channel import limits
from channel.handshake import PeerCredentials
from channel.poller import AnyChannel, Poller, serve_connection

log = logging.getLogger(__name__)

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
    """At most `limits.MAX_CHANNELS_PER_UID` open channels per user (the identity served, so
    channels a driver forwards for an application count against that application's user)."""

    def __init__(self, per_uid: int = limits.MAX_CHANNELS_PER_UID) -> None:
        self.per_uid = per_uid
        self.open: collections.Counter[int] = collections.Counter()

    def refusal(self, peer: PeerCredentials) -> str | None:
        if self.open[peer.uid] >= self.per_uid:
            return f"uid {peer.uid} already holds {self.per_uid} channels"
        return None

    def opened(self, channel: AnyChannel) -> None:
        uid = channel.creds.uid
        if self.open[uid] >= self.per_uid:  # a forwarded identity over its quota
            log.warning("closing %r: uid %d is over its channel quota", channel, uid)
            channel.close()
            return
        self.open[uid] += 1

        def closed() -> None:
            self.open[uid] -= 1

        channel.on_close.append(closed)


def trusted_forwarder(peer: PeerCredentials) -> bool:
    """Only root or the server's own user may hand over another process's credentials."""
    return peer.uid in (0, os.geteuid())


def bind_listener(path: str, policy: AccessPolicy) -> trio.socket.SocketType:
    """A listening Unix socket at `path`, replacing a stale socket file (never anything else)."""
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
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
    on_channel: Callable[[AnyChannel], None] | None = None,
) -> None:
    """Serve `export` on `socket_path` until SIGTERM/SIGINT."""
    policy = policy or AccessPolicy()
    quota = ChannelQuota()
    handshakes = trio.Semaphore(limits.MAX_PENDING_HANDSHAKES)

    def authorize(peer: PeerCredentials) -> str | None:
        return policy.refusal(peer) or quota.refusal(peer)

    def channel_opened(channel: AnyChannel) -> None:
        quota.opened(channel)
        if on_channel is not None and not channel.closed:
            on_channel(channel)

    backend = Backend(export)
    listener = bind_listener(socket_path, policy)
    poller = Poller()
    channel_ids = itertools.count(1)
    log.info("serving %s on %s (pid %d)", export, socket_path, os.getpid())
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
                await handshakes.acquire()
                slot_held = True

                def release_slot() -> None:
                    nonlocal slot_held
                    if slot_held:
                        slot_held = False
                        handshakes.release()

                def opened(channel: AnyChannel) -> None:
                    release_slot()
                    channel_opened(channel)

                try:
                    await serve_connection(
                        conn,
                        poller,
                        backend.handler,
                        next_channel_id=functools.partial(next, channel_ids),
                        secret=secret,
                        trust_forwarded=trusted_forwarder,
                        authorize=authorize,
                        on_channel=opened,
                    )
                except Exception:
                    log.exception("a connection failed")
                finally:
                    release_slot()

            async def accept_loop() -> None:
                with accepting:
                    while True:
                        conn, _ = await listener.accept()
                        nursery.start_soon(serve_one, conn)

            nursery.start_soon(accept_loop)
            task_status.started()
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
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
