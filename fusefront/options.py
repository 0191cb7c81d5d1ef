"""Mount options: what `-o` means, split into ours and the ones passed on to FUSE.

Ours: `cache=none|auto|always`, `writeback`, `transport=shm|socket`, `debug`, and the two
opt-outs below. Everything else (`allow_other`, `default_permissions`, `ro`, `fsname=`, ...)
goes to the kernel as sshfs users expect.

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

import os
from dataclasses import dataclass, field

from fusefront.cache import CACHE_MODES, DEFAULT_CACHE_MODE, CacheMode


class OptionError(ValueError):
    """A mount option that cannot be honoured; the message says which and why."""


@dataclass
class MountOptions:
    cache: CacheMode = field(default_factory=lambda: CACHE_MODES[DEFAULT_CACHE_MODE])
    writeback: bool = False
    transport: str = "shm"
    debug: bool = False
    fuse: set[str] = field(default_factory=set)
    #: the defaults (see the module docstring), unless opted out of
    default_permissions: bool = True
    allow_other: bool = field(default_factory=lambda: os.geteuid() == 0)

    @classmethod
    def parse(cls, groups: list[str] | None) -> MountOptions:
        """Parse the values of every `-o` given (each a comma-separated list)."""
        opts = cls()
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
                elif key == "transport":
                    if value not in ("shm", "socket"):
                        raise OptionError(f"transport={value}: expected shm or socket")
                    opts.transport = value
                elif key == "debug":
                    opts.debug = True
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
        return opts

    def fuse_options(self) -> set[str]:
        fuse = {"fsname=ringfs", "subtype=ringfs"} | self.fuse
        if self.default_permissions:
            fuse.add("default_permissions")
        if self.allow_other:
            fuse.add("allow_other")
        if not any(o.startswith("fsname=") for o in self.fuse):
            return fuse
        return fuse - {"fsname=ringfs"}
