"""`-o ro` is read-only for every path into the mount: the kernel refuses changes made
through the mount, and the server refuses every mutating command (EROFS) on each channel of
that mount, the application channels its driver hands out included (they bypass the kernel).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from channel.protocol import handshake
from channel.protocol.errors import ProtocolError
from channel.protocol.opcodes import MUTATING, Op, mutates
from fusefront.direct import DirectClient
from tests.support.mounting import Mount, ringfs_mount

CONTENT = b"keep me\n"


@pytest.fixture
def ro_mount() -> Iterator[Mount]:
    base = Path(tempfile.mkdtemp(prefix="ringfs-ro-", dir="/tmp"))
    base.chmod(0o755)
    export = base / "export"
    export.mkdir()
    (export / "f").write_bytes(CONTENT)
    (export / "d").mkdir()
    try:
        with ringfs_mount(base, "ro,allow_other", export=export) as m:
            yield m
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _tree(root: Path) -> dict[str, bytes | None]:
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


def test_an_application_channel_of_a_read_only_mount_changes_nothing(ro_mount: Mount) -> None:
    before = _tree(ro_mount.export)
    with DirectClient.connect(ro_mount.path) as fs:
        # reading works
        fd = fs.open("f")
        assert fs.pread(fd, 100, 0) == CONTENT
        assert sorted(fs.listdir()) == ["d", "f"]
        assert fs.stat("f").st_size == len(CONTENT)
        # every way the client offers to change something is refused with EROFS
        attempts = {
            "mkdir": lambda: fs.mkdir("new"),
            "create": lambda: fs.open("new", os.O_WRONLY | os.O_CREAT, 0o644),
            "open for writing": lambda: fs.open("f", os.O_WRONLY),
            "open read-write": lambda: fs.open("f", os.O_RDWR),
            "open to truncate": lambda: fs.open("f", os.O_RDONLY | os.O_TRUNC),
            "unlink": lambda: fs.unlink("f"),
            "rmdir": lambda: fs.rmdir("d"),
            "rename": lambda: fs.rename("f", "g"),
            "write": lambda: fs.pwrite(fd, b"x", 0),
        }
        for what, attempt in attempts.items():
            with pytest.raises(OSError) as caught:
                attempt()
            assert caught.value.errno == errno.EROFS, what
        # and so is every mutating opcode, whatever its body: the check comes first
        for opcode in sorted(MUTATING):
            reply = fs.client.call(opcode, [b"x", 0o644, 0], ino=1, fh=fd, data=b"x")
            assert reply.status == -errno.EROFS, Op(opcode).name
        fs.close(fd)
    assert _tree(ro_mount.export) == before


def test_the_mount_itself_is_read_only(ro_mount: Mount) -> None:
    out = subprocess.run(["touch", str(ro_mount.path / "new")], capture_output=True, text=True)
    assert out.returncode != 0 and "Read-only file system" in out.stderr
    assert (ro_mount.path / "f").read_bytes() == CONTENT


def test_mutates_names_writing_opens_only() -> None:
    assert mutates(Op.OPEN, [os.O_WRONLY]) and mutates(Op.OPEN, [os.O_RDWR])
    assert mutates(Op.OPEN, [os.O_RDONLY | os.O_TRUNC])
    assert not mutates(Op.OPEN, [os.O_RDONLY]) and not mutates(Op.OPEN, [os.O_RDONLY | os.O_APPEND])
    assert all(mutates(op, None) for op in MUTATING)
    assert not any(mutates(op, None) for op in (Op.READ, Op.GETATTR, Op.LOOKUP, Op.FSYNC))


def test_readonly_travels_in_the_hello() -> None:
    assert handshake.parse_hello(handshake.make_hello("driver", readonly=True)).readonly
    assert not handshake.parse_hello(handshake.make_hello("driver")).readonly
    import msgpack

    bad = msgpack.packb({"version": 1, "role": "app", "transport": "socket", "readonly": 1})
    with pytest.raises(ProtocolError, match="readonly"):
        handshake.parse_hello(bad)
