"""Shared mappings on every cache mode, and cache=none's promise that reads see the export's
changes at once (which its page-cache reads must keep, see fusefront.cache)."""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.mounting import Mount, ringfs_mount

SIZE = 3 * mmap.PAGESIZE


@pytest.fixture(scope="module", params=["none", "auto", "always"])
def mount(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Mount]:
    with ringfs_mount(tmp_path_factory.mktemp(request.param), f"cache={request.param}") as m:
        yield m


def test_a_shared_writable_mapping_is_seen_by_read_and_by_the_export(mount: Mount) -> None:
    f = mount.path / "shared-rw"
    f.write_bytes(bytes(SIZE))
    with open(f, "r+b") as fh, mmap.mmap(fh.fileno(), SIZE, mmap.MAP_SHARED) as m:
        m[10:16] = b"mapped"
        m[mmap.PAGESIZE * 2 : mmap.PAGESIZE * 2 + 4] = b"tail"
        with open(f, "rb") as reader:  # the same pages, before any write-back
            assert os.pread(reader.fileno(), 6, 10) == b"mapped"
        m.flush()  # msync(MS_SYNC): now on the export
        exported = (mount.export / "shared-rw").read_bytes()
        assert exported[10:16] == b"mapped"
        assert exported[mmap.PAGESIZE * 2 : mmap.PAGESIZE * 2 + 4] == b"tail"
    assert f.read_bytes() == exported


def test_a_shared_read_only_mapping_of_a_read_only_descriptor(mount: Mount) -> None:
    f = mount.path / "shared-ro"
    content = os.urandom(SIZE)
    f.write_bytes(content)
    with open(f, "rb") as fh, mmap.mmap(fh.fileno(), SIZE, access=mmap.ACCESS_READ) as m:
        assert m[:] == content


def test_a_mapping_sees_what_is_written_through_the_mount(mount: Mount) -> None:
    f = mount.path / "written"
    f.write_bytes(bytes(SIZE))
    with open(f, "r+b") as fh, mmap.mmap(fh.fileno(), SIZE, mmap.MAP_SHARED) as m:
        assert m[:5] == bytes(5)
        os.pwrite(fh.fileno(), b"hello", 0)
        assert m[:5] == b"hello"


def test_cache_none_reads_see_every_change_made_in_the_export_at_once(tmp_path: Path) -> None:
    with ringfs_mount(tmp_path, "cache=none") as m:
        f, behind = m.path / "f", m.export / "f"
        behind.write_bytes(b"version 00")
        with open(f, "rb") as kept:
            for n in range(50):  # same size, back to back: no timestamp tick in between
                assert os.pread(kept.fileno(), 64, 0) == f"version {n:02}".encode()
                assert f.read_bytes() == f"version {n:02}".encode()
                with open(behind, "r+b") as w:
                    w.write(f"version {n + 1:02}".encode())
            grown = b"version 50 and more"
            behind.write_bytes(grown)
            assert os.pread(kept.fileno(), 64, 0) == grown
            behind.write_bytes(b"short")
            assert os.pread(kept.fileno(), 64, 0) == b"short"
