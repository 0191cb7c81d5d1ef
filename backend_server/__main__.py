"""`python -m backend_server EXPORT --socket PATH`: the server process that `ringfs serve` runs."""

from __future__ import annotations

import argparse
import logging
import os
import sys

import trio

from backend_server.server import AccessPolicy, SocketInUse, serve
from channel.handshake import read_secret


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ringfs serve", description="Serve EXPORT over ringfs.")
    p.add_argument("export")
    p.add_argument("--socket", required=True)
    p.add_argument("--allow-uid", type=int, action="append", default=[])
    p.add_argument("--allow-gid", type=int, action="append", default=[])
    p.add_argument("--secret-file")
    p.add_argument("--debug", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s ringfs-server[%(process)d] %(levelname)s %(message)s",
    )
    if not os.path.isdir(args.export):
        print(f"ringfs serve: export {args.export} is not a directory", file=sys.stderr)
        return 1
    secret = None
    if args.secret_file:
        try:
            secret = read_secret(args.secret_file)
        except OSError as exc:
            print(f"ringfs serve: cannot read the secret file: {exc}", file=sys.stderr)
            return 1
    policy = AccessPolicy(set(args.allow_uid), set(args.allow_gid))
    try:
        trio.run(
            lambda: serve(os.path.abspath(args.export), args.socket, policy=policy, secret=secret)
        )
    except SocketInUse as exc:
        print(f"ringfs serve: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
