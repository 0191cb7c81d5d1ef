"""`ringfs serve EXPORT --socket PATH`: run the file-system server in the foreground.

fusefront never imports backend_server: this execs `python -m backend_server` with the
arguments as given. The server declares its options once (`backend_server.__main__`), so
`ringfs serve --help` is its help, and the options are checked there.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "serve",
        help="serve EXPORT on a Unix socket (foreground; `ringfs serve --help` for its options)",
        add_help=False,  # --help is the server's
    )
    # `fusefront.cli.main` hands every argument after `serve` to `run` as `server_args`.
    p.set_defaults(run=run, server_args=[], passes_arguments_through=True)


def run(args: argparse.Namespace) -> int:
    os.execv(sys.executable, [sys.executable, "-m", "backend_server", *args.server_args])
