"""The kernel giving back many inodes at once: the mount keeps serving.

After `drop_caches` (or under memory pressure) the kernel evicts every unused inode of the
mount and queues one FORGET per inode; the next time the driver reads /dev/fuse it receives
all of them as one BATCH_FORGET. The driver passes them on in commands that each fit a slot
(fusefront.bodies); before, it packed them into one body, the channel refused it
(`ValueError: body of 15063 bytes exceeds the slot's 8104`), the driver died and the mount
vanished.

The driver is stopped (SIGSTOP) while the caches are dropped, so that every forget is queued
before it reads again: one batch of the whole tree, every time, as when a busy or descheduled
driver meets memory pressure, rather than whatever batches the race with a running driver
happens to give.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from fusefront.bodies import FORGETS_PER_BODY
from tests.support.mounting import ringfs, ringfs_mount

FILES = 10_000
#: Seconds the forgets may take to reach the server after the driver resumes.
FORGET_DEADLINE = 60.0


def _drop_caches() -> None:
    Path("/proc/sys/vm/drop_caches").write_text("2")  # 2: dentries and inodes


def _batch_forgets(mnt: Path) -> int:
    """BATCH_FORGET commands the server has received from this mount's driver so far."""
    stats = ringfs("stats", str(mnt)).stdout
    found = re.search(r"BATCH_FORGET (\d+)", stats)
    return int(found.group(1)) if found else 0


def test_ten_thousand_forgets_at_once_leave_the_mount_serving() -> None:
    base = Path(tempfile.mkdtemp(prefix="ringfs-forget-"))
    try:
        with ringfs_mount(base) as m:
            tree = m.path / "tree"
            tree.mkdir()
            for i in range(FILES):
                (tree / f"f{i:05d}").write_bytes(b"%d\n" % i)
            before = _batch_forgets(m.path)
            os.kill(m.driver_pid, signal.SIGSTOP)
            try:
                _drop_caches()
            finally:
                os.kill(m.driver_pid, signal.SIGCONT)
            # The forgets go out before any later request is answered; wait until the
            # server has seen at least as many commands as one batch of the tree needs.
            needed = -(-FILES // FORGETS_PER_BODY)
            deadline = time.monotonic() + FORGET_DEADLINE
            while (sent := _batch_forgets(m.path) - before) < needed:
                assert time.monotonic() < deadline, f"only {sent} BATCH_FORGETs arrived"
                time.sleep(0.05)  # the server's counters cannot be waited on
            print(f"\n{FILES} files: {sent} BATCH_FORGET commands", file=sys.stderr)
            assert os.path.ismount(m.path)
            assert os.path.exists(f"/proc/{m.driver_pid}"), "the driver died"
            info = ringfs("stats", str(m.path)).stdout
            assert f"driver pid {m.driver_pid}" in info
            names = sorted(os.listdir(tree))
            assert names == [f"f{i:05d}" for i in range(FILES)]
            for i, name in enumerate(names):
                assert (tree / name).read_bytes() == b"%d\n" % i
            # and once more, with a running driver, as plain drop_caches meets it
            _drop_caches()
            assert (tree / "f00042").read_bytes() == b"42\n"
            assert (m.export / "tree" / "f09999").read_bytes() == b"9999\n"
            assert os.path.exists(f"/proc/{m.driver_pid}")
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(base)
