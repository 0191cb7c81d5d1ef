"""The command line's promises that need no mount: every user error is one line saying what
and why (exit 1, or 2 for usage), `--version`, `--help`, and a private runtime directory per
user, created safely (real processes switched to other uids)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import pytest

from fusefront.cli.mount_helper import translate
from fusefront.cli.runtime import default_socket, runtime_dir
from fusefront.mountinfo import MountError
from tests.support.mounting import RINGFS, ringfs

#: Users of the runtime-directory tests (no passwd entry needed), unlike anyone else's.
ALICE, MALLORY = 64101, 64102


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["umount", "{tmp}/nowhere"], 1, ["{tmp}/nowhere does not exist"]),
        (["stats", "{tmp}/nowhere"], 1, ["{tmp}/nowhere does not exist"]),
        (["umount", "{tmp}"], 1, ["is not a ringfs mount"]),
        (["stats", "{tmp}/file"], 1, ["is not a ringfs mount"]),
        (["serve", "{tmp}", "--socket", "{tmp}/no/dir/s.sock"], 1,
         ["directory {tmp}/no/dir does not exist"]),
        (["serve", "{tmp}", "--socket", "{tmp}/file"], 1, ["exists and is not a socket"]),
        (["up", "{tmp}", "{tmp}/mnt", "--socket", "{tmp}/no/s.sock"], 1,
         ["directory {tmp}/no does not exist"]),
        (["up", "{tmp}/nowhere", "{tmp}/mnt"], 1, ["is not a directory"]),
        (["up", "{tmp}", "{tmp}/nowhere"], 1, ["mount point {tmp}/nowhere does not exist"]),
        (["up", "{tmp}", "{tmp}/file"], 1, ["is not a directory"]),
        (["up", "{tmp}", "{tmp}/mnt", "-o", "cache=sometimes"], 2, ["cache=sometimes"]),
        (["up", "{tmp}", "{tmp}/mnt", "--log-file", "{tmp}/no/dir/log"], 1, ["{tmp}/no/dir/log"]),
        (["frobnicate"], 2, ["invalid choice"]),
        (["up", "{tmp}"], 2, ["required"]),
    ],
)  # fmt: skip
def test_user_errors_are_one_line_with_the_documented_code(
    tmp_path: Path, args: list[str], code: int, words: list[str]
) -> None:
    (tmp_path / "file").write_text("precious\n")
    (tmp_path / "mnt").mkdir()
    done = ringfs(*(a.format(tmp=tmp_path) for a in args), check=False)
    assert done.returncode == code, done
    line = one_line(done)
    for word in words:
        assert word.format(tmp=tmp_path) in line, line
    assert (tmp_path / "file").read_text() == "precious\n"  # a bad --socket touched nothing


def test_server_alone_reports_a_bad_socket_in_one_line(tmp_path: Path) -> None:
    """`python -m backend_server` itself (what `serve` runs), past the CLI's checks."""
    (tmp_path / "file").write_text("precious\n")
    for sock in (tmp_path / "no" / "s.sock", tmp_path / "file"):
        done = subprocess.run(
            [RINGFS[0], "-m", "backend_server", str(tmp_path), "--socket", str(sock)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 1
        assert one_line(done).startswith(f"ringfs serve: {sock}: ")
    assert (tmp_path / "file").read_text() == "precious\n"


def test_version() -> None:
    done = ringfs("--version")
    assert done.stdout == f"ringfs {version('ringfs')}\n"
    assert subprocess.run(["mount.ringfs", "--help"], capture_output=True, check=False,
                          env={"PATH": os.path.dirname(RINGFS[0])}).returncode == 0  # fmt: skip


def test_help_names_every_option() -> None:
    for command, options in {
        "up": ["-o", "-f", "--debug", "--log-file", "--log-level", "--socket"],
        "mount": ["-o", "-f", "--debug", "--log-file", "--log-level"],
        "serve": ["--socket", "--allow-uid", "--allow-gid", "--secret-file", "--log-file",
                  "--log-level", "--debug"],
        "umount": ["mountpoint"],
    }.items():  # fmt: skip
        text = ringfs(command, "--help").stdout
        for option in options:
            assert option in text, (command, option)
    assert "exit status" in ringfs("--help").stdout


def test_mount_helper_drops_mount8_words_and_maps_its_own(tmp_path: Path) -> None:
    assert translate(str(tmp_path), "/m", ["rw,noauto,_netdev,nofail,x-systemd.automount",
                                           "cache=none,socket=/s,log_level=info,comment=z"]) == [
        "up", str(tmp_path), "/m", "--socket", "/s", "--log-level", "info",
        "-o", "rw,cache=none",
    ]  # fmt: skip


def as_user(uid: int, env: dict[str, str | None], action: Callable[[], str]) -> str:
    """Run `action` in a forked child switched to `uid` (real processes, real permissions);
    return what it returned or the MountError it raised."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            for key, value in env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            try:
                result = "ok " + action()
            except MountError as exc:
                result = f"error {exc}"
            os.write(write_end, result.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        out = f.read().decode()
    os.waitpid(pid, 0)
    return out


def test_runtime_dir_is_private_per_user_without_xdg() -> None:
    paths = [Path(f"/tmp/ringfs-{uid}") for uid in (ALICE, MALLORY)]
    for path in paths:
        if path.exists():
            path.rmdir()
    try:
        no_xdg: dict[str, str | None] = {"XDG_RUNTIME_DIR": None}
        for uid, path in zip((ALICE, MALLORY), paths, strict=True):
            # Each user gets a socket path of its own, where the second one failed before.
            assert as_user(uid, no_xdg, lambda: default_socket("/mnt")).startswith(f"ok {path}/")
            st = path.lstat()
            assert stat.S_ISDIR(st.st_mode) and st.st_uid == uid
            assert stat.S_IMODE(st.st_mode) == 0o700
        # Mallory pre-creates Alice's directory (or a symlink to his own): refused, not used.
        paths[0].rmdir()
        paths[0].symlink_to(paths[1])
        refused = as_user(ALICE, no_xdg, runtime_dir)
        assert refused.startswith(f"error runtime directory {paths[0]} is not a directory owned")
        paths[0].unlink()
        paths[0].mkdir(mode=0o777)
        os.chown(paths[0], MALLORY, MALLORY)
        assert as_user(ALICE, no_xdg, runtime_dir).startswith("error runtime directory")
    finally:
        for path in paths:
            if path.is_symlink():
                path.unlink()
            elif path.exists():
                path.rmdir()


def test_runtime_dir_under_xdg_runtime_dir() -> None:
    xdg = Path(tempfile.mkdtemp(prefix="ringfs-test-xdg-"))  # in /tmp: Alice must reach it
    try:
        os.chown(xdg, ALICE, ALICE)
        result = as_user(ALICE, {"XDG_RUNTIME_DIR": str(xdg)}, runtime_dir)
        assert result == f"ok {xdg}/ringfs"
        assert stat.S_IMODE((xdg / "ringfs").stat().st_mode) == 0o700
    finally:
        shutil.rmtree(xdg)
