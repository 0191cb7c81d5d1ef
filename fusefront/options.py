"""Mount options: what `-o` means, split into ours and the ones passed on to FUSE.

Ours: `cache=none|auto|always`, `writeback`, `noxattr`, `transport=shm|socket`, `debug`, the two
opt-outs below, and the presentation and timeout options sshfs users reach for: `uid=N`,
`gid=N`, `umask=NNN` (see fusefront.presentation), `entry_timeout=S`, `attr_timeout=S`
(override the cache mode's). Everything else (`allow_other`, `default_permissions`, `ro`,
`fsname=`, ...) goes to the kernel as sshfs users expect.

`fsname=` defaults to the export (or, for `ringfs mount SOCKET`, the server's socket), so
`df` and /proc/mounts tell two mounts apart; the subtype carries the cache mode and the two
flags that change what the mount can do (`fuse.ringfs.auto`, `fuse.ringfs.none.writeback`,
`fuse.ringfs.auto.noxattr`): /proc/mounts shows a FUSE mount's source,
type and only the options the kernel itself knows, so the type is where the mode can show.

Defaults, so that a mount behaves like a local disk for the users who can reach it:

* `default_permissions`, always: the kernel checks permissions itself, with the attributes the
  server reported, for every path component and every special file. Without it the kernel
  asks the server only about the final object of each operation: a path the kernel holds in
  its dentry cache is then walked without any search-permission check (a user who just lost
  `x` on a directory can still chmod, open or unlink beneath it), and FIFOs, sockets and
  devices, which the kernel opens itself, are opened with no permission check at all. The
  server still acts as each caller, so the export's own checks apply on top.
  `-o nodefault_permissions` leaves every decision to the server (e.g. for an export whose
  POSIX ACLs must be honoured: the kernel's check sees only the mode bits).
* `allow_other`, when root mounts: FUSE otherwise refuses every user but the mounting one, so
  a root mount would be a disk for root alone. The server, running as root, acts as each
  caller. A non-root mount is not `allow_other` by default: its server cannot act as anyone
  but its own user (others would get EACCES for everything), and FUSE allows it only with
  `user_allow_other` in /etc/fuse.conf. `-o noallow_other` keeps a root mount to root.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

from fusefront.cache import CACHE_MODES, DEFAULT_CACHE_MODE, CacheMode
from fusefront.presentation import Presentation

#: The largest id a uid= or gid= may present: (uid_t)-1 means "no change" to the kernel.
MAX_ID = 2**32 - 2


class OptionError(ValueError):
    """A mount option that cannot be honoured; the message says which and why."""


@dataclass
class MountOptions:
    cache: CacheMode = field(default_factory=lambda: CACHE_MODES[DEFAULT_CACHE_MODE])
    writeback: bool = False
    #: `-o noxattr`: the driver answers every xattr request ENOSYS (see fusefront.driver)
    noxattr: bool = False
    transport: str = "shm"
    debug: bool = False
    fuse: set[str] = field(default_factory=set)
    presentation: Presentation = field(default_factory=Presentation)
    #: the defaults (see the module docstring), unless opted out of
    default_permissions: bool = True
    allow_other: bool = field(default_factory=lambda: os.geteuid() == 0)

    @classmethod
    def parse(cls, groups: list[str] | None) -> MountOptions:
        """Parse the values of every `-o` given (each a comma-separated list)."""
        opts = cls()
        timeouts: dict[str, float] = {}
        opted_out: set[str] = set()
        for group in groups or []:
            for item in filter(None, (part.strip() for part in group.split(","))):
                key, _, value = item.partition("=")
                if key == "cache":
                    if value not in CACHE_MODES:
                        raise OptionError(
                            f"cache={value}: expected one of {', '.join(CACHE_MODES)}"
                        )
                    opts.cache = CACHE_MODES[value]
                elif key == "writeback":
                    opts.writeback = True
                elif item == "noxattr":
                    opts.noxattr = True
                elif key == "transport":
                    if value not in ("shm", "socket"):
                        raise OptionError(f"transport={value}: expected shm or socket")
                    opts.transport = value
                elif key == "debug":
                    opts.debug = True
                elif key in ("entry_timeout", "attr_timeout"):
                    timeouts[key] = _seconds(key, value)
                elif key in ("uid", "gid", "umask"):
                    opts._present(key, value)
                elif item in ("nodefault_permissions", "noallow_other"):
                    opted_out.add(item[2:])
                else:
                    opts.fuse.add(item)
        for kernel in opted_out & opts.fuse:
            raise OptionError(f"no{kernel} and {kernel} contradict each other")
        opts.default_permissions = "default_permissions" not in opted_out
        opts.allow_other = "allow_other" not in opted_out and (
            opts.allow_other or "allow_other" in opts.fuse
        )
        opts.cache = opts.cache.with_timeouts(
            timeouts.get("entry_timeout"), timeouts.get("attr_timeout")
        )
        return opts

    @property
    def readonly(self) -> bool:
        """`-o ro`: the kernel refuses changes through the mount, the server on every
        channel of it (the application channels the driver hands out included)."""
        return "ro" in self.fuse

    def _present(self, key: str, value: str) -> None:
        try:
            number = int(value, 8 if key == "umask" else 10)
        except ValueError:
            number = -1
        limit = 0o777 if key == "umask" else MAX_ID
        if not 0 <= number <= limit:
            expected = "an octal mode 0-777" if key == "umask" else f"a number 0-{MAX_ID}"
            raise OptionError(f"{key}={value}: expected {expected}")
        p = self.presentation
        self.presentation = Presentation(
            uid=number if key == "uid" else p.uid,
            gid=number if key == "gid" else p.gid,
            umask=number if key == "umask" else p.umask,
        )

    def subtype(self) -> str:
        flags = {"writeback": self.writeback, "noxattr": self.noxattr}
        return ".".join(["ringfs", self.cache.name, *(name for name, on in flags.items() if on)])

    def fuse_options(self, source: str = "ringfs") -> set[str]:
        """What pyfuse3.init is given; `source` (the export, or the server socket) is the
        default fsname. Commas and backslashes are escaped for libfuse's option parser."""
        fuse = {f"subtype={self.subtype()}"} | self.fuse
        if self.default_permissions:
            fuse.add("default_permissions")
        if self.allow_other:
            fuse.add("allow_other")
        if not any(o.startswith("fsname=") for o in self.fuse):
            fuse.add("fsname=" + source.replace("\\", "\\\\").replace(",", "\\,"))
        return fuse

    def fsname(self, source: str) -> str:
        given = (o.partition("=")[2] for o in self.fuse if o.startswith("fsname="))
        return next(given, source)

    def describe(self, source: str) -> dict[str, Any]:
        """The options in force, as `ringfs stats` shows them (through user.ringfs.info)."""
        p = self.presentation
        return {
            "fsname": self.fsname(source),
            "cache": self.cache.name,
            "entry_timeout": self.cache.entry_timeout,
            "attr_timeout": self.cache.attr_timeout,
            "writeback": self.writeback,
            "xattr": not self.noxattr,
            "transport": self.transport,
            "uid": p.uid,
            "gid": p.gid,
            "umask": None if p.umask is None else f"{p.umask:03o}",
            "subtype": self.subtype(),
        }


def _seconds(key: str, value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not (math.isfinite(seconds) and seconds >= 0):
        raise OptionError(f"{key}={value}: expected a number of seconds >= 0")
    return seconds
