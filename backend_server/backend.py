"""The `Backend`: the filesystem server's operations side, as the channel poller sees it.

    backend = Backend("/srv/export")
    async with trio.open_nursery() as nursery:
        await nursery.start(backend.run)      # owns the worker tasks
        ... poller calls backend.handler(channel, command) for every command ...
    backend.close()

`handler(channel, cmd)` is a plain synchronous function called in the trio thread. A fast
operation runs inline and completes before `handler` returns; a slow one (see
`dispatch.OPS`) is handed to a task in the Backend's nursery, which runs it in a worker
thread (bounded by a CapacityLimiter) and completes it from the trio thread later. Nothing
raises out of `handler`: every failure is a completion with a negative errno (ENOSYS for an
unknown opcode, EINVAL for a malformed body, EIO, logged, for anything unexpected).

Identity: on a driver channel each command's header carries the FUSE request's uid, gid, pid
and umask, and the driver is trusted to forward them (only if its peer is root or the server's
own user; see `_trusted_driver`); supplementary groups come from
/proc/<pid>/status (cached, see `identity`). On an application channel the identity is the
one the kernel reported at handshake (`channel.creds`); header uid/gid/pid are ignored, the
header umask is honoured (it can only restrict the caller's own new files).

Checks that apply to many operations are made in one place, `_check_admissible`, before
an operation runs, from the opcodes' own flags (`channel.protocol.opcodes`): a channel of a
read-only mount gets EROFS for every command that `mutates`; an application channel gets EMFILE for
one that opens a handle past its channel's or its user's limit (`handles.HandleQuota`), and
ENFILE for one that may hold another descriptor once the server is down to the reserve it
keeps for the mount's own channel (`channel.transport.descriptors`).

Channel state is released by `channel_closed(channel)`, which the Backend also registers in
`channel.on_close` on first contact; calling it twice is harmless.

The server applies each caller's umask itself, so the process umask is set to 0 here.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os

import trio

from backend_server.coherence import Coherence, Notice
from backend_server.context import Reply, Request
from backend_server.dispatch import OPS, OpSpec
from backend_server.errors import fail
from backend_server.handles import HandleQuota
from backend_server.identity import NO_CALLER, Identity, Switcher
from backend_server.inodes import InodeTable
from backend_server.session import Session
from backend_server.watcher import LOOKS_UP, SELF_NOTIFYING, ExportWatcher
from channel.protocol.codec import Command, pack_body
from channel.protocol.opcodes import HOLDS_DESCRIPTOR, OPENS_HANDLE, ROOT_INO, Op, mutates
from channel.transport.descriptors import DescriptorBudget
from channel.transport.server_api import ServedChannel

log = logging.getLogger(__name__)

#: Worker threads for slow operations (fsync, large I/O, big directories).
DEFAULT_THREADS = 16


def status_of(exc: BaseException) -> int:
    """The completion status for an exception an operation raised."""
    if isinstance(exc, OSError) and exc.errno:
        return -exc.errno
    if isinstance(exc, (ValueError, TypeError, OverflowError, KeyError, IndexError)):
        return -errno.EINVAL  # a body whose shape or values no system call accepts
    log.exception("unexpected failure in an operation", exc_info=exc)
    return -errno.EIO


class Backend:
    def __init__(
        self,
        export_root: str,
        *,
        threads: int = DEFAULT_THREADS,
        budget: DescriptorBudget | None = None,
    ) -> None:
        os.umask(0)
        self.table = InodeTable(export_root)
        self.budget = budget
        self.handles = HandleQuota(budget)
        self.identity = Switcher()
        self._sessions: dict[int, Session] = {}
        self._limiter = trio.CapacityLimiter(threads)
        self.coherence = Coherence()
        #: changes made in the export behind the server's back, reported like coherence's
        self.watcher = ExportWatcher(self.table, self._changed_behind)
        self._watching = trio.CancelScope()
        #: commands handed to worker threads and not completed yet
        self.threaded_in_flight = 0
        self._nursery: trio.Nursery | None = None
        self._stop: trio.CancelScope | None = None
        self.closed = False

    # -- lifetime -----------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the worker tasks until `stop()`/`close()` or cancellation; on the way out,
        wait for the slow operations in flight (worker threads cannot be abandoned)."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._stop = trio.CancelScope()
                nursery.start_soon(self._watch_export)
                task_status.started()
                with self._stop:
                    await trio.sleep_forever()
        finally:
            self._nursery = None

    async def _watch_export(self) -> None:
        with self._watching:
            await self.watcher.run()

    def _changed_behind(self, notices: list[Notice]) -> None:
        """The export changed behind the server's back: drivers forget it; nobody waits."""
        self.coherence.changed(notices, lambda: None, external=True)

    def stop(self) -> None:
        """Let `run` return once the slow operations in flight have completed."""
        self._watching.cancel()
        if self._stop is not None:
            self._stop.cancel()

    def close(self) -> None:
        """Release every channel's state and every descriptor; later commands get ESHUTDOWN.
        Handles pinned by operations still in flight close when those finish."""
        if self.closed:
            return
        self.closed = True
        self.stop()
        for session in list(self._sessions.values()):
            self._release(session)
        self._sessions.clear()
        self.watcher.close()
        self.table.close()

    # -- channels -----------------------------------------------------------------------
    def channel_closed(self, channel: ServedChannel) -> None:
        """Release everything `channel` held: its lookups and its open handles."""
        self._forget_channel(id(channel))

    def _forget_channel(self, key: int) -> None:
        self.coherence.gone(key)
        session = self._sessions.pop(key, None)
        if session is not None:
            self._release(session)

    def _release(self, session: Session) -> None:
        session.closed = True
        handles, session.handles = session.handles, {}
        for handle in handles.values():
            handle.close()
        self.table.release_session(session)

    def _session(self, channel: ServedChannel) -> Session:
        session = self._sessions.get(id(channel))
        if session is None:
            app_identity = None
            if not self._trusted_driver(channel):
                creds = channel.creds
                app_identity = self.identity.caller(creds.uid, creds.gid, tuple(creds.groups))
            key = id(channel)
            session = Session(channel, app_identity, self.handles, readonly=channel.readonly)
            self._sessions[key] = session
            # Capture the key, not the channel: a closure over the channel stored in the
            # channel would be a reference cycle, keeping its region's views (and the mmap's
            # descriptor) alive until the garbage collector runs.
            channel.on_close.append(lambda: self._forget_channel(key))
        return session

    def _trusted_driver(self, channel: ServedChannel) -> bool:
        """Header identities are believed only from a driver channel whose peer is root or the
        server's own user: anyone else claiming the driver role acts as itself. (The accept
        loop should refuse such a hello outright; this keeps the operations layer safe even
        if it does not.)"""
        if channel.role != "driver":
            return False
        return int(channel.creds.uid) in (0, self.identity.server.uid)

    def _caller(self, session: Session, cmd: Command) -> Identity:
        if session.app_identity is not None:
            return session.app_identity
        groups = self.identity.groups_of(cmd.pid, cmd.uid, cmd.gid)
        return self.identity.caller(cmd.uid, cmd.gid, groups)

    # -- commands -----------------------------------------------------------------------
    def handler(self, channel: ServedChannel, cmd: Command) -> None:
        """Execute or start `cmd`; see the module docstring. Never raises."""
        try:
            spec = OPS.get(cmd.opcode)
            if spec is None:
                if cmd.opcode == Op.WATCH and not self.closed:
                    self._watch(channel, cmd)
                    return
                raise fail(errno.ENOSYS)
            if self.closed:
                raise fail(errno.ESHUTDOWN)
            session = self._sessions.get(id(channel)) or self._session(channel)
            self._check_admissible(session, cmd)
            acts = spec.identity and not spec.opener
            caller = self._caller(session, cmd) if acts else NO_CALLER
            req = Request(self.table, session, channel, cmd, caller, self.identity)
            if spec.handle:
                req.handle = session.handle(cmd.fh)
                if spec.opener:
                    req.caller = req.handle.opener or self.identity.server
        except BaseException as exc:
            self._complete(channel, cmd.tag, status_of(exc), None)
            if not isinstance(exc, Exception):
                raise
            return
        try:
            threaded, nursery = spec.threaded, self._nursery
            if threaded is not None and nursery is not None and threaded(req):
                self._start_threaded(nursery, spec, req)
                return
            if cmd.opcode in SELF_NOTIFYING and self.watcher.watching:
                with self.watcher.around():  # its own events are not reported
                    status, reply = self._execute(spec, req)
            else:
                status, reply = self._execute(spec, req)
        except Exception as exc:
            status, reply = status_of(exc), None
        if spec.changes is None and cmd.opcode not in LOOKS_UP:
            # nothing any mount caches, no directory to start watching: complete at once
            self._complete(channel, cmd.tag, status, reply)
        else:
            self._finish(spec, req, status, reply)

    def _check_admissible(self, session: Session, cmd: Command) -> None:
        """The checks every operation shares (see the module docstring); raises the errno."""
        opcode = cmd.opcode
        if session.readonly and mutates(opcode, cmd.body):
            raise fail(errno.EROFS)
        identity = session.app_identity
        if identity is None or opcode not in HOLDS_DESCRIPTOR:
            return  # the driver's channel is never refused: the reserve is for it
        if opcode in OPENS_HANDLE:
            refusal = self.handles.refusal(len(session.handles), identity.uid)
            if refusal is not None:
                raise refusal
        if self.budget is not None and not self.budget.room(1):
            raise fail(errno.ENFILE, "the server keeps its last descriptors for the mount")

    def _start_threaded(self, nursery: trio.Nursery, spec: OpSpec, req: Request) -> None:
        """Hand `req` to a worker thread. Only such a command pins its handle: an inline one
        runs to its end in the trio thread, where nothing can close the handle meanwhile."""
        handle = req.handle
        if handle is not None:
            handle.pin()
        try:
            req.inline = False
            nursery.start_soon(self._run_threaded, spec, req)
        except BaseException:
            if handle is not None:
                handle.unpin()
            raise
        self.threaded_in_flight += 1

    def _finish(self, spec: OpSpec, req: Request, status: int, reply: Reply | None) -> None:
        """Complete `req`; an application's change waits until the mounts that cache what
        it changed have forgotten it (see coherence)."""
        if (
            status >= 0
            and req.cmd.opcode in LOOKS_UP
            and self.coherence.wants_external(id(req.channel))
        ):
            self._watch_looked_up(req)
        if status >= 0 and spec.changes is not None and req.session.app_identity is not None:
            publish = functools.partial(self._complete, req.channel, req.cmd.tag, status, reply)
            self.coherence.changed(spec.changes(req), publish)
        else:
            self._complete(req.channel, req.cmd.tag, status, reply)

    def _watch_looked_up(self, req: Request) -> None:
        """The driver's kernel may now cache names in these directories: watch them."""
        for number in LOOKS_UP[req.cmd.opcode](req):
            if not self.watcher.watches(number):
                with contextlib.suppress(OSError):
                    self.watcher.watch(self.table.get(req.session, number))

    def _watch(self, channel: ServedChannel, cmd: Command) -> None:
        """WATCH: the driver asks to hear of application changes to what it holds, and with
        [true] of changes made in the export behind the server's back (watcher)."""
        session = self._session(channel)
        if session.app_identity is not None:
            self._complete(channel, cmd.tag, -errno.EPERM, None)
            return
        lookups = session.lookups

        def holds(ino: int) -> bool:
            return ino == ROOT_INO or ino in lookups

        def answer(notices: list[Notice]) -> None:
            self._complete(channel, cmd.tag, 0, Reply(pack_body(notices)))

        body = cmd.body
        external = isinstance(body, list) and bool(body) and body[0] is True
        self.coherence.watch(id(channel), holds, answer, external)
        if external:
            self.watcher.watch(self.table.root)  # the kernel holds it from the mount on

    def _execute(self, spec: OpSpec, req: Request) -> tuple[int, Reply | None]:
        """Run one operation in this thread, as its caller when it needs one."""
        switcher = self.identity
        try:
            if not spec.identity:
                return 0, spec.run(req)
            switcher.permit(req.caller)
            switcher.become(req.caller)
            try:
                return 0, spec.run(req)
            finally:
                switcher.restore()
        except Exception as exc:
            return status_of(exc), None
        finally:
            if req.pinned:
                req.done()  # unpin its inodes: their descriptors may be evicted again

    def threads_busy(self) -> bool:
        """Are worker threads running commands (whose results trio must pick up soon)?"""
        return self.threaded_in_flight > 0

    async def _run_threaded(self, spec: OpSpec, req: Request) -> None:
        try:
            # Not abandonable: once the thread runs, cancellation waits for its result. Only
            # the wait for the limiter (or the start) can be cancelled, before the operation
            # ran; the client still gets an answer then.
            status, reply = await trio.to_thread.run_sync(
                self._execute, spec, req, limiter=self._limiter
            )
        except trio.Cancelled:
            if not req.session.closed:
                self._complete(req.channel, req.cmd.tag, -errno.ESHUTDOWN, None)
            raise
        finally:
            self.threaded_in_flight -= 1
            if req.handle is not None:
                req.handle.unpin()
        if req.session.closed:
            return  # the channel is gone; nobody is waiting for this completion
        self._finish(spec, req, status, reply)

    @staticmethod
    def _complete(channel: ServedChannel, tag: int, status: int, reply: Reply | None) -> None:
        try:
            if reply is None:
                channel.complete(tag, status)
            else:
                channel.complete(
                    tag, status, reply.body, data_len=reply.data_len, value=reply.value
                )
        except Exception:
            log.warning("could not complete tag %d on a channel", tag, exc_info=True)
