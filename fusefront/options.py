"""Mount options: what `-o` means, split into ours and the ones passed on to FUSE.

Ours: `cache=none|auto|always`, `writeback`, `transport=shm|socket`, `debug`. Everything else
(`allow_other`, `default_permissions`, `ro`, `fsname=`, ...) goes to the kernel as sshfs users
expect.
"""

from __future__ import annotations

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

    @classmethod
    def parse(cls, groups: list[str] | None) -> MountOptions:
        """Parse the values of every `-o` given (each a comma-separated list)."""
        opts = cls()
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
                else:
                    opts.fuse.add(item)
        return opts

    @property
    def readonly(self) -> bool:
        """`-o ro`: the kernel refuses changes through the mount, the server on every
        channel of it (the application channels the driver hands out included)."""
        return "ro" in self.fuse

    def fuse_options(self) -> set[str]:
        fuse = {"fsname=ringfs", "subtype=ringfs"} | self.fuse
        if not any(o.startswith("fsname=") for o in self.fuse):
            return fuse
        return fuse - {"fsname=ringfs"}
