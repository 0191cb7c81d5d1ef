"""Fixtures of the server tests: a real server process on a world-searchable export, a
root client on it, and a fresh directory per test."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from channel.transport.shm_client import BlockingClient
from tests.support.server_fs import FS
from tests.support.server_harness import ServerProcess, temporary_server


# -- fixtures -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with temporary_server("ringfs-ops-") as srv:
        yield srv


@pytest.fixture
def fresh_server() -> Iterator[ServerProcess]:
    """A server of its own, for tests that count the server's descriptors."""
    with temporary_server("ringfs-fresh-") as srv:
        yield srv


@pytest.fixture
def client(server: ServerProcess) -> Iterator[BlockingClient]:
    c = server.client()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def fs(client: BlockingClient) -> FS:
    return FS(client)


@pytest.fixture
def work(server: ServerProcess, fs: FS, request: pytest.FixtureRequest) -> tuple[Path, int]:
    """A fresh directory (0777) in the export for one test: its path and inode number."""
    name = request.node.name.replace("[", "_").replace("]", "_").encode()[:200]
    path = server.export / name.decode()
    if path.exists():
        shutil.rmtree(path)
    path.mkdir()
    path.chmod(0o777)
    return path, fs.ino(name)
