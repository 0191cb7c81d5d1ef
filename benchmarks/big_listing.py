"""Listing a big directory: `ls -f` through the mount against the export, in the same run.

Creates ENTRIES files on a scratch export directly, mounts it with `ringfs up` (default
options), and times `ls -f` of the directory: through the mount once cold (the kernel knows
none of the entries yet: each costs a READDIRPLUS entry and a lookup counted by the server)
and then warm (median of the rounds: the kernel holds them all), and on the export itself
(median of the rounds). It also reports the server's descriptor count afterwards, which the
bounded inode cache keeps far below the number of inodes the kernel holds.

    .venv/bin/python benchmarks/big_listing.py [--entries 100000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RINGFS = [sys.executable, "-m", "fusefront.cli.main"]


def _ls(directory: Path) -> tuple[float, int]:
    """Seconds `ls -f` takes, and how many names it printed."""
    start = time.perf_counter()
    out = subprocess.run(["ls", "-f", str(directory)], capture_output=True, check=True).stdout
    return time.perf_counter() - start, out.count(b"\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--entries", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="ringfs-listing-") as scratch:
        base = Path(scratch)
        export, mnt = base / "export", base / "mnt"
        big = export / "big"
        big.mkdir(parents=True)
        mnt.mkdir()
        fd = os.open(big, os.O_RDONLY | os.O_DIRECTORY)
        for i in range(args.entries):
            os.close(os.open(f"f{i:07d}", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
        os.close(fd)
        up = [*RINGFS, "up", str(export), str(mnt), "--socket", str(base / "sock")]
        subprocess.run(up, cwd=REPO, check=True, capture_output=True)
        try:
            info = json.loads(os.getxattr(mnt, "user.ringfs.info"))
            cold, names = _ls(mnt / "big")
            warm = statistics.median(_ls(mnt / "big")[0] for _ in range(args.rounds))
            fds = len(os.listdir(f"/proc/{info['server_pid']}/fd"))
        finally:
            subprocess.run([*RINGFS, "umount", str(mnt)], cwd=REPO, check=False)
        direct, expected = _ls(big)
        direct = statistics.median([direct, *(_ls(big)[0] for _ in range(args.rounds - 1))])
    print(f"entries listed: mount {names}, export {expected}")
    print(f"mount cold {cold:.3f} s ({names / cold:,.0f} entries/s)")
    print(f"mount warm {warm:.3f} s ({names / warm:,.0f} entries/s)")
    print(f"export     {direct:.3f} s")
    print(f"server descriptors after listing: {fds}")
    print(
        f"big_listing: entries={args.entries} cold={cold:.3f} warm={warm:.3f} export={direct:.3f}"
    )
    return 0 if names == expected else 1


if __name__ == "__main__":
    sys.exit(main())
