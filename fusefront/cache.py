"""Cache modes, as virtio-fs names them: how long the kernel may trust what the driver told it.

| mode   | entry/attr timeout | page cache across opens          | direct I/O |
|--------|--------------------|----------------------------------|------------|
| none   | 0 s                | dropped                          | yes        |
| auto   | 1 s                | kept only if the file is unchanged | no       |
| always | 1 day              | kept                             | no         |

`none` sends every operation to the server (coherent with other writers of the export);
`always` lets the kernel answer repeated reads and stats itself (fast, trusts that nobody
else changes the export). `auto` gives close-to-open consistency, as NFS does: an open sees
every change made before it, by anyone. It keeps the cached pages of a file across opens only
when the file's size, mtime and ctime at this open are exactly what they were when it was last
closed through this mount, i.e. nobody changed it elsewhere meanwhile (ctime moves on every
change, and no one can set it back). Writeback caching is a separate option (`-o writeback`).

`-o entry_timeout=S` and `-o attr_timeout=S` override a mode's two timeouts, as sshfs's options
of those names do (`with_timeouts`); the rest of the mode stays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class CacheMode:
    name: str
    #: seconds the kernel may trust a name's lookup (entry) and an inode's attributes
    entry_timeout: float
    attr_timeout: float
    keep_cache: bool
    direct_io: bool
    #: keep the page cache of a file that is unchanged since it was last closed here
    keep_unchanged: bool = False

    @property
    def timeout(self) -> float:
        """How long attribute-like facts may be trusted (the driver's own negative caches)."""
        return self.attr_timeout

    def with_timeouts(self, entry: float | None, attr: float | None) -> CacheMode:
        """This mode with either timeout overridden (None keeps the mode's own)."""
        for value in (entry, attr):
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"a timeout must be a finite number of seconds >= 0: {value}")
        return replace(
            self,
            entry_timeout=self.entry_timeout if entry is None else entry,
            attr_timeout=self.attr_timeout if attr is None else attr,
        )


CACHE_MODES = {
    "none": CacheMode("none", 0.0, 0.0, keep_cache=False, direct_io=True),
    "auto": CacheMode("auto", 1.0, 1.0, keep_cache=False, direct_io=False, keep_unchanged=True),
    "always": CacheMode("always", 86400.0, 86400.0, keep_cache=True, direct_io=False),
}
DEFAULT_CACHE_MODE = "auto"
