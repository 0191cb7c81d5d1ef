"""`python -m backend_server EXPORT --socket PATH`: the server process that `ringfs serve` runs.

Its log goes to stderr, or to `--log-file` rotated by the standard library's
RotatingFileHandler (a long-running server's log must not grow for ever).
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import signal
import sys
from typing import NoReturn

import trio

from backend_server.server import AccessPolicy, SocketInUse, serve
from channel.protocol.limits import LOG_BACKUPS, LOG_MAX_BYTES
from channel.transport.handshake_io import read_secret, socket_path_problem

LEVELS = ("debug", "info", "warning", "error")


def configure_logging(args: argparse.Namespace) -> None:
    handler: logging.Handler = (
        logging.handlers.RotatingFileHandler(
            args.log_file, maxBytes=LOG_MAX_BYTES, backupCount=LOG_BACKUPS
        )
        if args.log_file
        else logging.StreamHandler(sys.stderr)
    )
    level = "debug" if args.debug else args.log_level
    logging.basicConfig(
        level=logging.getLevelNamesMapping()[level.upper()],
        format="%(asctime)s ringfs-server[%(process)d] %(levelname)s %(message)s",
        handlers=[handler],
    )


async def stop_at_stdin_eof() -> None:
    """`ringfs up`'s driver holds our stdin's pipe open for its whole life: end-of-file means
    it is gone (even killed), and we stop as on SIGTERM instead of living on as an orphan."""
    while True:
        await trio.lowlevel.wait_readable(0)
        if not os.read(0, 4096):
            logging.getLogger(__name__).info("the driver that started us is gone")
            os.kill(os.getpid(), signal.SIGTERM)
            return


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, as every `ringfs` command gives them (`fusefront.cli.main`'s
    parser does the same for the others; this package cannot import it)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    """The server's options, declared only here: `ringfs serve` passes its arguments through
    to `python -m backend_server` (fusefront never imports this package), so this is also
    what `ringfs serve --help` prints."""
    p = _Parser(
        prog="ringfs serve", description="Serve EXPORT on a Unix socket (in the foreground)."
    )
    p.add_argument("export", help="directory to export")
    p.add_argument("--socket", required=True, help="Unix socket to listen on (mode 0600)")
    p.add_argument(
        "--allow-uid", type=int, action="append", default=[], metavar="UID",
        help="let UID connect too (root and the server's own user always may; repeatable)",
    )  # fmt: skip
    p.add_argument(
        "--allow-gid", type=int, action="append", default=[], metavar="GID",
        help="let members of group GID connect too (repeatable)",
    )  # fmt: skip
    p.add_argument("--secret-file", help="a secret every client must present at handshake")
    p.add_argument("--debug", action="store_true", help="log every command")
    p.add_argument(
        "--log-file",
        metavar="FILE",
        help=f"log to FILE, rotated at {LOG_MAX_BYTES // 1024} KiB keeping {LOG_BACKUPS} old "
        "files (default: stderr)",
    )
    p.add_argument(
        "--log-level", choices=LEVELS, default="info", help="log threshold (default info)"
    )
    p.add_argument("--exit-with-stdin", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        configure_logging(args)
    except OSError as exc:
        print(f"ringfs serve: log file {args.log_file}: {exc.strerror}", file=sys.stderr)
        return 1
    problem = socket_path_problem(args.socket)
    if problem is not None:
        print(f"ringfs serve: {args.socket}: {problem}", file=sys.stderr)
        return 1
    if not os.path.isdir(args.export):
        print(f"ringfs serve: export {args.export} is not a directory", file=sys.stderr)
        return 1
    try:
        secret = read_secret(args.secret_file)
    except OSError as exc:
        print(f"ringfs serve: cannot read the secret file: {exc}", file=sys.stderr)
        return 1
    policy = AccessPolicy(set(args.allow_uid), set(args.allow_gid))

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            if args.exit_with_stdin:
                nursery.start_soon(stop_at_stdin_eof)
            await serve(os.path.abspath(args.export), args.socket, policy=policy, secret=secret)
            nursery.cancel_scope.cancel()

    try:
        trio.run(run)
    except SocketInUse as exc:
        print(f"ringfs serve: {exc}", file=sys.stderr)
        return 1
    except (OSError, ExceptionGroup) as exc:
        # Binding the socket, typically: one line, not a traceback.
        error: BaseException = exc
        while isinstance(error, ExceptionGroup) and len(error.exceptions) == 1:
            error = error.exceptions[0]
        if not isinstance(error, OSError):
            raise
        print(f"ringfs serve: {args.socket}: {error.strerror or error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
