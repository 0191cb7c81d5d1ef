"""Where the driver's log goes: `--log-file` (rotated), else stderr in the foreground, else
syslog (journald's `/dev/log` too) once backgrounded, else a rotated file in the runtime
directory: a backgrounded mount never throws its log away.

Rotation is the standard library's `logging.handlers.RotatingFileHandler` and syslog its
`SysLogHandler`: nothing here is hand-written beyond choosing between them.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from channel.protocol.limits import LOG_BACKUPS, LOG_MAX_BYTES

LEVELS = ("debug", "info", "warning", "error")
FORMAT = "%(asctime)s ringfs[%(process)d] %(name)s %(levelname)s %(message)s"
SYSLOG_SOCKET = "/dev/log"


def add_log_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--log-file",
        metavar="FILE",
        help=f"log to FILE, rotated at {LOG_MAX_BYTES // 1024} KiB keeping {LOG_BACKUPS} old "
        "files (default: stderr in the foreground, syslog/journald in the background)",
    )
    p.add_argument(
        "--log-level", choices=LEVELS, default=None, help="log threshold (default warning)"
    )


def level_of(args: argparse.Namespace) -> int:
    if getattr(args, "debug", False):
        return logging.DEBUG
    name: str = getattr(args, "log_level", None) or "warning"
    return logging.getLevelNamesMapping()[name.upper()]


def rotating(path: str, *, delay: bool = False) -> logging.Handler:
    from logging.handlers import RotatingFileHandler  # a tenth of the CLI's start-up: lazily

    return RotatingFileHandler(path, maxBytes=LOG_MAX_BYTES, backupCount=LOG_BACKUPS, delay=delay)


def configure(args: argparse.Namespace, *, background: bool, fallback_file: str = "") -> None:
    """(Re)point the root logger. Called once at start and again in a backgrounded mount."""
    handler: logging.Handler
    log_file = getattr(args, "log_file", None)
    if log_file:
        handler = rotating(log_file)
    elif not background:
        handler = logging.StreamHandler(sys.stderr)
    elif os.path.exists(SYSLOG_SOCKET):
        from logging.handlers import SysLogHandler

        handler = SysLogHandler(SYSLOG_SOCKET, facility=SysLogHandler.LOG_DAEMON)
        handler.setFormatter(logging.Formatter("ringfs[%(process)d]: %(name)s %(message)s"))
    else:
        # Created only when there is something to say: a mount that never warns leaves no
        # file behind in the runtime directory.
        handler = rotating(fallback_file, delay=True)
    if handler.formatter is None:
        handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level_of(args))
