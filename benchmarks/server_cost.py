"""Cost of the server's half of a command, in one process, no other process involved: a
ClientSide posts `batch` commands (NOP, or a 4 KiB READ of a file under a scratch export), the
real `Poller` takes them in one pass of its loop (`Poller._pass`) and hands them to the real
`Backend.handler` over a real `ServerChannel`, and the client reaps the completions. What is
counted is the server's part: take, dispatch, the operation, complete, publish.

Instruction counts do not depend on the machine's load; run it under callgrind twice with
different round counts and divide the difference by the difference of commands (which cancels
start-up), for example:

    valgrind --tool=callgrind --callgrind-out-file=/dev/null .venv/bin/python \\
        benchmarks/server_cost.py read 16 200
    (same with 1200 rounds; `nop` for the NOP; RINGFS_PURE=1 for the reference)

`--collect-atstart=no --toggle-collect='*Poller._pass*'` is not needed: the client's post and
reap are in the count too and are the same before and after a server change. Without valgrind
it prints the wall time per command (noisy on a shared machine).
`bare` is a NOP answered by a handler that only completes it (the poller, the sides and
the client without the operations layer).
    .venv/bin/python benchmarks/server_cost.py {nop|read|bare} BATCH ROUNDS
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend_server.backend import Backend
from channel.protocol.codec import NO_BUFFER, NO_FIELDS, Command, Completion, pack_body
from channel.protocol.handshake import PeerCredentials
from channel.protocol.layout import Geometry, Region
from channel.protocol.opcodes import ROOT_INO, Op
from channel.protocol.sides import IMPLEMENTATION, ClientSide
from channel.transport import doorbell
from channel.transport.server_api import Identity
from channel.transport.shm_server import Poller, ServerChannel

TOKEN = bytes(range(16))
BLOCK = 4096


def _call(client: ClientSide, poller: Poller, backend: Backend, opcode: int, body: object,
          **fields: int) -> Completion:  # fmt: skip
    client.submit(opcode, pack_body(body), **fields)
    poller._pass(backend.handler)
    completion = client.reap()
    assert completion is not None and completion.status == 0, completion
    return completion


async def run(kind: str, batch: int, rounds: int, export: str) -> float:
    geometry = Geometry(sq_entries=64, cq_entries=64, slot_size=1024, buf_count=batch,
                        buf_size=BLOCK)  # fmt: skip
    region = Region.create(geometry)
    ours, theirs = socket.socketpair()
    me = PeerCredentials(os.getpid(), os.getuid(), os.getgid(), tuple(os.getgroups()))
    channel = ServerChannel(
        trio.socket.from_stdlib_socket(ours), Region.attach(os.dup(region.fd), geometry),
        doorbell.make_eventfd(), doorbell.make_eventfd(),
        Identity(token=TOKEN, creds=me, peer=me, role="app", channel_id=1),
    )  # fmt: skip
    client = ClientSide(region, TOKEN)
    backend = Backend(export)
    poller = Poller()
    poller.add(channel)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(backend.run)
            entry = _call(client, poller, backend, Op.LOOKUP, [b"data"], ino=ROOT_INO)
            fh = _call(client, poller, backend, Op.OPEN, [os.O_RDONLY], ino=entry.body[0][0]).value
            opcode, fields = Op.NOP, NO_FIELDS
            if kind == "read":
                opcode = Op.READ
                fields = (0, 0, fh, 0, BLOCK, 0, 0, 0, 0)
            post, reap, take = client.post, client.reap, poller._pass
            handler = backend.handler
            if kind == "bare":  # no operations layer: what the poller and the sides cost

                def handler(channel: ServerChannel, cmd: Command) -> None:
                    channel.complete(cmd.tag, 0)

            start = time.perf_counter()
            for _ in range(rounds):
                for i in range(batch):
                    post(opcode, b"", i if kind == "read" else NO_BUFFER, 0, fields)
                take(handler)
                for _ in range(batch):
                    got = reap()
                    assert got is not None and got.status == 0, got
            elapsed = time.perf_counter() - start
            nursery.cancel_scope.cancel()
    finally:
        channel.close()
        backend.close()
        theirs.close()
        region.close()
    return elapsed / (rounds * batch)


def main() -> int:
    kind = sys.argv[1] if len(sys.argv) > 1 else "nop"
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 20_000
    if kind not in ("nop", "read", "bare") or not 1 <= batch <= 64:
        print(__doc__.splitlines()[-1].strip(), file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="ringfs-server-cost-") as export:
        Path(export, "data").write_bytes(os.urandom(BLOCK * 4))
        each = trio.run(run, kind, batch, rounds, export)
    print(f"{IMPLEMENTATION} {kind} batch={batch}: {rounds * batch} commands, "
          f"{each * 1e6:.2f} us each")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
