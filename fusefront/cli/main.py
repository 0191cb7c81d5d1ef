"""Entry point of the `ringfs` command: one module per subcommand, each calling the library.

Exit status: 0 success, 1 an error (one line on stderr saying what and why), 2 bad usage.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from fusefront.cli import logs, mount, serve, stats, umount, up
from fusefront.mountinfo import MountError

SUBCOMMANDS = (serve, mount, up, umount, stats)

EPILOG = """\
exit status: 0 success, 1 error (one line on stderr), 2 bad usage.
`ringfs COMMAND --help` describes each command; README.md has the whole manual."""


class _Version(argparse.Action):
    """`--version`, reading the installed version only when asked (importlib.metadata costs
    a third of the start-up time `ringfs umount` would otherwise spend)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        from importlib.metadata import version

        print(f"ringfs {version('ringfs')}")
        parser.exit()


class Parser(argparse.ArgumentParser):
    """Usage errors in one line, like every other error (argparse adds the usage text)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="ringfs",
        description="A FUSE file system over shared-memory rings.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if getattr(args, "passes_arguments_through", False):
        args.server_args = rest  # `serve`: the server parses them (fusefront.cli.serve)
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")  # as parse_args says it
    try:
        logs.configure(args, background=False)
        result: int = args.run(args)
    except MountError as exc:
        print(f"ringfs: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a log file that cannot be opened, say
        print(f"ringfs: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return result


if __name__ == "__main__":
    sys.exit(main())
