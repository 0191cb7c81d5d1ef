"""What the kernel's per-write `security.capability` question costs, against a whole write.

Mounts ringfs (cache=auto, the default; and -o noxattr) and pyfuse3's passthroughfs over
directories of one tmpfs, then times, in interleaved rounds (medians; this machine's speed
drifts within a minute): an `fgetxattr(security.capability)` loop on a file of the default
mount (ENODATA, which the driver answers without asking the server), the same on
passthroughfs (the kernel answers: it implements no xattrs), and 4 KiB `pwrite` loops on
all three (on ringfs's default mount each is a GETXATTR and a WRITE).

    .venv/bin/python benchmarks/xattr_cost.py [--rounds N] [--calls N]
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from fio_suite import mounted


def per_call_us(call: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - start) / calls * 1e6


def no_capability(fd: int) -> Callable[[], object]:
    """fgetxattr, as the kernel's own question needs no path walk either."""

    def call() -> None:
        try:
            os.getxattr(fd, "security.capability")
        except OSError as exc:
            if exc.errno not in (errno.ENODATA, errno.EOPNOTSUPP):
                raise

    return call


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--calls", type=int, default=2000)
    args = p.parse_args()
    block = b"w" * 4096
    with tempfile.TemporaryDirectory(dir="/dev/shm") as tmp, contextlib.ExitStack() as stack:
        base = Path(tmp)
        cases: dict[str, Callable[[], object]] = {}
        for name in ("ringfs-auto", "ringfs-noxattr", "passthrough"):
            (base / f"export-{name}").mkdir()
            target = stack.enter_context(mounted(name, base / f"export-{name}", base))
            f = target.path / "f"
            fd = os.open(f, os.O_RDWR | os.O_CREAT, 0o644)
            stack.callback(os.close, fd)
            os.pwrite(fd, block * 16, 0)
            if name != "ringfs-noxattr":
                cases[f"{name} getxattr security.capability"] = no_capability(fd)
            cases[f"{name} pwrite 4 KiB"] = lambda fd=fd: os.pwrite(fd, block, 0)
        rounds: dict[str, list[float]] = {case: [] for case in cases}
        for call in cases.values():
            call()  # warm: the first question, the first write
        for _ in range(args.rounds):
            for case, call in cases.items():
                rounds[case].append(per_call_us(call, args.calls))
    for case, values in rounds.items():
        spread = f"{min(values):.1f}-{max(values):.1f}"
        print(f"{case}: {statistics.median(values):.1f} us per call (rounds {spread})")
    ratio = statistics.median(rounds["ringfs-auto getxattr security.capability"]) / (
        statistics.median(rounds["passthrough pwrite 4 KiB"])
    )
    print(f"xattr_cost: getxattr_vs_passthrough_write={ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
