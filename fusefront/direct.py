"""Application channels: file operations on a ringfs mount without a system call each.

    with DirectClient.connect("/mnt/ringfs") as fs:
        fd = fs.open("data/log", os.O_RDWR | os.O_CREAT)
        fs.pwrite(fd, b"hello", 0)
        buf = bytearray(4096)
        n = fs.readinto(fd, buf, offset=0)       # straight from shared memory into buf
        fs.close(fd)

`DirectClient.connect(mountpoint)` finds the driver's control socket from the mount point
alone (the root's `user.ringfs.info` attribute), creates a shared-memory region and hands it
to the driver, which forwards it with this process's kernel-reported identity to the server;
the server caches that identity under the channel's token and checks every command against
it. `AsyncDirectClient` is the same for trio (`async with AsyncDirectClient.connect(...)`).

Paths are relative to the mount (a leading `/` means the mount's root). They are normalised
lexically (`a/./b/../c` is `a/c`), may not climb above the mount (EXDEV), and are resolved by
the server in one command beneath the export, never following a symbolic link: a symlink in
the middle of a path is ELOOP (this API names files, it does not chase links). Errors are
OSError with the errno the `os` module would raise; when the channel ends (the mount was
unmounted, the server went away) every call raises OSError(ENOTCONN). File descriptors
returned by `open` are this channel's own numbers, valid only with this client.

The operations are written once, as plans (generators that yield the commands to send and
receive their replies, with no I/O of their own); `DirectClient` runs them on a blocking
channel client and `AsyncDirectClient` on a trio one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import AsyncIterator, Callable, Coroutine, Generator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Concatenate, ParamSpec, Self, TypeVar

from channel.protocol.codec import unpack_body
from channel.protocol.errors import ChannelClosed
from channel.protocol.layout import Geometry
from channel.protocol.opcodes import READDIR_PAGE, ROOT_INO, Op, readdir_page_ends
from channel.transport.calls import Reply
from channel.transport.shm_client import BlockingClient, TrioClient
from fusefront import commands
from fusefront.mountinfo import INFO_XATTR, published_info

#: An application channel: a few commands in flight, four 1 MiB data buffers.
DIRECT_GEOMETRY = Geometry(sq_entries=32, cq_entries=32, slot_size=8192, buf_count=4)
#: Lookups given back in one BATCH_FORGET once this many are owed.
FORGET_BATCH = 64


@dataclass(frozen=True, slots=True)
class Call:
    """One command a plan wants sent; `dest` asks for the reply data to land there."""

    opcode: int
    body: Any = None
    fields: dict[str, Any] = field(default_factory=dict)
    dest: memoryview | None = None


Plan = Generator[Call, Reply, Any]
R = TypeVar("R")
P = ParamSpec("P")


def components(path: str | bytes | os.PathLike[str]) -> list[bytes]:
    """The normalised components of a mount-relative path; EXDEV if it climbs out."""
    parts: list[bytes] = []
    for part in os.fsencode(path).split(b"/"):
        if part in (b"", b"."):
            continue
        if part == b"..":
            if not parts:
                raise OSError(errno.EXDEV, "path leaves the mount", os.fsdecode(path))
            parts.pop()
        else:
            parts.append(part)
    return parts


def _check(reply: Reply, path: Any = None) -> Reply:
    if reply.status < 0:
        raise OSError(-reply.status, os.strerror(-reply.status), path)
    return reply


def stat_result(attr: list[int]) -> os.stat_result:
    """An os.stat_result from an `attr` list (channel.protocol.opcodes.ATTR_FIELDS)."""
    ino, mode, nlink, uid, gid, _rdev, size, _blocks, _blksize, atime, mtime, ctime = attr
    return os.stat_result(
        (mode, ino, 0, nlink, uid, gid, size, atime / 1e9, mtime / 1e9, ctime / 1e9)
    )


@dataclass(slots=True)
class _File:
    ino: int
    position: int = 0
    append: bool = False


class Plans:
    """Every operation as a plan; the channel-side state (open files, lookups owed)."""

    def __init__(self) -> None:
        self.files: dict[int, _File] = {}
        self.owed: list[list[int]] = []  # [ino, count] lookups to give back
        self.umask = os.umask(0)
        os.umask(self.umask)

    # -- names --------------------------------------------------------------------------
    def _resolve(self, parts: list[bytes], path: Any) -> Generator[Call, Reply, int]:
        """Look `parts` up with one lookup counted (owed back later); its inode number."""
        reply = _check(
            (yield Call(Op.RESOLVE, commands.resolve(parts, True), {"ino": ROOT_INO})), path
        )
        return int(reply.body[0][0])

    def _parent(self, path: Any) -> Generator[Call, Reply, tuple[int, bytes]]:
        parts = components(path)
        if not parts:
            raise OSError(errno.EBUSY, "the mount's root", path)
        parent = yield from self._resolve(parts[:-1], path) if parts[:-1] else _root()
        return parent, parts[-1]

    def _give_back(self, ino: int, count: int = 1) -> Generator[Call, Reply, None]:
        if ino != ROOT_INO:
            self.owed.append([ino, count])
        if len(self.owed) >= FORGET_BATCH:
            yield from self.flush_forgets()

    def flush_forgets(self) -> Generator[Call, Reply, None]:
        if self.owed:
            owed, self.owed = self.owed, []
            yield Call(Op.BATCH_FORGET, owed)

    def stat(self, path: Any) -> Generator[Call, Reply, os.stat_result]:
        body = commands.resolve(components(path), False)
        reply = _check((yield Call(Op.RESOLVE, body, {"ino": ROOT_INO})), path)
        return stat_result(reply.body)

    def listdir(self, path: Any = "") -> Generator[Call, Reply, list[str]]:
        parts = components(path)
        ino = (yield from self._resolve(parts, path)) if parts else ROOT_INO
        try:
            fh = _check((yield Call(Op.OPENDIR, None, {"ino": ino})), path).value
            names: list[str] = []
            offset = 0
            while True:
                page = {"fh": fh, "offset": offset, "read_size": READDIR_PAGE}
                reply = _check((yield Call(Op.READDIR, None, page)), path)
                entries = unpack_body(reply.data) if reply.data else []
                if not entries:
                    break
                for name, attr, next_offset in entries:
                    names.append(os.fsdecode(name))
                    offset = next_offset
                    yield from self._give_back(attr[0])  # READDIR counted a lookup each
                if readdir_page_ends(reply.body):
                    break  # the server says this page ends the listing
            yield Call(Op.RELEASEDIR, None, {"fh": fh})
            return names
        finally:
            if parts:
                yield from self._give_back(ino)

    def mkdir(self, path: Any, mode: int = 0o777) -> Generator[Call, Reply, None]:
        parent, name = yield from self._parent(path)
        try:
            body = commands.mkdir(name, mode)
            reply = yield Call(Op.MKDIR, body, {"ino": parent, "umask": self.umask})
            yield from self._give_back(_check(reply, path).body[0][0])
        finally:
            yield from self._give_back(parent)

    def _remove(self, opcode: int, path: Any) -> Generator[Call, Reply, None]:
        parent, name = yield from self._parent(path)
        try:
            _check((yield Call(opcode, commands.named(name), {"ino": parent})), path)
        finally:
            yield from self._give_back(parent)

    def unlink(self, path: Any) -> Generator[Call, Reply, None]:
        return (yield from self._remove(Op.UNLINK, path))

    def rmdir(self, path: Any) -> Generator[Call, Reply, None]:
        return (yield from self._remove(Op.RMDIR, path))

    def rename(self, src: Any, dst: Any) -> Generator[Call, Reply, None]:
        parent, name = yield from self._parent(src)
        try:
            new_parent, new_name = yield from self._parent(dst)
            try:
                body = commands.rename(name, new_parent, new_name)
                _check((yield Call(Op.RENAME, body, {"ino": parent})), src)
            finally:
                yield from self._give_back(new_parent)
        finally:
            yield from self._give_back(parent)

    # -- files --------------------------------------------------------------------------
    def open(
        self, path: Any, flags: int = os.O_RDONLY, mode: int = 0o666
    ) -> Generator[Call, Reply, int]:
        if flags & os.O_CREAT:
            parent, name = yield from self._parent(path)
            try:
                fields = {"ino": parent, "umask": self.umask}
                body = commands.create(name, mode, flags)
                reply = _check((yield Call(Op.CREATE, body, fields)), path)
            finally:
                yield from self._give_back(parent)
            ino = reply.body[0][0]
        else:
            parts = components(path)
            ino = (yield from self._resolve(parts, path)) if parts else ROOT_INO
            try:
                reply = _check(
                    (yield Call(Op.OPEN, commands.open_flags(flags), {"ino": ino})), path
                )
            except BaseException:
                yield from self._give_back(ino)
                raise
        self.files[reply.value] = _File(ino, append=bool(flags & os.O_APPEND))
        return reply.value

    def _file(self, fd: int) -> _File:
        file = self.files.get(fd)
        if file is None:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        return file

    def close(self, fd: int) -> Generator[Call, Reply, None]:
        file = self.files.pop(fd, None)
        if file is None:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        try:
            _check((yield Call(Op.RELEASE, None, {"fh": fd})))
        finally:
            yield from self._give_back(file.ino)

    def pread(self, fd: int, size: int, offset: int) -> Generator[Call, Reply, bytes]:
        self._file(fd)
        reply = _check((yield Call(Op.READ, None,
                                   {"fh": fd, "offset": offset, "read_size": size})))  # fmt: skip
        return reply.data or b""

    def readinto(
        self, fd: int, buffer: Any, offset: int | None = None
    ) -> Generator[Call, Reply, int]:
        file = self._file(fd)
        at = file.position if offset is None else offset
        dest = memoryview(buffer).cast("B")
        reply = _check((yield Call(Op.READ, None, {"fh": fd, "offset": at}, dest)))
        if offset is None:
            file.position += reply.data_len
        return reply.data_len

    def read(self, fd: int, size: int) -> Generator[Call, Reply, bytes]:
        file = self._file(fd)
        data: bytes = yield from self.pread(fd, size, file.position)
        file.position += len(data)
        return data

    def pwrite(self, fd: int, data: Any, offset: int) -> Generator[Call, Reply, int]:
        self._file(fd)
        reply = _check((yield Call(Op.WRITE, None, {"fh": fd, "offset": offset, "data": data})))
        return reply.value

    def write(self, fd: int, data: Any) -> Generator[Call, Reply, int]:
        file = self._file(fd)
        if file.append:
            size = stat_result(_check((yield Call(Op.GETATTR, None, {"ino": file.ino}))).body)
            file.position = size.st_size
        written: int = yield from self.pwrite(fd, data, file.position)
        file.position += written
        return written

    def fsync(self, fd: int) -> Generator[Call, Reply, None]:
        self._file(fd)
        _check((yield Call(Op.FSYNC, None, {"fh": fd})))

    def release_all(self) -> Generator[Call, Reply, None]:
        for fd in list(self.files):
            yield from self.close(fd)
        yield from self.flush_forgets()


def _root() -> Generator[Call, Reply, int]:
    """A plan that sends nothing: the root needs no lookup."""
    yield from ()
    return ROOT_INO


def _ended(exc: ChannelClosed) -> OSError:
    """The channel is over (the mount went away, or the server): ENOTCONN, as on a mount."""
    return OSError(errno.ENOTCONN, f"the ringfs channel ended: {exc}")


def control_socket(mountpoint: str | os.PathLike[str]) -> str:
    """The driver's control socket: from the description the driver published, keyed by
    the mount's device (no xattr round trip; see fusefront.mountinfo), else from the
    mount root's `user.ringfs.info` (a mount whose description cannot be read here)."""
    where = f"{os.fspath(mountpoint)} (a ringfs mount? mounted allow_other for others?)"
    try:
        published = published_info(mountpoint)
        info = published.__dict__ if published else json.loads(os.getxattr(mountpoint, INFO_XATTR))
    except OSError as exc:
        raise OSError(exc.errno, f"{exc.strerror}: finding the driver of {where}") from None
    path = info.get("control_socket") if isinstance(info, dict) else None
    if not path:
        raise OSError(errno.EOPNOTSUPP, "this mount offers no application channels")
    return str(path)


def _blocking(
    plan: Callable[Concatenate[Plans, P], Generator[Call, Reply, R]],
) -> Callable[Concatenate[DirectClient, P], R]:
    """`DirectClient`'s method for the plan `plan`: the same signature, run to its result.
    Generated rather than written out (fifteen one-line forwarders per client), with the
    plan's parameters and result type carried over by ParamSpec, so mypy checks every call."""

    def run(self: DirectClient, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._run(plan(self.plans, *args, **kwargs))

    return _named(run, plan)


def _awaited(
    plan: Callable[Concatenate[Plans, P], Generator[Call, Reply, R]],
) -> Callable[Concatenate[AsyncDirectClient, P], Coroutine[Any, Any, R]]:
    """`AsyncDirectClient`'s method for `plan`, as `_blocking` but awaited."""

    async def run(self: AsyncDirectClient, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return await self._run(plan(self.plans, *args, **kwargs))

    return _named(run, plan)


F = TypeVar("F", bound=Callable[..., Any])


def _named(method: F, plan: Callable[..., Any]) -> F:
    method.__name__ = method.__qualname__ = plan.__name__
    method.__doc__ = plan.__doc__
    return method


class DirectClient:
    """A blocking application channel on a ringfs mount (see the module docstring)."""

    def __init__(self, client: BlockingClient) -> None:
        self.client = client
        self.plans = Plans()

    @classmethod
    def connect(
        cls, mountpoint: str | os.PathLike[str], *, geometry: Geometry = DIRECT_GEOMETRY
    ) -> DirectClient:
        return cls(BlockingClient.connect(control_socket(mountpoint), geometry=geometry))

    def _run(self, plan: Generator[Call, Reply, R]) -> R:
        client = self.client
        try:
            call = next(plan)
            while True:
                fields = call.fields
                if call.dest is not None:
                    reply = client.call_into(call.opcode, call.dest, call.body, **fields)
                else:
                    reply = client.call(call.opcode, call.body, **fields)
                call = plan.send(reply)
        except StopIteration as done:
            result: R = done.value  # the plan's return value, typed by its signature
            return result
        except ChannelClosed as exc:
            raise _ended(exc) from exc

    stat = _blocking(Plans.stat)
    listdir = _blocking(Plans.listdir)
    mkdir = _blocking(Plans.mkdir)
    unlink = _blocking(Plans.unlink)
    rmdir = _blocking(Plans.rmdir)
    rename = _blocking(Plans.rename)
    open = _blocking(Plans.open)
    close = _blocking(Plans.close)
    read = _blocking(Plans.read)
    pread = _blocking(Plans.pread)
    write = _blocking(Plans.write)
    fsync = _blocking(Plans.fsync)

    def readinto(self, fd: int, buffer: Any, offset: int | None = None) -> int:
        if offset is None or fd not in self.plans.files:
            return self._run(self.plans.readinto(fd, buffer, offset))
        # The hot path, without a plan: one command, straight into the caller's buffer.
        try:
            reply = self.client.call_into(Op.READ, buffer, fh=fd, offset=offset)
        except ChannelClosed as exc:
            raise _ended(exc) from exc
        return _check(reply).data_len

    def pwrite(self, fd: int, data: Any, offset: int) -> int:
        if fd not in self.plans.files:
            return self._run(self.plans.pwrite(fd, data, offset))
        try:
            reply = self.client.call(Op.WRITE, data=data, fh=fd, offset=offset)
        except ChannelClosed as exc:
            raise _ended(exc) from exc
        return _check(reply).value

    def shutdown(self) -> None:
        """Close every file, give back every lookup, end the channel."""
        try:
            if not self.client.closed:
                with contextlib.suppress(OSError):  # the channel ended meanwhile: all freed
                    self._run(self.plans.release_all())
        finally:
            self.client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


class AsyncDirectClient:
    """The trio version: the same operations, awaited (`async with ....connect(mnt)`)."""

    def __init__(self, client: TrioClient) -> None:
        self.client = client
        self.plans = Plans()

    @classmethod
    @asynccontextmanager
    async def connect(
        cls, mountpoint: str | os.PathLike[str], *, geometry: Geometry = DIRECT_GEOMETRY
    ) -> AsyncIterator[AsyncDirectClient]:
        async with TrioClient.open(control_socket(mountpoint), geometry=geometry) as client:
            fs = cls(client)
            try:
                yield fs
            finally:
                if not client.closed:
                    await fs._run(fs.plans.release_all())

    async def _run(self, plan: Generator[Call, Reply, R]) -> R:
        # DirectClient._run with each call awaited: one plan loop per calling style.
        client = self.client
        try:
            call = next(plan)
            while True:
                fields = call.fields
                if call.dest is not None:
                    reply = await client.call_into(call.opcode, call.dest, call.body, **fields)
                else:
                    reply = await client.call(call.opcode, call.body, **fields)
                call = plan.send(reply)
        except StopIteration as done:
            result: R = done.value  # the plan's return value, typed by its signature
            return result
        except ChannelClosed as exc:
            raise _ended(exc) from exc

    stat = _awaited(Plans.stat)
    listdir = _awaited(Plans.listdir)
    mkdir = _awaited(Plans.mkdir)
    unlink = _awaited(Plans.unlink)
    rmdir = _awaited(Plans.rmdir)
    rename = _awaited(Plans.rename)
    open = _awaited(Plans.open)
    close = _awaited(Plans.close)
    read = _awaited(Plans.read)
    pread = _awaited(Plans.pread)
    readinto = _awaited(Plans.readinto)
    write = _awaited(Plans.write)
    pwrite = _awaited(Plans.pwrite)
    fsync = _awaited(Plans.fsync)
