"""Running the driver: connect to a server, mount, serve FUSE until unmounted or signalled.

`run_driver` is the whole life of a mount process. In `up` mode it also owns the server
process it started (a child of the driver), so that unmounting stops everything and no
process is left behind.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pyfuse3
import trio

from channel import limits
from channel.client import TrioClient
from channel.errors import HandshakeRefused
from channel.handshake import someone_listens
from channel.layout import Geometry
from channel.socket_transport import SocketTrioClient
from fusefront.control import ControlSocket
from fusefront.dirty_limits import lift_for_writeback
from fusefront.driver import INFO_XATTR, RingOperations
from fusefront.invalidation import keep_watching
from fusefront.link import ServerLink
from fusefront.options import MountOptions

log = logging.getLogger(__name__)

#: The driver channel: many FUSE requests in flight, each with a 1 MiB data buffer.
DRIVER_GEOMETRY = Geometry(
    sq_entries=256, cq_entries=256, slot_size=limits.DRIVER_SLOT_SIZE, buf_count=64
)
#: Seconds `up` waits for its server's socket, and `umount` for processes to exit.
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


class MountError(Exception):
    """A mount that cannot be made; the message is meant for the user."""


@dataclass
class DriverInfo:
    """What `ringfs stats`/`umount` learn from the mount (root xattr `user.ringfs.info`)."""

    driver_pid: int
    server_pid: int
    server_socket: str
    owns_server: bool
    #: where applications ask for a channel of their own (see fusefront.control)
    control_socket: str = ""
    #: the mount options in force (MountOptions.describe): cache mode, timeouts, transport...
    options: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__).encode()


def control_socket_path(server_socket: str) -> str:
    """The control socket of this driver: beside the server's, unique to this process."""
    return os.path.join(os.path.dirname(server_socket), f"ringfs-control-{os.getpid()}.sock")


def check_mountpoint(mountpoint: str) -> None:
    """Refuse a missing, non-directory or already mounted mount point with a clear message."""
    if not os.path.exists(mountpoint):
        raise MountError(f"mount point {mountpoint} does not exist")
    if not os.path.isdir(mountpoint):
        raise MountError(f"mount point {mountpoint} is not a directory")
    if os.path.ismount(mountpoint):
        raise MountError(f"mount point {mountpoint} is busy: something is already mounted there")


def wait_for_socket(path: str, deadline: float, proc: subprocess.Popen[bytes] | None) -> None:
    """Block until a server accepts connections on `path` (or its process dies)."""
    while True:
        if proc is not None and proc.poll() is not None:
            raise MountError(f"the server exited with status {proc.returncode} while starting")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(path)
                return
            except (FileNotFoundError, ConnectionRefusedError):
                pass
        if time.monotonic() > deadline:
            raise MountError(f"no server answered on {path} within {START_TIMEOUT:.0f} s")
        time.sleep(0.02)  # polling a socket that does not exist yet: nothing to wait on


def start_server(export: str, socket_path: str, debug: bool) -> subprocess.Popen[bytes]:
    """Start `python -m backend_server` for `export` (fusefront never imports it). Its log
    goes to SOCKET.log beside the socket, or to our stderr when debugging. A socket on which
    another server still answers is refused (waiting for "our" server there would mount
    that other one)."""
    if someone_listens(socket_path):
        raise MountError(f"a server is already listening on {socket_path}; choose another --socket")
    args = [sys.executable, "-m", "backend_server", export, "--socket", socket_path]
    if debug:
        args.append("--debug")
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL)
    else:
        with open(socket_path + ".log", "ab") as log_file:
            proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT
            )
    wait_for_socket(socket_path, time.monotonic() + START_TIMEOUT, proc)
    return proc


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.asynccontextmanager
async def open_client(
    socket_path: str, opts: MountOptions, secret: bytes | None = None
) -> AsyncIterator[Any]:
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

    def __init__(self, export: str, socket_path: str, debug: bool) -> None:
        self.export = export
        self.socket_path = socket_path
        self.debug = debug
        self.restarts = 0
        self.proc = start_server(export, socket_path, debug)

    def recover(self) -> None:
        """Start a new server if ours has exited (blocking: run it in a thread)."""
        if self.proc.poll() is None:
            return
        log.warning("the server (pid %d) exited with %s; restarting it",
                    self.proc.pid, self.proc.returncode)  # fmt: skip
        try:
            self.proc = start_server(self.export, self.socket_path, self.debug)
            self.restarts += 1
        except MountError as exc:
            log.error("could not restart the server: %s", exc)

    def stop(self) -> None:
        stop_server(self.proc)


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
    """Connect, mount, and run FUSE until unmounted or SIGTERM/SIGINT; always unmount.
    The link to the server survives its restarts (see fusefront.link)."""

    def connected(client: Any) -> None:
        info.server_pid = client.server_pid

    link = ServerLink(
        functools.partial(open_client, socket_path, opts, secret),
        recover=supervisor.recover if supervisor is not None else None,
        on_connect=connected,
    )
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(link.run)
            ops = RingOperations(
                link,
                opts.cache,
                writeback=opts.writeback,
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
            pyfuse3.init(ops, mountpoint, fuse_options)
            if opts.writeback:
                lift_for_writeback(mountpoint)
            if opts.transport == "shm":  # invalidations need the FUSE session
                nursery.start_soon(keep_watching, link)
            unmounted = False
            try:
                ready()
                nursery.start_soon(_terminate_on_signal)
                await pyfuse3.main()
                unmounted = True
            finally:
                nursery.cancel_scope.cancel()
                pyfuse3.close(unmount=not unmounted)
    except BaseExceptionGroup as group:
        # One failure (say, no server to connect to) reaches the caller as itself.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


async def _terminate_on_signal() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for _ in signals:
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
) -> None:
    """The mount process's whole life. With `export`, start (and finally stop) a server.
    `secret` is presented to a server started with --secret-file."""
    mountpoint = os.path.abspath(mountpoint)
    check_mountpoint(mountpoint)
    supervisor = Supervisor(export, socket_path, opts.debug) if export else None
    try:
        info = DriverInfo(
            os.getpid(),
            supervisor.proc.pid if supervisor else 0,
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
        except RuntimeError as exc:
            if "mount" in str(exc).lower() or "fuse" in str(exc).lower():
                raise MountError(f"cannot mount {mountpoint}: {exc}") from exc
            raise
    finally:
        if supervisor is not None:
            supervisor.stop()


def read_info(mountpoint: str) -> DriverInfo:
    """The driver's own description, read from the mount's root."""
    try:
        raw = os.getxattr(mountpoint, INFO_XATTR.decode())
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP, errno.ENOTCONN):
            raise MountError(f"{mountpoint} is not a live ringfs mount") from exc
        raise
    return DriverInfo(**json.loads(raw))
