"""Cost of one round trip through the two sides in one process, no I/O: ClientSide.submit,
ServerSide.take, ServerSide.complete, ClientSide.reap. For instruction counts that do not
depend on the machine's load, run it under callgrind twice with different counts and divide
the difference (which cancels start-up):

    valgrind --tool=callgrind --callgrind-out-file=/dev/null .venv/bin/python \\
        benchmarks/sides_cost.py 2000
    (same with 12000; RINGFS_PURE=1 for the reference)

Without valgrind it prints the wall time per round trip (noisy on a shared machine).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from channel.protocol.codec import pack_body
from channel.protocol.layout import Geometry, Region
from channel.protocol.opcodes import Op
from channel.protocol.sides import IMPLEMENTATION, ClientSide, Rejected, ServerSide

TOKEN = bytes(range(16))


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    region = Region.create(Geometry(sq_entries=64, cq_entries=64, slot_size=1024, buf_count=2))
    client, server = ClientSide(region, TOKEN), ServerSide(region, TOKEN)
    body = pack_body(["name.txt"])
    reply = pack_body([1, 2, 3])
    start = time.perf_counter()
    for _ in range(n):
        client.submit(Op.LOOKUP, body, ino=1)
        cmd = server.take()
        assert cmd is not None and not isinstance(cmd, Rejected)
        server.complete(cmd.tag, 0, reply, value=1)
        assert client.reap() is not None
    elapsed = time.perf_counter() - start
    print(f"{IMPLEMENTATION}: {n} round trips, {elapsed / n * 1e6:.2f} us each")
    return 0


if __name__ == "__main__":
    sys.exit(main())
