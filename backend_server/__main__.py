"""`python -m backend_server EXPORT --socket PATH`: the server process that `ringfs serve` runs."""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys

import trio

from backend_server.server import AccessPolicy, serve


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard one (a login shell's `ulimit -n 1024` is
    not meant for a file server); returns the limits now in force. The inode descriptor
    cache is sized from the result (see backend_server.inodes), so it stays bounded
    whatever the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (OSError, ValueError):
            pass
    return soft, hard


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
    raise_open_files_limit()
    if not os.path.isdir(args.export):
        print(f"ringfs serve: export {args.export} is not a directory", file=sys.stderr)
        return 1
    secret = None
    if args.secret_file:
        with open(args.secret_file, "rb") as f:
            secret = f.read().strip()
    policy = AccessPolicy(set(args.allow_uid), set(args.allow_gid))
    trio.run(lambda: serve(os.path.abspath(args.export), args.socket, policy=policy, secret=secret))
    return 0


if __name__ == "__main__":
    sys.exit(main())
