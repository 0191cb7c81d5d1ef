"""`ringfs serve EXPORT --socket PATH`: run the file-system server in the foreground.

fusefront never imports backend_server: this execs `python -m backend_server` with the same
arguments.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from fusefront.cli.logs import add_log_arguments
from fusefront.cli.runtime import check_socket_path


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "serve", help="serve EXPORT on a Unix socket (foreground)"
    )
    p.add_argument("export", help="directory to export")
    p.add_argument("--socket", required=True, help="Unix socket to listen on (mode 0600)")
    p.add_argument("--allow-uid", type=int, action="append", default=[], metavar="UID")
    p.add_argument("--allow-gid", type=int, action="append", default=[], metavar="GID")
    p.add_argument("--secret-file", help="a secret every client must present at handshake")
    p.add_argument("--debug", action="store_true", help="log every command")
    add_log_arguments(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    check_socket_path(args.socket)
    argv = [sys.executable, "-m", "backend_server", args.export, "--socket", args.socket]
    argv += [f"--log-{k}={v}" for k, v in (("file", args.log_file), ("level", args.log_level)) if v]
    argv += [f"--allow-uid={uid}" for uid in args.allow_uid]
    argv += [f"--allow-gid={gid}" for gid in args.allow_gid]
    if args.secret_file:
        argv += ["--secret-file", args.secret_file]
    if args.debug:
        argv.append("--debug")
    os.execv(sys.executable, argv)
