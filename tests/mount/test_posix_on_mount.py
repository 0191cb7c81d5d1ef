"""A real ringfs mount used with ordinary tools and Python file APIs, as on a local disk."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import mmap
import multiprocessing
import os
import shutil
import sqlite3
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fusefront.dirty_limits import WRITEBACK_MAX_RATIO, bdi_of
from tests.support.mounting import Mount, ringfs_mount
from tests.support.worlds import temporary_world

NOBODY = 65534


@pytest.fixture(scope="module")
def mount() -> Iterator[Mount]:
    # Not under pytest's tmp_path: that sits in a 0700 directory other users cannot cross.
    with (
        temporary_world("ringfs-posix-") as base,
        ringfs_mount(base, "allow_other,default_permissions") as m,
    ):
        m.path.chmod(0o777)
        yield m


@pytest.fixture
def d(mount: Mount, request: pytest.FixtureRequest) -> Path:
    """A fresh directory on the mount for one test."""
    path = mount.path / request.node.name.replace("[", "_").replace("]", "")
    path.mkdir()
    return path


def test_create_read_write_truncate(d: Path, mount: Mount) -> None:
    f = d / "file"
    f.write_bytes(b"hello world")
    assert f.read_bytes() == b"hello world"
    with open(f, "r+b") as fh:
        fh.seek(6)
        fh.write(b"ringfs")
    assert f.read_bytes() == b"hello ringfs"
    os.truncate(f, 5)
    assert f.read_bytes() == b"hello"
    os.truncate(f, 1 << 20)  # growing makes a sparse tail of zeros
    data = f.read_bytes()
    assert len(data) == 1 << 20 and data[:5] == b"hello" and data[5:] == bytes(len(data) - 5)
    assert (mount.export / d.name / "file").stat().st_size == 1 << 20
    with pytest.raises(FileExistsError):
        os.open(f, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    fd = os.open(f, os.O_WRONLY | os.O_TRUNC)
    os.close(fd)
    assert f.stat().st_size == 0


def test_rename_over_existing_and_across_directories(d: Path) -> None:
    (d / "a").write_text("A")
    (d / "b").write_text("B")
    os.rename(d / "a", d / "b")
    assert not (d / "a").exists() and (d / "b").read_text() == "A"
    (d / "sub").mkdir()
    os.rename(d / "b", d / "sub" / "c")
    assert (d / "sub" / "c").read_text() == "A" and not (d / "b").exists()
    (d / "full").mkdir()
    (d / "full" / "x").write_text("x")
    (d / "empty").mkdir()
    with pytest.raises(OSError) as exc:
        os.rename(d / "empty", d / "full")
    assert exc.value.errno == errno.ENOTEMPTY


def test_hard_links_and_symlinks(d: Path) -> None:
    (d / "orig").write_text("data")
    os.link(d / "orig", d / "hard")
    a, b = os.stat(d / "orig"), os.stat(d / "hard")
    assert a.st_ino == b.st_ino and a.st_nlink == b.st_nlink == 2
    os.symlink("orig", d / "soft")
    assert os.readlink(d / "soft") == "orig"
    assert (d / "soft").read_text() == "data"
    assert stat.S_ISLNK(os.lstat(d / "soft").st_mode)
    os.unlink(d / "orig")
    assert os.stat(d / "hard").st_nlink == 1
    assert not (d / "soft").exists()  # dangling now


def test_chmod_chown_utimes_xattrs(d: Path) -> None:
    f = d / "f"
    f.write_text("x")
    os.chmod(f, 0o640)
    assert stat.S_IMODE(f.stat().st_mode) == 0o640
    os.chown(f, 1234, 5678)
    st = f.stat()
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    os.utime(f, ns=(1_000_000_123, 2_000_000_456))
    st = f.stat()
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_123, 2_000_000_456)
    os.setxattr(f, "user.colour", b"blue")
    assert os.getxattr(f, "user.colour") == b"blue"
    assert "user.colour" in os.listxattr(f)
    os.removexattr(f, "user.colour")
    with pytest.raises(OSError) as exc:
        os.getxattr(f, "user.colour")
    assert exc.value.errno == errno.ENODATA


def test_mkfifo_carries_data_between_processes(d: Path) -> None:
    fifo = d / "fifo"
    os.mkfifo(fifo)
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    writer = subprocess.Popen(["sh", "-c", f"echo through-the-fifo > {fifo}"])
    assert fifo.read_text() == "through-the-fifo\n"
    assert writer.wait(10) == 0


def test_readdir_of_ten_thousand_entries(d: Path) -> None:
    names = {f"entry-{i:05d}" for i in range(10_000)}
    for name in names:
        os.close(os.open(d / name, os.O_CREAT | os.O_WRONLY, 0o644))
    assert set(os.listdir(d)) == names
    listed = subprocess.run(["ls", "-f", str(d)], capture_output=True, text=True, check=True)
    assert set(listed.stdout.split()) - {".", ".."} == names


def test_rewound_directory_lists_what_was_added_meanwhile(d: Path) -> None:
    """The driver remembers where a listing ended, to answer the kernel's last call itself;
    a rewind starts a new listing, whose entries may run past that old end. A 32 KiB
    getdents buffer holds 204 entries with 5-byte names (160 bytes each), so directories of
    about that many make the old end fall where the kernel's second call starts."""
    for n in range(196, 212):
        sub = d / f"dir{n}"
        sub.mkdir()
        for i in range(n):
            (sub / f"f{i:04d}").touch()
        fd = os.open(sub, os.O_RDONLY | os.O_DIRECTORY)
        try:
            assert len(os.listdir(fd)) == n
            for i in range(7):
                (sub / f"g{i:04d}").touch()
            assert len(os.listdir(fd)) == n + 7, n  # os.listdir(fd) rewinds the same handle
        finally:
            os.close(fd)


def test_one_gib_file_round_trip_by_checksum(d: Path) -> None:
    f = d / "big"
    block = os.urandom(1 << 20)
    written = hashlib.sha256()
    with open(f, "wb") as out:
        for i in range(1024):
            chunk = block[i:] + block[:i]  # every MiB differs
            out.write(chunk)
            written.update(chunk)
    assert f.stat().st_size == 1 << 30
    read = hashlib.sha256()
    with open(f, "rb") as src:
        while chunk := src.read(1 << 20):
            read.update(chunk)
    assert read.hexdigest() == written.hexdigest()
    f.unlink()


def test_shared_mmap_writes_are_seen_by_read(d: Path) -> None:
    f = d / "mapped"
    f.write_bytes(bytes(8192))
    with open(f, "r+b") as fh, mmap.mmap(fh.fileno(), 8192) as m:
        m[100:105] = b"mmap!"
        m.flush()
    with open(f, "rb") as fh:
        fh.seek(100)
        assert fh.read(5) == b"mmap!"


def _try_lock(path: str, kind: str, queue: multiprocessing.Queue[str]) -> None:
    with open(path, "r+b") as fh:
        try:
            if kind == "flock":
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            else:
                fcntl.lockf(fh, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 0)
            queue.put("locked")
        except OSError as exc:
            queue.put(f"refused {exc.errno}")


@pytest.mark.parametrize("kind", ["flock", "fcntl"])
def test_locks_conflict_between_two_processes(d: Path, kind: str) -> None:
    f = d / "lockfile"
    f.write_bytes(bytes(100))
    ctx = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue[str] = ctx.Queue()
    with open(f, "r+b") as fh:
        if kind == "flock":
            fcntl.flock(fh, fcntl.LOCK_EX)
        else:
            fcntl.lockf(fh, fcntl.LOCK_EX, 10, 0)
        other = ctx.Process(target=_try_lock, args=(str(f), kind, queue))
        other.start()
        assert queue.get(timeout=20) in (f"refused {errno.EAGAIN}", f"refused {errno.EACCES}")
        other.join(10)
    other = ctx.Process(target=_try_lock, args=(str(f), kind, queue))  # released now
    other.start()
    assert queue.get(timeout=20) == "locked"
    other.join(10)


def test_o_append_from_two_processes(d: Path) -> None:
    log = d / "log"
    log.touch()
    script = (
        "import os, sys\n"
        "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)\n"
        "for i in range(500):\n"
        "    os.write(fd, f'{sys.argv[2]}:{i:04d}\\n'.encode())\n"
    )
    procs = [subprocess.Popen(["python3", "-c", script, str(log), tag]) for tag in ("A", "B")]
    for p in procs:
        assert p.wait(60) == 0
    lines = log.read_text().splitlines()
    assert len(lines) == 1000
    for tag in ("A", "B"):
        mine = [line for line in lines if line.startswith(f"{tag}:")]
        assert mine == [f"{tag}:{i:04d}" for i in range(500)]  # none lost, in order, unmixed


def test_sqlite_wal_database_passes_integrity_check(d: Path) -> None:
    db = sqlite3.connect(d / "test.db")
    assert db.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, payload BLOB)")
    with db:
        db.executemany(
            "INSERT INTO t (payload) VALUES (?)", [(os.urandom(200),) for _ in range(2000)]
        )
    with db:
        db.execute("DELETE FROM t WHERE id % 3 = 0")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("SELECT count(*) FROM t").fetchone()[0] == 2000 - 2000 // 3
    db.close()
    again = sqlite3.connect(d / "test.db")
    assert again.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    again.close()


def test_git_init_commit_fsck(d: Path) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}  # fmt: skip

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(d), *args], env=env, capture_output=True, text=True, check=True
        ).stdout

    git("init", "-q")
    for i in range(20):
        (d / f"file{i}.txt").write_text(f"content {i}\n" * (i + 1))
    git("add", ".")
    git("commit", "-q", "-m", "first")
    (d / "file3.txt").write_text("changed\n")
    git("commit", "-q", "-am", "second")
    git("gc", "-q")
    git("fsck", "--full", "--strict")
    assert git("log", "--oneline").count("\n") == 2
    assert git("status", "--porcelain") == ""


def test_tar_round_trip_compared_with_diff(d: Path, tmp_path: Path) -> None:
    source = Path(__file__).resolve().parents[2] / "channel"
    archive = tmp_path / "src.tar"
    subprocess.run(["tar", "-C", str(source.parent), "-cf", str(archive), "channel"], check=True)
    subprocess.run(["tar", "-C", str(d), "-xf", str(archive)], check=True)
    subprocess.run(["diff", "-r", str(source), str(d / "channel")], check=True)
    back = tmp_path / "back.tar"
    subprocess.run(["tar", "-C", str(d), "-cf", str(back), "channel"], check=True)
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["tar", "-C", str(out), "-xf", str(back)], check=True)
    subprocess.run(["diff", "-r", str(source), str(out / "channel")], check=True)


def _as_nobody(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(cmd), user=NOBODY, group=NOBODY, extra_groups=[], capture_output=True, text=True
    )


def test_files_created_by_a_non_root_user_are_owned_by_that_user(d: Path, mount: Mount) -> None:
    d.chmod(0o777)
    made = _as_nobody("sh", "-c", f"echo mine > {d}/by-nobody && mkdir {d}/dir-by-nobody")
    assert made.returncode == 0, made.stderr
    for name in ("by-nobody", "dir-by-nobody"):
        on_mount = (d / name).stat()
        in_export = (mount.export / d.name / name).stat()
        assert (on_mount.st_uid, on_mount.st_gid) == (NOBODY, NOBODY)
        assert (in_export.st_uid, in_export.st_gid) == (NOBODY, NOBODY)
    (d / "roots").write_text("secret")
    (d / "roots").chmod(0o600)
    denied = _as_nobody("cat", str(d / "roots"))
    assert denied.returncode != 0 and "Permission denied" in denied.stderr


def _reads_sent(mnt: Path) -> int:
    from tests.support.mounting import ringfs

    (channel,) = json.loads(ringfs("stats", str(mnt), "--json").stdout)["channels"]
    return int(channel["commands_by_opcode"].get("READ", 0))


def test_auto_keeps_the_page_cache_of_unchanged_files_only(tmp_path: Path) -> None:
    """cache=auto: close-to-open consistency, without rereading a file nobody changed."""
    content = os.urandom(1 << 20)
    with ringfs_mount(tmp_path, "cache=auto") as m:
        f = m.path / "f"
        f.write_bytes(content)
        assert f.read_bytes() == content
        sent = _reads_sent(m.path)
        for _ in range(3):  # unchanged since it was closed here: served from the page cache
            assert f.read_bytes() == content
        assert _reads_sent(m.path) == sent
        # changed behind the mount's back, same size: the next open must see it
        changed = bytes(reversed(content))
        with open(m.export / "f", "r+b") as behind:
            behind.write(changed)
        assert f.read_bytes() == changed
        assert _reads_sent(m.path) > sent


@pytest.mark.parametrize("cache", ["none", "auto", "always"])
def test_each_cache_mode_reads_what_was_written(tmp_path: Path, cache: str) -> None:
    with ringfs_mount(tmp_path, f"cache={cache}") as m:
        f = m.path / "f"
        for i in range(3):
            f.write_text(f"version {i}")
            assert f.read_text() == f"version {i}"
        assert (m.export / "f").read_text() == "version 2"


def test_read_only_mount_refuses_writes(tmp_path: Path) -> None:
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "kept").write_text("kept")
    with ringfs_mount(tmp_path, "ro") as m:
        assert (m.path / "kept").read_text() == "kept"
        with pytest.raises(OSError) as exc:
            (m.path / "new").write_text("x")
        assert exc.value.errno == errno.EROFS


def test_umount_leaves_no_process_behind(tmp_path: Path) -> None:
    from fusefront.mountinfo import open_pidfds, wait_exited
    from tests.support.mounting import ringfs

    with ringfs_mount(tmp_path) as m:
        pids = [m.driver_pid, m.server_pid]
        assert wait_exited(open_pidfds(pids), 0) == sorted(pids)  # both running
        assert ringfs("umount", str(m.path)).returncode == 0
        assert wait_exited(open_pidfds(pids), 0) == []  # both exited (or even reaped)
        assert not os.path.ismount(m.path)


def test_missing_and_busy_mount_points_get_clear_messages(tmp_path: Path) -> None:
    from tests.support.mounting import ringfs

    (tmp_path / "export").mkdir()
    missing = ringfs("up", str(tmp_path / "export"), str(tmp_path / "nowhere"), check=False)
    assert missing.returncode != 0 and "does not exist" in missing.stderr
    with ringfs_mount(tmp_path) as m:
        busy = ringfs("up", str(m.export), str(m.path), check=False)
        assert busy.returncode != 0 and "busy" in busy.stderr
    (tmp_path / "mnt2").mkdir()
    no_server = ringfs("mount", str(tmp_path / "none.sock"), str(tmp_path / "mnt2"), check=False)
    assert no_server.returncode != 0 and "no server socket" in no_server.stderr
    assert not os.path.ismount(tmp_path / "mnt2")


def test_shell_tools_copy_tree(d: Path) -> None:
    source = Path(__file__).resolve().parent
    subprocess.run(["cp", "-a", str(source), str(d / "copy")], check=True)
    subprocess.run(["diff", "-r", str(source), str(d / "copy")], check=True)
    shutil.rmtree(d / "copy")
    assert list(d.iterdir()) == []


def test_stats_from_the_mount_point_and_from_the_server_socket(tmp_path: Path) -> None:
    import json

    from tests.support.mounting import ringfs

    with ringfs_mount(tmp_path, "cache=none") as m:
        for i in range(10):
            (m.path / f"f{i}").write_bytes(b"x" * 5000)
        by_mount = json.loads(ringfs("stats", str(m.path), "--json").stdout)
        assert (by_mount["driver_pid"], by_mount["server_pid"]) == (m.driver_pid, m.server_pid)
        (channel,) = by_mount["channels"]
        assert channel["commands_by_opcode"]["WRITE"] >= 10
        assert channel["bytes_out"] >= 50_000
        assert channel["completions"] <= channel["commands"]
        assert channel["wakeups_per_command"] <= 2
        by_socket = json.loads(ringfs("stats", str(tmp_path / "server.sock"), "--json").stdout)
        assert by_socket["server_pid"] == m.server_pid
        assert [c["client_pid"] for c in by_socket["channels"]] == [m.driver_pid]
        text = ringfs("stats", str(m.path)).stdout
        assert "wake-ups sent" in text and "WRITE" in text


def test_writeback_cache_mount_keeps_data(tmp_path: Path) -> None:
    with ringfs_mount(tmp_path, "writeback") as m:
        f = m.path / "f"
        with open(f, "wb") as out:
            for i in range(100):
                out.write(bytes([i]) * 4096)
            out.flush()
            os.fsync(out.fileno())
        expected = b"".join(bytes([i]) * 4096 for i in range(100))
        assert f.read_bytes() == expected
        assert (m.export / "f").read_bytes() == expected
        # the kernel's hard 1 % cap on a FUSE mount's dirty pages is lifted for writeback
        bdi = bdi_of(str(m.path))
        assert (bdi / "strict_limit").read_text().strip() == "0"
        assert int((bdi / "max_ratio").read_text()) == WRITEBACK_MAX_RATIO


def test_buffered_writes_do_not_ask_for_capabilities_each_time(tmp_path: Path) -> None:
    import json
    import struct

    from tests.support.mounting import ringfs

    with ringfs_mount(tmp_path, "cache=auto") as m:
        f = m.path / "f"
        with open(f, "wb", buffering=0) as out:
            for i in range(200):
                out.write(bytes([i % 256]) * 4096)
        report = json.loads(ringfs("stats", str(m.path), "--json").stdout)
        ops = report["channels"][0]["commands_by_opcode"]
        assert ops["WRITE"] >= 200
        assert ops.get("GETXATTR", 0) <= 5
        # A capability set through the mount is seen at once (the negative entry is dropped).
        caps = struct.pack("<IIIII", 0x02000000, 1 << 10, 0, 0, 0)  # v2, CAP_NET_BIND_SERVICE
        os.setxattr(f, "security.capability", caps)
        assert os.getxattr(f, "security.capability") == caps
        with open(f, "r+b", buffering=0) as out:
            out.write(b"x")  # a write by root strips file capabilities, as on a local disk
        with pytest.raises(OSError) as exc:
            os.getxattr(f, "security.capability")
        assert exc.value.errno == errno.ENODATA
