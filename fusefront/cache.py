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
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CacheMode:
    name: str
    timeout: float
    keep_cache: bool
    direct_io: bool
    #: keep the page cache of a file that is unchanged since it was last closed here
    keep_unchanged: bool = False


CACHE_MODES = {
    "none": CacheMode("none", 0.0, keep_cache=False, direct_io=True),
    "auto": CacheMode("auto", 1.0, keep_cache=False, direct_io=False, keep_unchanged=True),
    "always": CacheMode("always", 86400.0, keep_cache=True, direct_io=False),
}
DEFAULT_CACHE_MODE = "auto"
