"""Entry point of the `ringfs` command: dispatches to one module per subcommand."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    print("ringfs: no subcommands yet", args, file=sys.stderr)
    return 2
