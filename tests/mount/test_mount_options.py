"""Mount options sshfs users reach for: uid=/gid=/umask= presentation, entry_timeout= and
attr_timeout=, the default fsname, and the cache mode in the mount's type. Parsed as units,
then through real mounts."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fusefront.options import MAX_ID, MountOptions, OptionError
from tests.support.mounting import ringfs, ringfs_mount
from tests.support.worlds import temporary_world

NOBODY = 65534


def _mount_line(mnt: Path) -> list[str]:
    """The /proc/mounts fields (source, point, type, options) of the mount at `mnt`."""
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        if fields[1] == str(mnt):
            return fields
    raise AssertionError(f"{mnt} is not in /proc/mounts")


def _info(mnt: Path) -> dict[str, object]:
    options: dict[str, object] = json.loads(os.getxattr(mnt, "user.ringfs.info"))["options"]
    return options


# -- parsing ------------------------------------------------------------------------------
def test_presentation_options_are_parsed() -> None:
    opts = MountOptions.parse(["uid=1000,gid=100", "umask=027"])
    assert (opts.presentation.uid, opts.presentation.gid) == (1000, 100)
    assert opts.presentation.umask == 0o027
    assert not {"uid=1000", "gid=100", "umask=027"} & opts.fuse_options("/srv/x")
    mode = stat.S_IFREG | 0o4755
    shown = opts.presentation.apply([7, mode, 1, 0, 0, 0, 5, 1, 4096, 0, 0, 0])
    assert shown[3:5] == [1000, 100]
    assert shown[1] == stat.S_IFREG | 0o750  # libfuse's umask=: 0777 & ~umask, type kept


def test_timeouts_override_the_cache_mode_whatever_the_order() -> None:
    opts = MountOptions.parse(["attr_timeout=7.5,cache=none,entry_timeout=0.25"])
    assert opts.cache.name == "none"
    assert (opts.cache.entry_timeout, opts.cache.attr_timeout) == (0.25, 7.5)
    assert opts.cache.direct_io  # the rest of the mode stays
    plain = MountOptions.parse(["cache=always"])
    assert (plain.cache.entry_timeout, plain.cache.attr_timeout) == (86400.0, 86400.0)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("entry_timeout=abc", "entry_timeout=abc: expected a number of seconds >= 0"),
        ("attr_timeout=-1", "attr_timeout=-1: expected a number of seconds >= 0"),
        ("attr_timeout=inf", "attr_timeout=inf: expected a number of seconds >= 0"),
        ("entry_timeout=", "entry_timeout=: expected a number of seconds >= 0"),
        ("uid=-3", f"uid=-3: expected a number 0-{MAX_ID}"),
        ("gid=alice", f"gid=alice: expected a number 0-{MAX_ID}"),
        (f"uid={MAX_ID + 1}", f"uid={MAX_ID + 1}: expected a number 0-{MAX_ID}"),
        ("umask=999", "umask=999: expected an octal mode 0-777"),
        ("umask=1777", "umask=1777: expected an octal mode 0-777"),
    ],
)
def test_bad_values_are_refused(option: str, message: str) -> None:
    with pytest.raises(OptionError) as caught:
        MountOptions.parse([option])
    assert str(caught.value) == message


def test_a_bad_value_is_a_one_line_error_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "export").mkdir()
    (tmp_path / "mnt").mkdir()
    done = ringfs(
        "up", str(tmp_path / "export"), str(tmp_path / "mnt"), "-o", "attr_timeout=soon",
        "--socket", str(tmp_path / "s.sock"), check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr == "ringfs: attr_timeout=soon: expected a number of seconds >= 0\n"
    assert not os.path.ismount(tmp_path / "mnt")


def test_fsname_defaults_to_the_source_and_is_escaped_for_libfuse() -> None:
    defaults_off = "noallow_other,nodefault_permissions"
    opts = MountOptions.parse(["cache=none,writeback", defaults_off])
    assert opts.fuse_options("/srv/a,b") == {"fsname=/srv/a\\,b", "subtype=ringfs.none.writeback"}
    given = MountOptions.parse(["fsname=mine", defaults_off])
    assert given.fuse_options("/srv/x") == {"fsname=mine", "subtype=ringfs.auto"}
    assert given.describe("/srv/x")["fsname"] == "mine"


# -- on a mount ---------------------------------------------------------------------------
@pytest.fixture
def world() -> Iterator[Path]:
    """A base directory other users can cross (pytest's tmp_path sits in a 0700 one)."""
    with temporary_world("ringfs-options-") as base:
        yield base


def test_uid_gid_umask_change_only_what_stat_shows(world: Path) -> None:
    export = world / "export"
    export.mkdir()
    secret = export / "secret"
    secret.write_bytes(b"root's")
    secret.chmod(0o600)
    (export / "dir").mkdir(mode=0o700)
    with ringfs_mount(world, f"uid={NOBODY},gid={NOBODY},umask=002,allow_other") as m:
        for path in (m.path / "secret", m.path / "dir", m.path):
            st = path.stat()
            assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY), path
            assert stat.S_IMODE(st.st_mode) == 0o775, path
        assert stat.S_ISDIR((m.path / "dir").stat().st_mode)
        # readdir's attributes are presented too
        (entry,) = [e for e in os.scandir(m.path) if e.name == "secret"]
        assert entry.stat().st_uid == NOBODY
        # The export keeps its real owner and mode ...
        real = secret.stat()
        assert (real.st_uid, stat.S_IMODE(real.st_mode)) == (0, 0o600)
        # ... and the server checks those: uid 65534 is shown as the owner of a 0775 file
        # but reads it as the caller it is, and is refused.
        denied = subprocess.run(
            ["cat", str(m.path / "secret")],
            user=NOBODY, group=NOBODY, extra_groups=[], capture_output=True, text=True,
        )  # fmt: skip
        assert denied.returncode != 0
        assert "Permission denied" in denied.stderr
        # chmod through the mount changes the real mode; stat still shows the presentation
        os.chmod(m.path / "secret", 0o644)
        assert stat.S_IMODE(secret.stat().st_mode) == 0o644
        assert stat.S_IMODE((m.path / "secret").stat().st_mode) == 0o775
        assert _info(m.path)["uid"] == NOBODY
        assert _info(m.path)["umask"] == "002"


def test_attr_timeout_0_sees_a_change_in_the_export_at_once(tmp_path: Path) -> None:
    with ringfs_mount(tmp_path, "cache=always,attr_timeout=0") as m:
        assert (_info(m.path)["attr_timeout"], _info(m.path)["entry_timeout"]) == (0.0, 86400.0)
        (m.export / "f").write_bytes(b"x")
        (m.export / "f").chmod(0o644)
        assert stat.S_IMODE((m.path / "f").stat().st_mode) == 0o644
        (m.export / "f").chmod(0o600)  # behind the mount's back
        assert stat.S_IMODE((m.path / "f").stat().st_mode) == 0o600


def test_a_long_attr_timeout_keeps_the_cached_attributes(tmp_path: Path) -> None:
    # Written before the mount: the export watcher's notice of a write made while mounted
    # (IN_CLOSE_WRITE) may arrive after the first stat and rightly drop what it cached.
    export = tmp_path / "export"
    export.mkdir()
    (export / "f").write_bytes(b"x")
    options = "cache=none,attr_timeout=3600,entry_timeout=3600"
    with ringfs_mount(tmp_path, options, export=export) as m:
        assert (_info(m.path)["attr_timeout"], _info(m.path)["entry_timeout"]) == (3600.0, 3600.0)
        assert (m.path / "f").stat().st_size == 1
        # A change the server's export watcher does not report (it reports a chmod, say:
        # tests/mount/test_export_watch.py): a truncate by path, no writer closing the file.
        os.truncate(m.export / "f", 0)
        # the kernel trusts what it was told for the next hour: the old size stays
        assert (m.path / "f").stat().st_size == 1


def test_entry_timeout_0_sees_a_name_removed_from_the_export_at_once(tmp_path: Path) -> None:
    with ringfs_mount(tmp_path, "cache=always,entry_timeout=0") as m:
        (m.export / "gone").write_bytes(b"x")
        assert (m.path / "gone").exists()
        (m.export / "gone").unlink()
        assert not (m.path / "gone").exists()


def test_fsname_is_the_export_and_the_type_carries_the_cache_mode(tmp_path: Path) -> None:
    export = tmp_path / "the,export"
    export.mkdir()
    with ringfs_mount(tmp_path, "cache=none", export=export) as m:
        source, _, fstype, _ = _mount_line(m.path)[:4]
        assert (source, fstype) == (str(export), "fuse.ringfs.none")
        df = subprocess.run(
            ["df", "--output=source", str(m.path)], capture_output=True, text=True, check=True
        )
        assert df.stdout.split()[-1] == str(export)
        assert _info(m.path)["fsname"] == str(export)


def test_a_given_fsname_wins(tmp_path: Path) -> None:
    with ringfs_mount(tmp_path, "fsname=backup-a,writeback") as m:
        source, _, fstype, _ = _mount_line(m.path)[:4]
        assert (source, fstype) == ("backup-a", "fuse.ringfs.auto.writeback")
