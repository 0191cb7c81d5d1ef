"""Permissions on a root-run mount, as an ordinary user sees them, against the export's own
file system.

Each scenario runs twice as the same non-root user: once beneath the mount, once beneath a
twin directory on the export itself (the local file system the server exports). Where the
right answer is the kernel's, the test compares the two instead of hard-coding it; where
the issue names an errno, it asserts that too. One mount per cache mode, plus the default
`ringfs up` (no options at all), each used by every scenario.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fusefront.options import MountOptions, OptionError
from tests.support.mounting import Mount, ringfs_mount
from tests.support.users import NOBODY, as_user, outcome

#: Supplementary groups of the test user: one it is given, one it is not.
MEMBER_GROUP = 4242
OTHER_GROUP = 4243

Scenario = Callable[[Path], Any]


@pytest.fixture(scope="module", params=["default", "none", "auto", "always"])
def mount(request: pytest.FixtureRequest) -> Iterator[Mount]:
    # Not under pytest's tmp_path: that sits in a 0700 directory other users cannot cross.
    base = Path(tempfile.mkdtemp(prefix="ringfs-perm-", dir="/tmp"))
    base.chmod(0o755)
    options = "" if request.param == "default" else f"cache={request.param}"
    try:
        with ringfs_mount(base, options) as m:
            yield m
    finally:
        shutil.rmtree(base, ignore_errors=True)


def on_both(mount: Mount, name: str, scenario: Scenario) -> tuple[Any, Any]:
    """Run `scenario` in a fresh directory beneath the mount and in one on the export."""
    results = []
    for root in (mount.path / name / "mount", mount.export / name / "export"):
        root.mkdir(parents=True)
        root.parent.chmod(0o755)
        root.chmod(0o777)
        results.append(scenario(root))
    return results[0], results[1]


def test_a_root_mount_is_for_every_user_with_permissions_enforced(mount: Mount) -> None:
    (line,) = [m for m in Path("/proc/mounts").read_text().splitlines() if str(mount.path) in m]
    options = line.split()[3].split(",")
    assert "allow_other" in options and "default_permissions" in options


def _search_bit(root: Path) -> dict[str, str]:
    top = root / "top"
    top.mkdir()
    (root / "links").mkdir(mode=0o777)
    (root / "links").chmod(0o777)
    f = top / "f"
    f.write_text("data")
    for path in (top, f):
        os.chown(path, NOBODY, NOBODY)

    def work() -> dict[str, str]:
        os.stat(f)  # the kernel now holds the whole path
        assert f.read_text() == "data"
        os.chmod(f, 0o644)
        os.chmod(top, 0o666)  # loses its search bit, for its owner too
        return {
            "stat": outcome(lambda: os.stat(f)),
            "chmod": outcome(lambda: os.chmod(f, 0o600)),
            "chown": outcome(lambda: os.chown(f, -1, MEMBER_GROUP)),
            "truncate": outcome(lambda: os.truncate(f, 0)),
            "link": outcome(lambda: os.link(f, root / "links" / "l")),
            "open": outcome(lambda: os.close(os.open(f, os.O_RDONLY))),
            "rename": outcome(lambda: os.rename(f, top / "g")),
            "unlink": outcome(lambda: os.unlink(f)),
        }

    got = as_user(work, groups=[MEMBER_GROUP])
    top.chmod(0o755)
    assert f.read_text() == "data"  # nothing happened to it
    return dict(got)


def test_a_directory_without_search_permission_denies_everything_beneath(mount: Mount) -> None:
    on_mount, on_export = on_both(mount, "search", _search_bit)
    assert on_mount == on_export
    assert set(on_mount.values()) == {"EACCES"}, on_mount


SETUID_MODES = (0o4777, 0o2777, 0o6777, 0o2767, 0o4766)


def _write_privileged_files(root: Path) -> dict[str, Any]:
    files = {}
    for mode in SETUID_MODES:
        for how in ("write", "truncate"):
            f = root / f"{how}-{mode:o}"
            f.write_bytes(b"x")
            f.chmod(mode)
            files[f.name] = (f, how)

    def work() -> dict[str, str]:
        def write(f: Path) -> None:
            fd = os.open(f, os.O_WRONLY)
            try:
                assert os.write(fd, b"y") == 1
            finally:
                os.close(fd)

        return {
            name: outcome(lambda f=f, how=how: write(f) if how == "write" else os.truncate(f, 0))
            for name, (f, how) in files.items()
        }

    done = as_user(work)
    return {
        name: (done[name], oct(f.stat().st_mode), f.read_bytes()) for name, (f, _) in files.items()
    }


def test_a_write_by_a_non_owner_clears_setuid_and_setgid_as_the_export_does(
    mount: Mount,
) -> None:
    on_mount, on_export = on_both(mount, "setuid", _write_privileged_files)
    assert on_mount == on_export
    for name, (result, _, data) in on_mount.items():
        assert result == "ok", name
        assert data == (b"y" if name.startswith("write") else b"")
    # and the mount says what the export holds
    for name, (_, mode, _) in on_mount.items():
        assert oct((mount.export / "setuid" / "mount" / name).stat().st_mode) == mode
    assert on_mount["write-4777"][1] == oct(0o100777)


def _fifos(root: Path) -> dict[str, str]:
    private, public = root / "private", root / "public"
    os.mkfifo(private, 0o600)
    os.mkfifo(public)
    public.chmod(0o666)

    def work() -> dict[str, str]:
        def opens(f: Path, flags: int) -> Callable[[], None]:
            return lambda: os.close(os.open(f, flags | os.O_NONBLOCK))

        return {
            "private rdwr": outcome(opens(private, os.O_RDWR)),
            "private read": outcome(opens(private, os.O_RDONLY)),
            "public rdwr": outcome(opens(public, os.O_RDWR)),
            "public read": outcome(opens(public, os.O_RDONLY)),
        }

    return dict(as_user(work))


def test_opening_a_fifo_checks_its_permissions(mount: Mount) -> None:
    on_mount, on_export = on_both(mount, "fifo", _fifos)
    assert on_mount == on_export
    assert on_mount["private rdwr"] == on_mount["private read"] == "EACCES"
    assert on_mount["public rdwr"] == on_mount["public read"] == "ok"


def _times(root: Path) -> dict[str, Any]:
    writable, readable = root / "writable", root / "readable"
    for f, mode in ((writable, 0o666), (readable, 0o644)):
        f.write_text("t")
        f.chmod(mode)
        os.utime(f, ns=(10**9, 10**9))
    explicit = (2 * 10**9, 2 * 10**9)

    def work() -> dict[str, str]:
        return {
            "touch writable": outcome(lambda: os.utime(writable)),
            "explicit writable": outcome(lambda: os.utime(writable, ns=explicit)),
            "touch readable": outcome(lambda: os.utime(readable)),
            "explicit readable": outcome(lambda: os.utime(readable, ns=explicit)),
        }

    result: dict[str, Any] = dict(as_user(work))
    result["touched"] = writable.stat().st_mtime_ns > 10**9
    result["untouched"] = readable.stat().st_mtime_ns == 10**9
    return result


def test_touch_needs_write_permission_and_explicit_times_ownership(mount: Mount) -> None:
    on_mount, on_export = on_both(mount, "times", _times)
    assert on_mount == on_export
    assert on_mount == {
        "touch writable": "ok",
        "explicit writable": "EPERM",
        "touch readable": "EACCES",
        "explicit readable": "EPERM",
        "touched": True,
        "untouched": True,
    }


def _chgrp(root: Path) -> dict[str, Any]:
    f = root / "mine"
    f.write_text("g")
    os.chown(f, NOBODY, NOBODY)

    def work() -> dict[str, Any]:
        return {
            "to a group it is not in": outcome(lambda: os.chown(f, -1, OTHER_GROUP)),
            "to its group": outcome(lambda: os.chown(f, -1, MEMBER_GROUP)),
            "gid seen by the user": os.stat(f).st_gid,
        }

    result: dict[str, Any] = dict(as_user(work, groups=[MEMBER_GROUP]))
    result["gid seen by root"] = f.stat().st_gid
    return result


def test_chown_to_a_group_needs_membership(mount: Mount) -> None:
    on_mount, on_export = on_both(mount, "chgrp", _chgrp)
    assert on_mount == on_export
    assert on_mount["to a group it is not in"] == "EPERM"
    assert on_mount["to its group"] == "ok"
    assert on_mount["gid seen by the user"] == on_mount["gid seen by root"] == MEMBER_GROUP
    assert (mount.export / "chgrp" / "mount" / "mine").stat().st_gid == MEMBER_GROUP


# -- the defaults themselves ---------------------------------------------------------------
def _defaults() -> list[str]:
    return sorted(MountOptions.parse(None).fuse_options())


def test_default_mount_options_for_root_and_for_other_users() -> None:
    assert {"allow_other", "default_permissions"} <= set(_defaults())
    as_nobody = as_user(_defaults)
    assert "default_permissions" in as_nobody and "allow_other" not in as_nobody
    opted_out = MountOptions.parse(["noallow_other,nodefault_permissions"]).fuse_options()
    assert not {"allow_other", "default_permissions"} & opted_out
    with pytest.raises(OptionError, match="contradict"):
        MountOptions.parse(["allow_other", "noallow_other"])


def test_the_opt_out_mounts_without_either() -> None:
    base = Path(tempfile.mkdtemp(prefix="ringfs-perm-", dir="/tmp"))
    base.chmod(0o755)
    try:
        _opted_out(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _opted_out(base: Path) -> None:
    with ringfs_mount(base, "noallow_other,nodefault_permissions") as m:
        (line,) = [x for x in Path("/proc/mounts").read_text().splitlines() if str(m.path) in x]
        options = line.split()[3].split(",")
        assert "allow_other" not in options and "default_permissions" not in options
        (m.path / "f").write_text("root alone")
        denied = as_user(lambda: outcome(lambda: os.stat(m.path / "f")))
        assert denied == "EACCES"
        assert stat.S_ISREG((m.path / "f").stat().st_mode)
