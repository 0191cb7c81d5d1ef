"""The driver's link to its server, kept across server crashes and restarts.

`ServerLink.run` holds one channel at a time. When the channel ends (the server died: its
socket closes the moment the kernel reaps it), the link asks its `recover` hook to bring a
server back (`ringfs up` restarts the one it supervises; a mount of someone else's server
just waits for it), connects again, lets the driver `restore` what the kernel holds (see
`fusefront.nodes`) and only then lets operations through again.

Operations call `ServerLink.call`, which has the channel clients' interface:
  * while the link is down an operation waits for it, but only until OUTAGE_WAIT after the
    server was lost; then, and from then on until the server is back, operations fail at once
    with ChannelClosed (ENOTCONN at the caller). No operation waits longer than OUTAGE_WAIT,
    and a path walk of several requests does not wait OUTAGE_WAIT for each;
  * an operation in flight when the channel ended is sent again (once) after recovery when
    doing so is harmless (reads, writes at an offset, attribute calls, lookups, ...); one
    whose repeat could differ from its first effect (create, unlink, rename, ...) fails with
    OperationLost (EIO at the caller): it may or may not have happened, and the caller is
    told so rather than misled;
  * FORGET is dropped while the link is down: the driver already applied it to what it will
    restore.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import trio

from channel.protocol.errors import ChannelClosed, HandshakeRefused
from channel.protocol.opcodes import Op
from channel.transport.calls import AsyncChannelClient, Reply

log = logging.getLogger(__name__)

#: Longest an operation waits for a lost server to come back before it fails.
OUTAGE_WAIT = 0.75
#: Pause between reconnection attempts: doubles from the first to the last value.
FIRST_RETRY_PAUSE = 0.02
LAST_RETRY_PAUSE = 1.0

#: Sent again after a reconnection only if their effect cannot differ the second time.
NOT_REPEATED = frozenset(
    {
        Op.MKNOD, Op.MKDIR, Op.UNLINK, Op.RMDIR, Op.SYMLINK, Op.RENAME, Op.LINK, Op.CREATE,
        Op.FORGET, Op.BATCH_FORGET, Op.RELEASE, Op.RELEASEDIR, Op.SETLK, Op.FLOCK,
    }
)  # fmt: skip
#: Dropped while the link is down: restoring already accounts for them.
DROPPED_WHILE_DOWN = frozenset({Op.FORGET, Op.BATCH_FORGET})


class OperationLost(ChannelClosed):
    """The server died with this command in flight; whether it took effect is unknown."""


class ServerLink:
    def __init__(
        self,
        open_client: Callable[[], AbstractAsyncContextManager[AsyncChannelClient]],
        *,
        recover: Callable[[], None] | None = None,
        on_connect: Callable[[AsyncChannelClient], None] = lambda client: None,
    ) -> None:
        self._open_client = open_client
        self._recover = recover
        self._on_connect = on_connect
        #: The driver's hook, run on each new channel before operations may use it.
        self.restore: Callable[[AsyncChannelClient], Awaitable[None]] | None = None
        self.client: AsyncChannelClient | None = None
        self.reconnections = 0
        self._up = trio.Event()
        self._down_since = 0.0

    # -- operations ---------------------------------------------------------------------
    async def call(self, opcode: int, body: Any = None, **kwargs: Any) -> Reply:
        sent = False
        while True:
            client = self.client
            if client is None:
                if opcode in DROPPED_WHILE_DOWN:
                    raise ChannelClosed("the server is restarting")
                with trio.move_on_at(self._down_since + OUTAGE_WAIT):
                    await self._up.wait()
                if self.client is None:
                    raise ChannelClosed("the server is unreachable")
                continue
            try:
                return await client.call(opcode, body, **kwargs)
            except ChannelClosed:
                self._down(client)
                # Sent once more at most: a command that takes its server down each time
                # must not keep restarting servers.
                if opcode in NOT_REPEATED or sent:
                    raise OperationLost("the server was lost during the operation") from None
                sent = True

    async def wait_up(self) -> None:
        """Return once a channel is up (at once if it is)."""
        await self._up.wait()

    # -- the connection's life ----------------------------------------------------------
    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect; then keep a channel up until cancelled. The first connection's failure
        is raised (the mount cannot start); later ones are retried with growing pauses."""
        first = True
        pause = FIRST_RETRY_PAUSE
        while True:
            try:
                async with self._open_client() as client:
                    if not first and self.restore is not None:
                        await self.restore(client)
                    self._on_connect(client)
                    self.client = client
                    self._up.set()
                    if first:
                        first = False
                        task_status.started()
                    else:
                        self.reconnections += 1
                        log.warning("reconnected to the server (pid %d)", client.server_pid)
                    pause = FIRST_RETRY_PAUSE
                    await client.wait_closed()
                    log.warning("lost the server (pid %d)", client.server_pid)
            except (OSError, ChannelClosed, HandshakeRefused) as exc:
                if first:
                    raise
                log.info("reconnecting: %s", exc)
            except Exception:
                if first:
                    raise
                log.exception("reconnecting after an unexpected error")
            self._down(self.client)
            if self._recover is not None:
                await trio.to_thread.run_sync(self._recover)
            await trio.sleep(pause)
            pause = min(pause * 2, LAST_RETRY_PAUSE)

    def _down(self, client: AsyncChannelClient | None) -> None:
        if client is not None and self.client is client:
            self.client = None
            self._up = trio.Event()
            self._down_since = trio.current_time()
