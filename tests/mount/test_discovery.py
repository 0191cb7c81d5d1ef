"""Finding a mount's driver from its mount point alone, without an xattr round trip: the
description the driver publishes keyed by the mount's device number (fusefront.mountinfo),
on mounts with and without xattrs; what is not the mount's own is not trusted."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fusefront.direct import DirectClient, control_socket
from fusefront.mountinfo import info_path, published_info, read_info
from tests.support.mounting import debug_mount, requests_seen, ringfs_mount
from tests.support.users import NOBODY


def _device(path: Path) -> str:
    st = os.stat(path)
    return f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"


@pytest.mark.parametrize("options", ["", "noxattr", "cache=none", "cache=always,noxattr"])
def test_discovery_works_on_every_kind_of_mount(tmp_path: Path, options: str) -> None:
    with ringfs_mount(tmp_path, options) as m:
        published = info_path(os.geteuid(), _device(m.path))
        assert os.path.isfile(published)
        info = published_info(m.path)
        assert info is not None and info.driver_pid == m.driver_pid
        assert info.server_pid == m.server_pid and info.device == _device(m.path)
        assert control_socket(m.path) == info.control_socket
        assert read_info(str(m.path)) == info
        (m.export / "a").write_bytes(b"found")
        with DirectClient.connect(m.path) as fs:
            assert fs.stat("a").st_size == 5
    assert not os.path.exists(published)  # removed at unmount


def test_discovery_sends_no_getxattr(tmp_path: Path) -> None:
    with debug_mount(tmp_path) as (mnt, out):
        before = requests_seen(out, "GETXATTR")
        for _ in range(20):
            control_socket(mnt)
        assert requests_seen(out, "GETXATTR") == before


def test_a_description_that_is_not_the_mounts_own_is_not_trusted(tmp_path: Path) -> None:
    with ringfs_mount(tmp_path) as m:
        path = info_path(os.geteuid(), _device(m.path))
        genuine = Path(path).read_bytes()
        fake = json.loads(genuine) | {"control_socket": "/tmp/fake.sock"}
        try:
            # another user's file (say, planted where the owner's should be): ignored
            Path(path).write_text(json.dumps(fake))
            os.chown(path, NOBODY, NOBODY)
            assert published_info(m.path) is None
            # the owner's file describing another device: ignored
            os.chown(path, 0, 0)
            Path(path).write_text(json.dumps(fake | {"device": "0:1"}))
            assert published_info(m.path) is None
            # then the root attribute answers (a mount with xattrs)
            assert control_socket(m.path) == json.loads(genuine)["control_socket"]
        finally:
            Path(path).write_bytes(genuine)
