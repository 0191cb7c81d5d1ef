"""What each cache mode promises about changes made in the export behind the server's back
(another program writing the export directly): the server watches the directories the
mount looked things up in and has the kernel forget what changed (backend_server.watcher),
so the mount shows the change within BOUND, however long the mode's own timeouts are, and
the mount's own changes cost no such round trip."""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fusefront.cache import CACHE_MODES
from tests.support.mounting import Mount, ringfs, ringfs_mount

#: What the tests allow, loaded by other agents' work (measured: 2-8 ms on a quiet minute);
#: far below auto's and always's timeouts, so only the watcher can make it.
BOUND = 2.0


def seen_within(check: Callable[[], bool], what: str) -> float:
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < BOUND, f"{what} not seen within {BOUND} s"
        time.sleep(0.002)  # polling what the mount shows: the change has nothing to wait on
    return time.monotonic() - start


def _size(path: Path) -> int:
    return os.stat(path).st_size


def _absent(path: Path) -> bool:
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno == errno.ENOENT
    return False


@pytest.mark.parametrize("cache", ["none", "auto", "always"])
def test_a_change_behind_the_servers_back_is_seen_within_the_bound(
    tmp_path: Path, cache: str
) -> None:
    assert CACHE_MODES["auto"].entry_timeout > 10 * BOUND  # the watcher is what is tested
    with ringfs_mount(tmp_path, f"cache={cache}") as m:
        sub, shown = m.export / "sub", m.path / "sub"
        sub.mkdir()
        (sub / "f").write_bytes(b"abc")
        (sub / "gone").write_bytes(b"")
        (sub / "old").write_bytes(b"")
        # the mount caches all of it: names, attributes, and the file's pages
        assert (shown / "f").read_bytes() == b"abc"
        assert sorted(os.listdir(shown)) == ["f", "gone", "old"]
        for name in ("gone", "old"):
            os.stat(shown / name)
        with open(sub / "f", "ab") as writer:  # data, seen once the writer closes
            writer.write(b"defg")
        seen_within(lambda: _size(shown / "f") == 7, "an append")
        assert (shown / "f").read_bytes() == b"abcdefg"
        os.chmod(sub / "f", 0o600)
        seen_within(lambda: os.stat(shown / "f").st_mode & 0o777 == 0o600, "a chmod")
        os.unlink(sub / "gone")
        seen_within(lambda: _absent(shown / "gone"), "an unlink")
        os.rename(sub / "old", sub / "new")
        seen_within(lambda: _absent(shown / "old") and (shown / "new").exists(), "a rename")
        (sub / "created").write_bytes(b"1")
        seen_within(lambda: "created" in os.listdir(shown), "a new name in the listing")
        assert sorted(os.listdir(shown)) == ["created", "f", "new"]


def _watch_calls(m: Mount) -> int:
    """WATCH commands the driver has sent (counted as "other" by `ringfs stats`)."""
    report = json.loads(ringfs("stats", str(m.path), "--json").stdout)
    return int(report["channels"][0]["commands_by_opcode"].get("other", 0))


def test_the_mounts_own_changes_are_not_reported_back(tmp_path: Path) -> None:
    with ringfs_mount(tmp_path) as m:
        work = m.path / "work"
        work.mkdir()
        before = _watch_calls(m)
        for i in range(100):
            (work / f"f{i}").write_bytes(b"x")
            os.chmod(work / f"f{i}", 0o600)
            os.rename(work / f"f{i}", work / f"g{i}")
            os.unlink(work / f"g{i}")
        assert _watch_calls(m) == before  # 400 changes, no notice
        (m.export / "work" / "outside").write_bytes(b"1")  # while one from elsewhere is
        seen_within(lambda: _watch_calls(m) > before, "a notice for an outside change")
