"""The server letting go: every descriptor back after close, kill or SIGTERM, and many
clients at once.
"""

from __future__ import annotations

import os
import socket
import time

from channel.protocol.opcodes import ROOT_INO, Op
from tests.support.server_fs import (
    FS,
    NOBODY,
    RENAME_NOREPLACE,
    A,
    entry_ino,
    run_workers,
)
from tests.support.server_harness import ServerProcess, UserClient, wait_until


# -- teardown ---------------------------------------------------------------------------------
def _use_everything(fs: FS, parent: int = ROOT_INO) -> None:
    """Take lookups, file handles and directory handles, and leave them all open."""
    d = entry_ino(fs.mkdir(parent, f"t{time.monotonic_ns()}".encode(), 0o777))
    for i in range(10):
        fs.ok(Op.CREATE, [f"f{i}".encode(), 0o666, os.O_RDWR], ino=d)
    for _ in range(3):
        fs.ok(Op.OPENDIR, ino=d)
    fh = fs.ok(Op.OPENDIR, ino=d).value
    fs.ok(Op.READDIR, fh=fh, offset=0, read_size=65536)
    fs.ok(Op.LOOKUP, [b"f0"], ino=d)


def _baseline_after_warm_up(server: ServerProcess, uid: int = 0) -> int:
    """The server's descriptor count with no channel, checked to be the count it returns to
    after a first channel (which exercises every lazy path) has come and gone."""
    baseline = server.fd_count()
    with UserClient(server.path, uid, uid) as warm:
        _use_everything(FS(warm))
    server.wait_closed(warm.channel_id)
    wait_until(lambda: server.fd_count() == baseline, what="fds back after the warm-up")
    return baseline


def test_teardown_by_close_returns_fds_to_baseline(fresh_server: ServerProcess) -> None:
    baseline = _baseline_after_warm_up(fresh_server)
    for _ in range(3):
        clients = [fresh_server.client() for _ in range(3)]
        for c in clients:
            _use_everything(FS(c))
        assert fresh_server.fd_count() > baseline + 3 * 20
        for c in clients:
            c.close()
        wait_until(lambda: fresh_server.fd_count() == baseline, what="fds back to baseline")


def test_teardown_by_kill_returns_fds_to_baseline(fresh_server: ServerProcess) -> None:
    fresh_server.export.chmod(0o777)
    baseline = _baseline_after_warm_up(fresh_server, NOBODY)
    users = [UserClient(fresh_server.path, NOBODY, NOBODY) for _ in range(3)]
    try:
        for uc in users:
            _use_everything(FS(uc))
        assert fresh_server.fd_count() > baseline + 3 * 20
        for uc in users:
            uc.kill()  # SIGKILL: no goodbye, the server notices the socket's end
        for uc in users:
            fresh_server.wait_closed(uc.channel_id)
        wait_until(lambda: fresh_server.fd_count() == baseline, what="fds back to baseline")
    finally:
        for uc in users:
            uc.close()


def test_teardown_with_slow_operations_in_flight(fresh_server: ServerProcess) -> None:
    """A channel that ends while its fsyncs and large writes run in worker threads: the
    handles close when those finish, and the server stays healthy."""
    baseline = _baseline_after_warm_up(fresh_server)
    uc = UserClient(fresh_server.path, 0, 0)
    fs = FS(uc)
    fh = fs.create(ROOT_INO, b"slow").value
    blob = b"z" * (1 << 20)
    uc._conn.send((int(Op.WRITE), None, {"data": blob, "fh": fh, "offset": 0}))
    uc.kill()
    fresh_server.wait_closed(uc.channel_id)
    uc.close()
    wait_until(lambda: fresh_server.fd_count() == baseline, what="fds back to baseline")
    with fresh_server.client() as after:
        assert FS(after).ok(Op.NOP, [1]).body == [1]


def test_sigterm_exits_cleanly(fresh_server: ServerProcess) -> None:
    c = fresh_server.client()
    FS(c).ok(Op.NOP)
    assert fresh_server.terminate() == 0
    assert "stopped" in fresh_server.lines
    c.close()


# -- concurrency --------------------------------------------------------------------------------
def test_concurrent_clients_mixed_operations(server: ServerProcess) -> None:
    """8 client threads, each with its own channel, 1,000 mixed operations each, verifying
    every byte read back against what that thread wrote."""
    import random

    base = server.export / f"conc-{time.monotonic_ns()}"
    base.mkdir(mode=0o777)
    errors: list[BaseException] = []
    done = [0] * 8

    def worker(index: int) -> None:
        rng = random.Random(index)
        try:
            with server.client() as c:
                fs = FS(c)
                top = fs.ino(base.name.encode())
                d = entry_ino(fs.mkdir(top, f"w{index}".encode()))
                files: dict[bytes, tuple[int, int, bytearray]] = {}  # name -> ino, fh, content
                for step in range(1000):
                    op = rng.choice(
                        ["create", "write", "write", "read", "read", "getattr", "truncate",
                         "rename", "unlink", "readdir", "lookup", "fsync", "xattr"]
                    )  # fmt: skip
                    if op == "create" or not files:
                        name = f"f{step}".encode()
                        reply = fs.create(d, name, 0o644, os.O_RDWR)
                        files[name] = (entry_ino(reply), reply.value, bytearray())
                        continue
                    name = rng.choice(sorted(files))
                    ino, fh, content = files[name]
                    if op == "write":
                        offset = rng.randrange(0, len(content) + 4096)
                        data = rng.randbytes(rng.choice([1, 100, 4096, 70_000, 300_000]))
                        assert fs.write(fh, data, offset).value == len(data)
                        if offset > len(content):
                            content.extend(bytes(offset - len(content)))
                        content[offset : offset + len(data)] = data
                    elif op == "read":
                        offset = rng.randrange(0, len(content) + 1)
                        size = rng.choice([1, 4096, 65536, 400_000])
                        got = fs.ok(Op.READ, fh=fh, offset=offset, read_size=size).data or b""
                        assert got == bytes(content[offset : offset + size])
                    elif op == "getattr":
                        assert fs.getattr(ino)[A["size"]] == len(content)
                    elif op == "truncate":
                        size = rng.randrange(0, len(content) + 10_000)
                        fs.ok(Op.SETATTR, {"size": size}, ino=ino, fh=fh)
                        if size < len(content):
                            del content[size:]
                        else:
                            content.extend(bytes(size - len(content)))
                    elif op == "rename":
                        new = name + b"r"
                        fs.ok(Op.RENAME, [name, d, new, RENAME_NOREPLACE], ino=d)
                        files[new] = files.pop(name)
                    elif op == "unlink":
                        fs.ok(Op.UNLINK, [name], ino=d)
                        fs.ok(Op.RELEASE, fh=fh)
                        fs.ok(Op.FORGET, [1], ino=ino)
                        del files[name]
                    elif op == "readdir":
                        names = {n for n, _a, _o in fs.readdir_all(d, page=8192)}
                        assert names == set(files)
                    elif op == "lookup":
                        assert entry_ino(fs.lookup(d, name)) == ino
                        fs.ok(Op.FORGET, [1], ino=ino)
                    elif op == "fsync":
                        fs.ok(Op.FSYNC, fh=fh, flags=rng.randrange(2))
                    elif op == "xattr":
                        value = rng.randbytes(rng.randrange(1, 200))
                        fs.ok(Op.SETXATTR, [b"user.v", 0], ino=ino, data=value)
                        got = fs.ok(Op.GETXATTR, [b"user.v"], ino=ino, read_size=1000).data
                        assert got == value
                    done[index] += 1
                for name, (_ino, fh, content) in files.items():
                    assert (base / f"w{index}" / name.decode()).read_bytes() == bytes(content)
                    fs.ok(Op.RELEASE, fh=fh)
        except BaseException as exc:
            errors.append(exc)

    run_workers(worker, 8)
    assert not errors, errors[0]


def test_server_socket_survives_garbage(server: ServerProcess) -> None:
    """A peer that connects and sends garbage is refused; the server serves on."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(server.path))
        s.sendall(b"\x00\x00\x00\x05hello")
        s.settimeout(10)
        s.recv(1000)
    with server.client() as c:
        assert FS(c).ok(Op.NOP, [2]).body == [2]
