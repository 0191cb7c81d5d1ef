"""A tiny trio echo server for the channel tests and benchmarks, and a fixture to run it.

Run as `python -m harness.echo_server SOCKET [--secret HEX] [--trust-forwarded]`. It serves
shared-memory and socket-transport channels through `channel.transport.serve.serve_connection` and
answers every command the same way:

* the reply body is the command's body; `value` is the CRC-32 of the input data;
* an output buffer gets the input data back (echo), or, without input data, `size` bytes
  of `offset & 0xff`;
* body {"sleep": s} answers after s seconds (out-of-order completion), {"fail": errno}
  answers -errno, {"whoami": True} answers [pid, uid, gid, groups] of the channel's identity.

It prints `ready`, then `open <channel_id> <peer pid>` and `closed <channel_id>` lines, so
tests can watch channel lifetimes from outside.
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import sys
import zlib
from pathlib import Path
from typing import Any

import trio

from channel.protocol.codec import Command, pack_body
from channel.transport.serve import serve_connection
from channel.transport.server_api import ServedChannel
from channel.transport.shm_server import Poller
from harness.reporting_process import ReportingProcess


def _answer(channel: ServedChannel, cmd: Command) -> None:
    data = channel.input_data(cmd)
    out = channel.output_buffer(cmd)
    n = 0
    if len(out):
        if cmd.data_len:
            n = min(len(out), cmd.data_len)
            out[:n] = data[:n]
        else:
            n = len(out)
            out[:] = bytes([cmd.offset & 0xFF]) * n
    value = zlib.crc32(data) if cmd.data_len else 0
    channel.complete(cmd.tag, 0, pack_body(cmd.body), data_len=n, value=value)


def make_handler(nursery: trio.Nursery) -> Any:
    async def later(channel: ServedChannel, cmd: Command, delay: float) -> None:
        await trio.sleep(delay)
        _answer(channel, cmd)

    def handle(channel: ServedChannel, cmd: Command) -> None:
        body = cmd.body
        if type(body) is dict:
            if "sleep" in body:
                nursery.start_soon(later, channel, cmd, float(body["sleep"]))
                return
            if "fail" in body:
                channel.complete(cmd.tag, -int(body["fail"]))
                return
            if "whoami" in body:
                c = channel.creds
                reply = pack_body([c.pid, c.uid, c.gid, list(c.groups)])
                channel.complete(cmd.tag, 0, reply)
                return
        _answer(channel, cmd)

    return handle


async def serve(path: str, secret: bytes | None, trust_forwarded: bool) -> None:
    listener = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await listener.bind(path)
    os.chmod(path, 0o600)
    listener.listen(64)
    poller = Poller()
    ids = itertools.count(1)

    def on_channel(channel: ServedChannel) -> None:
        print(f"open {channel.channel_id} {channel.peer.pid}", flush=True)
        channel.on_close.append(lambda: print(f"closed {channel.channel_id}", flush=True))

    async with trio.open_nursery() as nursery:
        handler = make_handler(nursery)
        nursery.start_soon(poller.run, handler)
        print("ready", flush=True)

        async def serve_one(conn: trio.socket.SocketType) -> None:
            await serve_connection(
                conn,
                poller,
                handler,
                next_channel_id=ids.__next__,
                secret=secret,
                trust_forwarded=lambda creds: trust_forwarded,
                on_channel=on_channel,
            )

        while True:
            conn, _ = await listener.accept()
            nursery.start_soon(serve_one, conn)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("socket")
    parser.add_argument("--secret", default=None, help="hex")
    parser.add_argument("--trust-forwarded", action="store_true")
    args = parser.parse_args()
    secret = bytes.fromhex(args.secret) if args.secret else None
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    trio.run(serve, args.socket, secret, args.trust_forwarded)


class EchoServer(ReportingProcess):
    """Runs the echo server as a child process; always killed on exit."""

    def __init__(self, socket_path: Path, *args: str) -> None:
        super().__init__(
            socket_path, ["harness.echo_server", str(socket_path), *args], "echo server"
        )


if __name__ == "__main__":
    main()
