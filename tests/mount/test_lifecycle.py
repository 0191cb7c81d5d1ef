"""A mount's life from the command line: ready means ready, every end leaves nothing behind.

Real `ringfs up` processes on real FUSE mounts: a signal to a foreground mount unmounts it; a
SIGKILLed driver leaves a dead mount that `ringfs umount` clears (and `stats`/`up` name in
one line) and takes its server with it; an option libfuse refuses at INIT fails `up` with
libfuse's reason; readiness reaches a real NOTIFY_SOCKET only once the mount answers;
`mount -t fuse.ringfs` and an fstab line work; logs go where asked and rotate; `umount` is
fast. The measured times are printed (pytest -s).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from channel.protocol.limits import LOG_BACKUPS, LOG_MAX_BYTES
from fusefront.cli.runtime import default_log
from fusefront.mountinfo import is_ringfs_type, mount_type
from tests.support.mounting import REPO, RINGFS, ringfs, ringfs_mount

DEADLINE = 20.0
HELPER = Path("/sbin/mount.fuse.ringfs")


def wait_until(condition: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)  # the conditions here (a mount, a file) have nothing to wait on


def answers(mnt: Path) -> bool:
    try:
        os.getxattr(mnt, "user.ringfs.info")
    except OSError:
        return False
    return True


def info(mnt: Path) -> dict[str, int]:
    result: dict[str, int] = json.loads(os.getxattr(mnt, "user.ringfs.info"))
    return result


def wait_exit(pid: int, timeout: float = DEADLINE) -> None:
    """Wait for a process we did not start (no waitpid) to exit, on its pidfd."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        assert select.select([fd], [], [], timeout)[0], f"pid {pid} still runs after {timeout} s"
    finally:
        os.close(fd)


def is_dead(mnt: Path) -> bool:
    try:
        os.statvfs(mnt)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


def server_processes(export: Path) -> list[int]:
    """Live backend_server processes serving `export` (to show none is left)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if b"backend_server" in cmdline and str(export).encode() in cmdline and state != "Z":
                found.append(int(entry))
    return found


@pytest.fixture
def dirs(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    export, mnt = tmp_path / "export", tmp_path / "mnt"
    export.mkdir()
    mnt.mkdir()
    (export / "hello").write_text("hello\n")
    try:
        yield export, mnt
    finally:
        if mount_type(str(mnt)) is not None:
            subprocess.run(["fusermount3", "-uz", str(mnt)], check=False)
        for pid in server_processes(export):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def one_line_error(done: subprocess.CompletedProcess[str], *words: str) -> None:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ringfs: "), done.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_to_foreground_mount_unmounts_and_exits_0(
    dirs: tuple[Path, Path], tmp_path: Path, signum: int
) -> None:
    export, mnt = dirs
    proc = subprocess.Popen(
        [*RINGFS, "up", str(export), str(mnt), "-f", "--socket", str(tmp_path / "s.sock")],
        cwd=REPO,
        process_group=0,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: answers(mnt), "the mount")
        server = info(mnt)["server_pid"]
        assert (mnt / "hello").read_text() == "hello\n"
        # As a terminal's ^C does: to the whole foreground process group.
        os.killpg(proc.pid, signum)
        assert proc.wait(DEADLINE) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.stderr is not None
    assert "restarting" not in proc.stderr.read()  # the server was not lost on the way
    assert mount_type(str(mnt)) is None, "the signal left a mount behind"
    wait_exit(server)
    assert os.listdir(mnt) == []  # the bare directory again


def test_umount_clears_a_dead_mount_and_stats_and_up_say_what_it_is(
    dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    export, mnt = dirs
    sock = tmp_path / "s.sock"
    ringfs("up", str(export), str(mnt), "--socket", str(sock))
    pids = info(mnt)
    os.kill(pids["driver_pid"], signal.SIGKILL)
    wait_until(lambda: is_dead(mnt), "the mount to die")
    assert is_ringfs_type(mount_type(str(mnt)))
    # The orphaned server notices its driver is gone (EOF on its stdin) and stops.
    wait_exit(pids["server_pid"])

    stats = ringfs("stats", str(mnt), check=False)
    assert stats.returncode == 1
    one_line_error(stats, "dead ringfs mount", "ringfs umount")
    up = ringfs("up", str(export), str(mnt), "--socket", str(sock), check=False)
    assert up.returncode == 1
    one_line_error(up, "dead ringfs mount")

    done = ringfs("umount", str(mnt), check=False)
    assert done.returncode == 0, done.stderr
    assert mount_type(str(mnt)) is None
    with ringfs_mount(tmp_path, export=export) as again:  # and the place can be used again
        assert (again.path / "hello").read_text() == "hello\n"


def test_option_libfuse_refuses_at_init_fails_up_with_its_reason(
    dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    export, mnt = dirs
    for foreground in ([], ["-f"]):
        done = ringfs(
            "up", str(export), str(mnt), "--socket", str(tmp_path / "s.sock"),
            "-o", "max_read=4096", *foreground, check=False,
        )  # fmt: skip
        assert done.returncode == 1, done
        assert "requested different maximum read size" in done.stderr  # libfuse's own words
        assert f"ringfs: cannot mount {mnt}" in done.stderr
        assert mount_type(str(mnt)) is None
        assert server_processes(export) == []


def test_killed_driver_takes_its_server_and_up_refuses_a_foreign_server(
    dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    export, mnt = dirs
    sock = tmp_path / "s.sock"
    serve = subprocess.Popen([*RINGFS, "serve", str(export), "--socket", str(sock)], cwd=REPO)
    try:
        wait_until(sock.exists, "the server's socket")
        done = ringfs("up", str(export), str(mnt), "--socket", str(sock), check=False)
        assert done.returncode == 1
        one_line_error(done, f"pid {serve.pid}", "already listening")
        assert mount_type(str(mnt)) is None
    finally:
        serve.terminate()
        assert serve.wait(DEADLINE) == 0


def test_umount_returns_once_driver_and_server_have_exited(
    dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    """umount waits on pidfds (a polled kill(pid, 0) counts a zombie as alive and waited for
    init to reap it, 1.4-2.4 s). How fast it is, is measured, not asserted: README."""
    export, mnt = dirs
    for _ in range(3):
        ringfs("up", str(export), str(mnt), "--socket", str(tmp_path / "s.sock"))
        pids = info(mnt)
        ringfs("umount", str(mnt))
        for pid in (pids["driver_pid"], pids["server_pid"]):
            wait_exit(pid, 0.001)  # umount returned only after both had exited
        assert mount_type(str(mnt)) is None


def test_ready_notification_reaches_notify_socket_only_once_mounted(
    dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    export, mnt = dirs
    notify_path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(notify_path))
        env = {**os.environ, "NOTIFY_SOCKET": str(notify_path)}
        argv = [*RINGFS, "up", str(export), str(mnt), "-f", "--socket", str(tmp_path / "s")]

        # Refused at INIT: the process fails and nothing says READY.
        bad = subprocess.run(
            [*argv, "-o", "max_read=4096"], cwd=REPO, env=env, capture_output=True, timeout=60
        )
        assert bad.returncode == 1
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.recv(4096)

        proc = subprocess.Popen(argv, cwd=REPO, env=env)
        try:
            assert select.select([listener], [], [], DEADLINE)[0], "no notification"
            message = listener.recv(4096).decode()
            # At the moment READY=1 arrives the mount already answers through the kernel.
            assert answers(mnt)
            assert (mnt / "hello").read_text() == "hello\n"
            fields = dict(line.split("=", 1) for line in message.splitlines())
            assert fields == {"READY": "1", "MAINPID": str(proc.pid)}
        finally:
            proc.terminate()
            assert proc.wait(DEADLINE) == 0
    assert mount_type(str(mnt)) is None


def test_log_file_level_and_rotation(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    export, mnt = dirs
    log = tmp_path / "ringfs.log"
    # An old log just short of the limit, and every backup already there: the first record
    # rotates, and no more than LOG_BACKUPS old files are kept.
    old = b"x" * (LOG_MAX_BYTES - 10) + b"\n"
    log.write_bytes(old)
    for n in range(1, LOG_BACKUPS + 1):
        Path(f"{log}.{n}").write_text(f"backup {n}\n")
    sock = tmp_path / "s.sock"
    ringfs("up", str(export), str(mnt), "--socket", str(sock),
           "--log-file", str(log), "--log-level", "info")  # fmt: skip
    try:
        text = log.read_text()
        # The server's log reaches the driver's file; INFO is logged at --log-level info.
        assert f"serving {export} on {sock}" in text
        assert Path(f"{log}.1").read_bytes() == old
        assert Path(f"{log}.{LOG_BACKUPS}").read_text() == f"backup {LOG_BACKUPS - 1}\n"
        assert not Path(f"{log}.{LOG_BACKUPS + 1}").exists()
    finally:
        ringfs("umount", str(mnt))
    # The server's last words (stopped by its driver) are in the log too: nothing is lost.
    assert "finishing commands in flight, then exiting" in log.read_text()

    # --log-level warning (the default) keeps INFO out.
    quiet = tmp_path / "quiet.log"
    ringfs("up", str(export), str(mnt), "--socket", str(sock), "--log-file", str(quiet))
    ringfs("umount", str(mnt))
    assert "serving" not in quiet.read_text()


def test_background_log_without_syslog_goes_to_runtime_dir(
    dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    if os.path.exists("/dev/log"):
        pytest.fail("this test checks the no-syslog fallback; /dev/log exists here")
    export, mnt = dirs
    path = Path(default_log(str(mnt)))
    path.unlink(missing_ok=True)
    ringfs("up", str(export), str(mnt), "--socket", str(tmp_path / "s"))
    ringfs("umount", str(mnt))
    assert not path.exists()  # nothing worth a warning, no file
    ringfs("up", str(export), str(mnt), "--socket", str(tmp_path / "s"), "--log-level", "info")
    try:
        os.kill(info(mnt)["server_pid"], signal.SIGKILL)  # something worth a warning
        wait_until(
            lambda: path.exists() and "restarting it" in path.read_text(), "the driver's log"
        )
    finally:
        ringfs("umount", str(mnt))
    path.unlink()


def test_mount_t_fuse_ringfs_and_an_fstab_line(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    assert HELPER.exists(), f"{HELPER} is missing: scripts/setup.sh (as root) installs it"
    export, mnt = dirs
    done = subprocess.run(
        ["mount", "-t", "fuse.ringfs", str(export), str(mnt), "-o", "noauto,_netdev,cache=none"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    try:
        assert (mnt / "hello").read_text() == "hello\n"
        assert is_ringfs_type(mount_type(str(mnt)))
    finally:
        ringfs("umount", str(mnt))

    sock = tmp_path / "fstab.sock"
    fstab = tmp_path / "fstab"
    fstab.write_text(
        f"{export} {mnt} fuse.ringfs noauto,_netdev,nofail,x-systemd.automount,"
        f"socket={sock},cache=always 0 0\n"
    )
    done = subprocess.run(
        ["mount", "--fstab", str(fstab), str(mnt)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    try:
        assert (mnt / "hello").read_text() == "hello\n"
        assert info(mnt)["server_socket"] == str(sock)  # socket= reached `ringfs up`
    finally:
        ringfs("umount", str(mnt))
    assert mount_type(str(mnt)) is None

    # A running server's socket as the source: `ringfs mount` of it.
    served = tmp_path / "served.sock"
    serve = subprocess.Popen([*RINGFS, "serve", str(export), "--socket", str(served)], cwd=REPO)
    try:
        wait_until(served.exists, "the server's socket")
        done = subprocess.run(["mount", "-t", "fuse.ringfs", str(served), str(mnt)],
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert info(mnt)["server_pid"] == serve.pid and not info(mnt)["owns_server"]
        assert (mnt / "hello").read_text() == "hello\n"
        ringfs("umount", str(mnt))
    finally:
        serve.terminate()
        assert serve.wait(DEADLINE) == 0


def test_example_systemd_unit_starts_notifies_and_stops_cleanly(
    dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    """The shipped unit passes `systemd-analyze verify`, and its ExecStart, run as systemd
    runs a Type=notify service (NOTIFY_SOCKET, then SIGTERM to the main process only),
    reports ready once mounted and stops with status 0 and no mount left."""
    export, mnt = dirs
    text = (REPO / "examples/systemd/ringfs-export.service").read_text()
    assert "\nType=notify\n" in text and "\nKillMode=mixed\n" in text
    unit = tmp_path / "ringfs-export.service"
    unit.write_text(
        text.replace("/opt/ringfs/.venv/bin/ringfs", str(Path(RINGFS[0]).parent / "ringfs"))
        .replace("/srv/export", str(export))
        .replace("/mnt/ringfs", str(mnt))
    )
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert verify.returncode == 0, verify.stderr
    exec_start = next(
        line for line in unit.read_text().splitlines() if line.startswith("ExecStart=")
    )
    argv = exec_start.removeprefix("ExecStart=").split()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(tmp_path / "notify"))
        env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify")}
        proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
        try:
            assert select.select([listener], [], [], DEADLINE)[0], "no READY=1"
            assert listener.recv(4096).startswith(b"READY=1")
            assert (mnt / "hello").read_text() == "hello\n"
            server = info(mnt)["server_pid"]
            proc.terminate()
            _, stderr = proc.communicate(timeout=DEADLINE)
            assert proc.returncode == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert "signal 15: unmounting" in stderr  # --log-level info from the unit, on stderr
    assert mount_type(str(mnt)) is None
    wait_exit(server)


def test_background_log_goes_to_syslog_when_there_is_one(
    dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    """With a syslog socket (journald's or rsyslog's /dev/log), a backgrounded mount logs
    there. This machine has none, so the test listens on /dev/log itself meanwhile."""
    if os.path.exists("/dev/log"):
        pytest.fail("/dev/log exists: this test would steal the system's syslog socket")
    export, mnt = dirs
    fallback = Path(default_log(str(mnt)))
    fallback.unlink(missing_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as syslog:
        syslog.bind("/dev/log")
        try:
            ringfs("up", str(export), str(mnt), "--socket", str(tmp_path / "s"),
                   "--log-level", "info")  # fmt: skip
            try:
                os.kill(info(mnt)["server_pid"], signal.SIGKILL)  # worth a warning
                records = []
                while not any(b"restarting it" in r for r in records):
                    assert select.select([syslog], [], [], DEADLINE)[0], records
                    records.append(syslog.recv(65536))
            finally:
                ringfs("umount", str(mnt))
        finally:
            os.unlink("/dev/log")
    warning = next(r for r in records if b"restarting it" in r)
    # <priority>: facility daemon (3) * 8 + warning (4) = 28, then the ident ringfs[PID]:
    assert warning.startswith(b"<28>ringfs["), warning
    assert not fallback.exists()  # syslog instead of the file, not both


def test_serve_log_file_rotates(tmp_path: Path) -> None:
    """`ringfs serve --log-file` (a server alone) rotates its own log the same way."""
    log, sock = tmp_path / "server.log", tmp_path / "s.sock"
    old = b"y" * (LOG_MAX_BYTES - 10) + b"\n"
    log.write_bytes(old)
    serve = subprocess.Popen(
        [*RINGFS, "serve", str(tmp_path), "--socket", str(sock), "--log-file", str(log),
         "--log-level", "info"], cwd=REPO,
    )  # fmt: skip
    try:
        wait_until(lambda: log.exists() and b"serving" in log.read_bytes(), "the server's log")
        assert Path(f"{log}.1").read_bytes() == old
        assert log.stat().st_size < LOG_MAX_BYTES
    finally:
        serve.terminate()
        assert serve.wait(DEADLINE) == 0
    assert b"signal 15: finishing commands in flight" in log.read_bytes()
