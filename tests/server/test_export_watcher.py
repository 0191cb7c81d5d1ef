"""The server's inotify watcher on a real export directory, in one process: events become
the notices drivers apply, its own changes (`around`) are not reported, and running out of
room (the watch limit, a queue overflow) becomes one "forget everything" notice."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from backend_server import watcher as watcher_module
from backend_server.coherence import ALL, ENTRY, INODE, Notice
from backend_server.inodes import InodeTable
from backend_server.session import Session
from backend_server.watcher import IN_Q_OVERFLOW, ExportWatcher
from channel.protocol.opcodes import ROOT_INO


@pytest.fixture
def setup(tmp_path: Path) -> tuple[InodeTable, ExportWatcher, list[Notice], Session]:
    table = InodeTable(str(tmp_path))
    reported: list[Notice] = []
    watcher = ExportWatcher(table, reported.extend)
    assert watcher.fd >= 0, "inotify is available on this machine"
    return table, watcher, reported, Session(None, None)


def _subdir(table: InodeTable, session: Session, name: bytes) -> int:
    found = table.register_entry(session, table.root, table.root.fd, name)
    assert found is not None
    return found[0].number


def test_changes_behind_the_servers_back_become_notices(
    setup: tuple[InodeTable, ExportWatcher, list[Notice], Session], tmp_path: Path
) -> None:
    table, watcher, reported, session = setup
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"1")
    d = _subdir(table, session, b"d")
    watcher.watch(table.root)
    watcher.watch(table.get(session, d))
    with table.pinned(table.get(session, d)) as dir_fd:
        f = table.register_entry(session, table.get(session, d), dir_fd, b"f")
    assert f is not None
    (tmp_path / "d" / "new").write_bytes(b"x")  # created and closed after writing
    os.chmod(tmp_path / "d" / "f", 0o600)
    os.rename(tmp_path / "d" / "new", tmp_path / "d" / "moved")
    watcher.drain()
    assert [ENTRY, d, b"new"] in reported and [INODE, d] in reported
    assert [INODE, f[0].number] in reported  # a held child's attributes: by its number
    assert [ENTRY, d, b"moved"] in reported
    reported.clear()
    with watcher.around():  # the server's own change
        (tmp_path / "d" / "mine").write_bytes(b"y")
    watcher.drain()
    assert reported == []
    table.close()


def test_running_out_of_watches_forgets_everything_and_starts_over(
    setup: tuple[InodeTable, ExportWatcher, list[Notice], Session],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    table, watcher, reported, session = setup
    monkeypatch.setattr(watcher_module, "MAX_WATCHED_DIRS", 3)
    numbers = []
    for i in range(4):
        (tmp_path / f"d{i}").mkdir()
        numbers.append(_subdir(table, session, f"d{i}".encode()))
    for number in numbers[:3]:
        watcher.watch(table.get(session, number))
    assert reported == []
    watcher.watch(table.get(session, numbers[3]))
    assert reported == [[ALL, ROOT_INO]]
    assert watcher.watches(numbers[3]) and not watcher.watches(numbers[0])
    reported.clear()
    (tmp_path / "d3" / "f").write_bytes(b"")  # the new watch works
    (tmp_path / "d0" / "f").write_bytes(b"")  # the dropped one reports nothing
    watcher.drain()
    assert [ENTRY, numbers[3], b"f"] in reported
    assert not [n for n in reported if n[1] == numbers[0]]
    table.close()


def test_a_queue_overflow_forgets_everything(
    setup: tuple[InodeTable, ExportWatcher, list[Notice], Session],
) -> None:
    table, watcher, _reported, _session = setup
    overflow = struct.pack("iIII", -1, IN_Q_OVERFLOW, 0, 0)  # what the kernel queues
    assert watcher._notices(overflow) == [[ALL, ROOT_INO]]
    table.close()
