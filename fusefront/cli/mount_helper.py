"""`mount.ringfs SOURCE MOUNTPOINT [-o OPTS] [-fnsv] [-t TYPE]`: mount(8)'s helper.

`mount -t fuse.ringfs SOURCE MOUNTPOINT -o OPTS` and an `/etc/fstab` line of type
`fuse.ringfs` run `/sbin/mount.fuse.ringfs` (scripts/setup.sh links it to this program), with
mount(8)'s calling convention: the source first, options as one `-o` list that still holds
mount(8)'s own words. Those are dropped here as mount.fuse3 drops them; `socket=`,
`log_file=` and `log_level=` become the `--socket`, `--log-file` and `--log-level` of
`ringfs up`. SOURCE is an export directory (`ringfs up`) or a running server's socket
(`ringfs mount`). The mount goes to the background and this returns once it is ready.

(mount.fuse3 itself would run a program named after the subtype, `ringfs SOURCE MOUNTPOINT
-o OPTS`, through /bin/sh's default PATH: that form is not `ringfs`'s command line, and the
venv's `ringfs` is not on that PATH, so the type has a helper of its own.)
"""

from __future__ import annotations

import argparse
import os
import stat
import sys

from fusefront.cli import main as cli

#: mount(8)'s words, not the file system's (the list mount.fuse3 drops, and what mount(8)
#: itself keeps from helpers other than fuse's): never passed to FUSE.
MOUNT_ONLY = frozenset(
    {"_netdev", "nofail", "noauto", "auto", "user", "nouser", "users", "defaults"}
)
MOUNT_ONLY_PREFIXES = ("x-", "comment=")
#: Options of this helper that become `ringfs` arguments.
ARGUMENTS = {"socket": "--socket", "log_file": "--log-file", "log_level": "--log-level"}


def translate(source: str, mountpoint: str, options: list[str]) -> list[str]:
    """The `ringfs` command line for mount(8)'s `SOURCE MOUNTPOINT -o OPTIONS`."""
    fs_options, extra = [], []
    for opt in (o for group in options for o in group.split(",") if o):
        key, _, value = opt.partition("=")
        if opt in MOUNT_ONLY or opt.startswith(MOUNT_ONLY_PREFIXES):
            continue
        if key in ARGUMENTS and value:
            extra += [ARGUMENTS[key], value]
        else:
            fs_options.append(opt)
    try:
        is_socket = stat.S_ISSOCK(os.stat(source).st_mode)
    except OSError:
        is_socket = False  # `up` says what is wrong with it
    argv = ["mount" if is_socket else "up", source, mountpoint, *extra]
    if fs_options:
        argv += ["-o", ",".join(fs_options)]
    return argv


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="mount.ringfs",
        description="mount(8) helper for ringfs: mount -t fuse.ringfs EXPORT MOUNTPOINT -o OPTS",
    )
    p.add_argument("source", help="export directory, or a running server's socket")
    p.add_argument("mountpoint")
    p.add_argument("-o", dest="options", action="append", default=[], metavar="OPTS")
    p.add_argument("-f", dest="fake", action="store_true", help="do everything but mount")
    p.add_argument("-n", "-s", "-v", dest="ignored", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("-t", dest="type", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.fake:
        return 0
    return cli.main(translate(args.source, args.mountpoint, args.options))


if __name__ == "__main__":
    sys.exit(main())
