"""Adaptive polling on a real mount: an idle ringfs parks, a busy one does not ring per command.

The figures come from `ringfs stats --json` (the channel's shared counters and the processes'
CPU time), as a user would read them.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from tests.support.mounting import ringfs, ringfs_mount

#: The measurement window of the idle test (a period measured, not a wait for something).
IDLE_WINDOW = 4.0
IDLE_CPU_LIMIT = 0.02
BUSY_READS = 5000
WAKEUPS_PER_COMMAND_LIMIT = 0.05


def _stats(mnt: Path) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(ringfs("stats", str(mnt), "--json").stdout)
    return report


def _totals(report: dict[str, Any]) -> tuple[int, int, int]:
    """(commands, wake-ups sent by either side, sleeps of either side) of the driver channel."""
    (ch,) = report["channels"]
    wakeups = ch["wakeups_sent_by_client"] + ch["wakeups_sent_by_server"]
    return ch["commands"], wakeups, ch["client_sleeps"] + ch["server_sleeps"]


def test_an_idle_mount_uses_under_two_percent_of_a_core(tmp_path: Path) -> None:
    with ringfs_mount(tmp_path) as m:
        (m.path / "f").write_bytes(b"x" * 100_000)  # the channel has been busy
        assert (m.path / "f").read_bytes() == b"x" * 100_000
        before = _stats(m.path)
        time.sleep(IDLE_WINDOW)
        after = _stats(m.path)
    used = sum(after["cpu_seconds"].values()) - sum(before["cpu_seconds"].values())
    print(f"\nidle mount: {100 * used / IDLE_WINDOW:.2f}% of a core (driver + server)")
    assert used / IDLE_WINDOW < IDLE_CPU_LIMIT
    # the consumers parked (and re-checked now and then) meanwhile
    assert _totals(after)[2] > _totals(before)[2]


def test_a_busy_mount_does_not_ring_per_command(tmp_path: Path) -> None:
    with ringfs_mount(tmp_path, "cache=none") as m:
        (m.export / "f").write_bytes(os.urandom(1 << 20))
        fd = os.open(m.path / "f", os.O_RDONLY)
        try:
            before = _totals(_stats(m.path))
            for i in range(BUSY_READS):
                assert len(os.pread(fd, 4096, (i * 4096) % (1 << 20))) == 4096
            after = _totals(_stats(m.path))
        finally:
            os.close(fd)
    commands = after[0] - before[0]
    wakeups = after[1] - before[1]
    print(f"\nbusy mount: {wakeups} wake-ups for {commands} commands")
    assert commands >= BUSY_READS  # cache=none: every pread reaches the server (GETATTR, READ)
    assert wakeups / commands < WAKEUPS_PER_COMMAND_LIMIT
