"""4 KiB random reads and stat calls: an application channel against the FUSE mount.

Mounts a scratch export with `ringfs up -o cache=none` (every operation reaches the server)
and measures, on the same file, in the same run, round after round:
  * direct: `DirectClient.readinto` (into the caller's buffer) and `DirectClient.stat`;
  * mount:  `os.pread` and `os.stat` through the mount;
  * export: `os.pread` and `os.stat` on the export directory itself (no ringfs at all).
Each rate is the median of the rounds. The last line is `direct_vs_fuse: ratio=X.X`, the
direct channel's 4 KiB random read rate over the mount's.

    .venv/bin/python benchmarks/direct_vs_fuse.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from fusefront.direct import DirectClient

REPO = Path(__file__).resolve().parent.parent
RINGFS = [sys.executable, "-m", "fusefront.cli.main"]
FILE_SIZE = 64 << 20
BLOCK = 4096


def _rate(op: Callable[[int], object], seconds: float, offsets: list[int]) -> float:
    """Operations per second of `op(offset)` over about `seconds`."""
    done = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for offset in offsets:
            op(offset)
        done += len(offsets)
        now = time.perf_counter()
        if now >= deadline:
            return done / (now - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    args = parser.parse_args()
    rounds, seconds = (5, 0.6) if args.quick else (9, 2.0)
    rng = random.Random(20261124)
    offsets = [rng.randrange(FILE_SIZE // BLOCK) * BLOCK for _ in range(512)]

    base = Path(tempfile.mkdtemp(prefix="ringfs-direct-bench-"))
    export, mnt = base / "export", base / "mnt"
    export.mkdir()
    mnt.mkdir()
    (export / "data").write_bytes(os.urandom(FILE_SIZE))
    up = [*RINGFS, "up", str(export), str(mnt), "--socket", str(base / "server.sock")]
    subprocess.run([*up, "-o", "cache=none"], cwd=REPO, check=True)
    rates: dict[str, list[float]] = {}
    try:
        with DirectClient.connect(mnt) as fs:
            direct_fd = fs.open("data")
            mount_fd = os.open(mnt / "data", os.O_RDONLY)
            export_fd = os.open(export / "data", os.O_RDONLY)
            buf = bytearray(BLOCK)
            ops: dict[str, Callable[[int], object]] = {
                "read direct": lambda off: fs.readinto(direct_fd, buf, off),
                "read mount": lambda off: os.pread(mount_fd, BLOCK, off),
                "read export": lambda off: os.pread(export_fd, BLOCK, off),
                "stat direct": lambda off: fs.stat("data"),
                "stat mount": lambda off: os.stat(mnt / "data"),
                "stat export": lambda off: os.stat(export / "data"),
            }
            assert fs.pread(direct_fd, BLOCK, offsets[0]) == os.pread(mount_fd, BLOCK, offsets[0])
            for n in range(rounds):
                for name, op in ops.items():  # interleaved: noise hits every column alike
                    rates.setdefault(name, []).append(_rate(op, seconds, offsets))
                print(f"round {n + 1}/{rounds}", file=sys.stderr, flush=True)
            os.close(mount_fd)
            os.close(export_fd)
            fs.close(direct_fd)
    finally:
        subprocess.run([*RINGFS, "umount", str(mnt)], cwd=REPO, check=False)
        subprocess.run(["rm", "-rf", str(base)], check=False)

    median = {name: statistics.median(values) for name, values in rates.items()}
    print(f"{'operation':<14}{'ops/s (median)':>16}{'µs/op':>10}")
    for name, rate in median.items():
        print(f"{name:<14}{rate:>16,.0f}{1e6 / rate:>10.1f}")
    print(f"stat: direct / mount = {median['stat direct'] / median['stat mount']:.1f}")
    print(f"direct_vs_fuse: ratio={median['read direct'] / median['read mount']:.1f}")


if __name__ == "__main__":
    main()
