"""Running the driver: connect to a server, mount, serve FUSE until unmounted or signalled.

`run_driver` is the whole life of a mount process. In `up` mode it also owns the server
process it started (a child of the driver, which stops when the driver is gone however it
went), so that unmounting stops everything and no process is left behind. The mount is
reported ready only once FUSE's INIT has succeeded, and every end of the session (unmount,
signal, INIT refused) leaves no mount behind.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import IO

import pyfuse3
import trio

from channel.protocol import limits
from channel.protocol.errors import HandshakeRefused
from channel.protocol.layout import Geometry
from channel.transport.calls import AsyncChannelClient
from channel.transport.handshake_io import BUSY_LISTENER, listener_pid
from channel.transport.shm_client import TrioClient
from channel.transport.socket_client import SocketTrioClient
from fusefront.control import ControlSocket
from fusefront.dirty_limits import lift_for_writeback
from fusefront.driver import RingOperations
from fusefront.invalidation import keep_watching
from fusefront.link import ServerLink
from fusefront.mountinfo import (
    START_TIMEOUT,
    STOP_TIMEOUT,
    DriverInfo,
    InfoFile,
    MountError,
    dead_mount_message,
    is_dead,
    is_ringfs_type,
    mount_type,
    read_info,
)
from fusefront.options import MountOptions

__all__ = [
    "START_TIMEOUT",
    "STOP_TIMEOUT",
    "DriverInfo",
    "MountError",
    "read_info",
    "run_driver",
    "wait_for_socket",
]

log = logging.getLogger(__name__)
server_log = logging.getLogger("ringfs.server")

#: The driver channel: many FUSE requests in flight, each with a 1 MiB data buffer.
DRIVER_GEOMETRY = Geometry(
    sq_entries=256, cq_entries=256, slot_size=limits.DRIVER_SLOT_SIZE, buf_count=64
)


def control_socket_path(server_socket: str) -> str:
    """The control socket of this driver: beside the server's, unique to this process."""
    return os.path.join(os.path.dirname(server_socket), f"ringfs-control-{os.getpid()}.sock")


def check_mountpoint(mountpoint: str) -> None:
    """Refuse a missing, non-directory or already mounted mount point with a clear message
    (a dead ringfs mount is named as such: it cannot even be stat'ed)."""
    kind = mount_type(mountpoint)
    if is_ringfs_type(kind) and is_dead(mountpoint):
        raise MountError(dead_mount_message(mountpoint))
    if kind is not None:
        raise MountError(f"mount point {mountpoint} is busy: {kind} is already mounted there")
    if not os.path.exists(mountpoint):
        raise MountError(f"mount point {mountpoint} does not exist")
    if not os.path.isdir(mountpoint):
        raise MountError(f"mount point {mountpoint} is not a directory")


def check_socket_free(path: str) -> None:
    """`up` starts its own server: refuse a socket path another live server answers on
    (say, one orphaned by an older ringfs), instead of mounting that one by mistake."""
    pid = listener_pid(path)
    if pid is not None:
        who = "a busy server" if pid == BUSY_LISTENER else f"a server (pid {pid})"
        raise MountError(f"{who} is already listening on {path}: stop it, or pick another --socket")


def wait_for_socket(path: str, deadline: float, proc: subprocess.Popen[bytes] | None) -> None:
    """Block until a server accepts connections on `path` (or its process dies). Given our
    server's `proc`, only that process counts: not whoever else answers on the path."""
    while True:
        if proc is not None and proc.poll() is not None:
            raise MountError(f"the server exited with status {proc.returncode} while starting")
        pid = listener_pid(path)
        if pid is not None and (proc is None or pid == proc.pid):
            return
        if time.monotonic() > deadline:
            raise MountError(f"no server answered on {path} within {START_TIMEOUT:.0f} s")
        time.sleep(0.02)  # polling a socket that does not exist yet: nothing to wait on


def _forward_log(stream: IO[bytes]) -> None:
    """Copy the server's log lines into ours (one log per mount, rotated in one place)."""
    for raw in stream:
        line = raw.decode(errors="replace").rstrip()
        words = line.split(maxsplit=4)
        if len(words) == 5 and words[2].startswith("ringfs-server["):
            level = logging.getLevelNamesMapping().get(words[3], logging.WARNING)
            line = f"{words[2]} {words[4]}"  # its timestamp: ours is on the record already
        else:
            level = logging.ERROR  # a traceback, or anything else it did not log itself
        server_log.log(level, "%s", line)
    stream.close()


class ServerProcess:
    """`python -m backend_server` for an export (fusefront never imports it).

    Its stdin is a pipe we never write: when we exit, however we exit (SIGKILL too), the
    server reads end-of-file and stops, so no server outlives its mount. Its log comes to
    us through a pipe and is read by one thread per server process, joined when it ends.
    """

    def __init__(self, export: str, socket_path: str, log_level: int) -> None:
        level = logging.getLevelName(log_level).lower()
        args = [sys.executable, "-m", "backend_server", export, "--socket", socket_path,
                "--exit-with-stdin", "--log-level", level]  # fmt: skip
        # A process group of its own: ^C at a terminal signals the whole foreground group,
        # and the server must not die under the driver while the driver unmounts (it would
        # restart it); the driver stops it after the unmount.
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            process_group=0,
        )
        assert self.proc.stdout is not None
        self.reader = threading.Thread(
            target=_forward_log, args=(self.proc.stdout,), name="server-log", daemon=True
        )
        self.reader.start()
        try:
            wait_for_socket(socket_path, time.monotonic() + START_TIMEOUT, self.proc)
        except MountError:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.reader.join(STOP_TIMEOUT)


@contextlib.asynccontextmanager
async def open_client(
    socket_path: str, opts: MountOptions, secret: bytes | None = None
) -> AsyncIterator[AsyncChannelClient]:
    """The driver's channel. A read-only mount says so: the server then refuses changes on
    it and on every application channel this driver forwards (EROFS)."""
    readonly = opts.readonly
    if opts.transport == "socket":
        async with SocketTrioClient.open(
            socket_path, role="driver", secret=secret, readonly=readonly
        ) as client:
            yield client
    else:
        async with TrioClient.open(
            socket_path, role="driver", geometry=DRIVER_GEOMETRY, secret=secret, readonly=readonly
        ) as c:
            yield c


class Supervisor:
    """The server process `up` started: restarted when it dies, stopped at the end."""

    def __init__(self, export: str, socket_path: str, log_level: int) -> None:
        self.export = export
        self.socket_path = socket_path
        self.log_level = log_level
        self.restarts = 0
        self.server = ServerProcess(export, socket_path, log_level)

    def recover(self) -> None:
        """Start a new server if ours has exited (blocking: run it in a thread)."""
        proc = self.server.proc
        if proc.poll() is None:
            return
        log.warning("the server (pid %d) exited with %s; restarting it", proc.pid, proc.returncode)
        self.server.stop()  # reaps it and joins its log reader
        try:
            self.server = ServerProcess(self.export, self.socket_path, self.log_level)
            self.restarts += 1
        except MountError as exc:
            log.error("could not restart the server: %s", exc)

    def stop(self) -> None:
        self.server.stop()


async def _announce_when_ready(mountpoint: str, ready: Callable[[], None], state: _State) -> None:
    """Call `ready` once the kernel has finished FUSE's INIT with us: the first request
    after it gets an answer. libfuse can still refuse the session at INIT (say, `max_read`
    it cannot honour) after the kernel mount exists, so the mount is not ready before."""

    def probe() -> bool:
        try:
            os.statvfs(mountpoint)  # always a request (and no xattr, which noxattr refuses)
        except OSError as exc:
            # ECONNREFUSED: INIT failed; ENOTCONN: the session is already gone.
            return exc.errno not in (errno.ECONNREFUSED, errno.ENOTCONN)
        return True

    if await trio.to_thread.run_sync(probe, abandon_on_cancel=True):
        state.ready = True
        ready()


@dataclass
class _State:
    ready: bool = False


def mount_source(socket_path: str, supervisor: Supervisor | None) -> str:
    """The default fsname: the export when we serve it, else the server's socket."""
    return supervisor.export if supervisor is not None else socket_path


async def serve_mount(
    socket_path: str,
    mountpoint: str,
    opts: MountOptions,
    info: DriverInfo,
    ready: Callable[[], None],
    supervisor: Supervisor | None = None,
    secret: bytes | None = None,
) -> None:
    """Connect, mount, and run FUSE until unmounted or SIGTERM/SIGINT/SIGHUP; always unmount.
    The link to the server survives its restarts (see fusefront.link)."""

    published = InfoFile(info)

    def connected(client: AsyncChannelClient) -> None:
        info.server_pid = client.server_pid
        published.update()  # a restarted server has a new pid: `ringfs umount` waits on it

    link = ServerLink(
        functools.partial(open_client, socket_path, opts, secret),
        recover=supervisor.recover if supervisor is not None else None,
        on_connect=connected,
    )
    state = _State()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(link.run)
            ops = RingOperations(
                link,
                opts.cache,
                writeback=opts.writeback,
                xattr=not opts.noxattr,
                info=info.to_json,
                presentation=opts.presentation,
            )
            link.restore = ops.restore
            if opts.transport == "shm":
                control = ControlSocket(
                    control_socket_path(socket_path),
                    socket_path,
                    secret=secret,
                    readonly=opts.readonly,
                )
                await nursery.start(control.serve)
                info.control_socket = control.path
            fuse_options = opts.fuse_options(mount_source(socket_path, supervisor))
            if opts.debug:
                fuse_options.add("debug")
            try:
                pyfuse3.init(ops, mountpoint, fuse_options)
            except RuntimeError as exc:  # libfuse refused the mount: pyfuse3 says which call
                raise MountError(f"cannot mount {mountpoint}: {exc}") from exc
            try:
                try:  # before ready: discovery works once `up` returns
                    published.publish(mountpoint)
                except (OSError, MountError) as exc:
                    log.warning("cannot publish the mount's description: %s", exc)
                if opts.writeback:
                    lift_for_writeback(mountpoint)
                if opts.transport == "shm":  # invalidations need the FUSE session
                    external = bool(opts.cache.entry_timeout or opts.cache.attr_timeout)
                    nursery.start_soon(keep_watching, link, ops.forget_cached, external)
                nursery.start_soon(_announce_when_ready, mountpoint, ready, state)
                nursery.start_soon(_terminate_on_signal)
                await pyfuse3.main()
            finally:
                nursery.cancel_scope.cancel()
                published.remove()
                # Whatever ended the session (an unmount, a signal, libfuse refusing INIT),
                # no mount is left behind: libfuse skips the unmount when the kernel has
                # already dropped it (the device then polls POLLERR).
                pyfuse3.close(unmount=True)
    except BaseExceptionGroup as group:
        # One failure (say, no server to connect to) reaches the caller as itself.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    if not state.ready:
        raise MountError(
            f"cannot mount {mountpoint}: the FUSE session ended during initialisation "
            "(libfuse's reason is above)"
        )


async def _terminate_on_signal() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("signal %d: unmounting", signum)
            pyfuse3.terminate()
            return


def run_driver(
    mountpoint: str,
    opts: MountOptions,
    *,
    socket_path: str,
    export: str | None = None,
    ready: Callable[[], None] = lambda: None,
    secret: bytes | None = None,
    log_level: int = logging.WARNING,
) -> None:
    """The mount process's whole life. With `export`, start (and finally stop) a server.
    `secret` is presented to a server started with --secret-file. Returns after a clean
    unmount (by umount or a signal); raises MountError otherwise."""
    mountpoint = os.path.abspath(mountpoint)
    check_mountpoint(mountpoint)
    supervisor = None
    if export:
        check_socket_free(socket_path)
        supervisor = Supervisor(export, socket_path, log_level)
    try:
        info = DriverInfo(
            os.getpid(),
            supervisor.server.proc.pid if supervisor else 0,
            socket_path,
            bool(supervisor),
            options=opts.describe(mount_source(socket_path, supervisor)),
        )
        try:
            trio.run(serve_mount, socket_path, mountpoint, opts, info, ready, supervisor, secret)
        except HandshakeRefused as exc:
            reason = exc.strerror or str(exc)
            raise MountError(f"the server on {socket_path} refused the mount: {reason}") from exc
        except FileNotFoundError as exc:
            raise MountError(f"no server socket at {socket_path}") from exc
        except ConnectionRefusedError as exc:
            raise MountError(f"no server listening on {socket_path}") from exc
    finally:
        if supervisor is not None:
            supervisor.stop()
