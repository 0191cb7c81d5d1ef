"""Entry point of the `ringfs` command: one module per subcommand, each calling the library."""

from __future__ import annotations

import argparse
import logging
import sys

from fusefront.cli import mount, serve, stats, umount, up

SUBCOMMANDS = (serve, mount, up, umount, stats)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ringfs", description="A FUSE file system over shared-memory rings."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "debug", False) else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
