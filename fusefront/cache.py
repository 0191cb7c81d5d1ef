"""Cache modes, as virtio-fs names them: how long the kernel may trust what the driver told it.

| mode   | entry/attr timeout | page cache across opens | direct I/O |
|--------|--------------------|-------------------------|------------|
| none   | 0 s                | dropped                 | yes        |
| auto   | 1 s                | dropped on open         | no         |
| always | 1 day              | kept                    | no         |

`none` sends every operation to the server (coherent with other writers of the export);
`always` lets the kernel answer repeated reads and stats itself (fast, trusts that nobody
else changes the export). Writeback caching is a separate option (`-o writeback`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CacheMode:
    name: str
    timeout: float
    keep_cache: bool
    direct_io: bool


CACHE_MODES = {
    "none": CacheMode("none", 0.0, keep_cache=False, direct_io=True),
    "auto": CacheMode("auto", 1.0, keep_cache=False, direct_io=False),
    "always": CacheMode("always", 86400.0, keep_cache=True, direct_io=False),
}
DEFAULT_CACHE_MODE = "auto"
