"""A process's descriptor budget: how many it may open and how many its peers make it hold.

A server and a driver accept connections from users they do not trust, and every connection,
handle and inode costs them descriptors. Running out (EMFILE) would fail the mount's own
work too, so each keeps `limits.RESERVED_FDS` of its RLIMIT_NOFILE for itself: it counts
what it holds for others in a `DescriptorBudget` and refuses more once that reserve would
be touched. The count is its own bookkeeping (no system call per check but getrlimit, so that
a limit lowered from outside with prlimit is honoured at once); the baseline is measured once.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Callable

from channel.protocol import limits


def soft_limit() -> int:
    """This process's current RLIMIT_NOFILE (soft)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def raise_soft_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one (a server holds a descriptor per inode
    and per handle); returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError):
            pass
    return soft_limit()


def open_descriptors() -> int:
    """How many descriptors this process has open now (reads /proc: not for hot paths)."""
    return len(os.listdir("/proc/self/fd")) - 1  # minus the one listdir itself held


class DescriptorBudget:
    """What an owner holds for others (`held`, counted by it, plus `extra()`), against the
    process's limit less the reserve."""

    def __init__(
        self, *, reserve: int = limits.RESERVED_FDS, extra: Callable[[], int] = lambda: 0
    ) -> None:
        self.base = open_descriptors()
        self.reserve = reserve
        self.held = 0
        self.extra = extra

    def in_use(self) -> int:
        return self.base + self.held + self.extra()

    def room(self, count: int = 0) -> bool:
        """May `count` more descriptors (beyond those counted already) be held for others
        without touching the reserve?"""
        return self.in_use() + count <= soft_limit() - self.reserve
