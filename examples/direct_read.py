"""Read a file on a ringfs mount through an application channel of one's own.

    python examples/direct_read.py MOUNTPOINT PATH [--block 4096]

Connects to the mount's driver (found from the mount point alone), opens PATH (relative to
the mount) and reads it block by block straight into one reusable buffer (`readinto`: from
the shared region into the buffer, no intermediate copy), printing its size, a SHA-256 and
how long the reads took. Nothing here is a system call per read: commands and completions
travel through shared memory.
"""

from __future__ import annotations

import argparse
import hashlib
import time

from fusefront.direct import DirectClient


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mountpoint")
    parser.add_argument("path", help="relative to the mount")
    parser.add_argument("--block", type=int, default=4096)
    args = parser.parse_args()

    buffer = bytearray(args.block)
    view = memoryview(buffer)
    digest = hashlib.sha256()
    with DirectClient.connect(args.mountpoint) as fs:
        size = fs.stat(args.path).st_size
        fd = fs.open(args.path)
        start = time.perf_counter()
        offset = reads = 0
        while (n := fs.readinto(fd, buffer, offset)) > 0:
            digest.update(view[:n])
            offset += n
            reads += 1
        elapsed = time.perf_counter() - start
        fs.close(fd)
    assert offset == size, (offset, size)
    print(f"{args.path}: {size} bytes, sha256 {digest.hexdigest()}")
    print(f"{reads} reads of up to {args.block} bytes in {elapsed * 1e3:.1f} ms "
          f"({elapsed / max(reads, 1) * 1e6:.1f} µs each)")  # fmt: skip


if __name__ == "__main__":
    main()
