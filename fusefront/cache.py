"""Cache modes, as virtio-fs names them: how long the kernel may trust what the driver told it.

| mode   | entry/attr timeout | page cache across opens          | direct I/O        |
|--------|--------------------|----------------------------------|-------------------|
| none   | 0 s                | dropped                          | write-only opens  |
| auto   | 60 s               | kept only if the file is unchanged | no              |
| always | 1 day              | kept                             | no                |

What each promises about changes made by others (application channels, or programs writing
the export directly, behind the server's back):

* `none` sends every operation to the server: every read, stat and lookup sees every change
  the export made before it (see below for mappings).
* `auto`: close-to-open consistency, as NFS gives, and more: an open sees every change made
  before it, by anyone; and the server watches the directories the mount looked things up
  in (backend_server.watcher) and has the kernel forget what changed there, so names
  (create, unlink, rename), attributes (chmod, chown, times, links, xattrs) and the data of
  a file whose writer has closed it are seen within milliseconds, long before the 60 s
  timeouts. The timeouts remain the bound for what inotify does not report: a truncate(2) by
  path, the writes of a writer that still holds the file open, a directory beyond the watch
  limit (the server then has the kernel forget everything instead), an export whose changes
  happen on another machine (NFS, a cluster file system). It keeps the cached pages of a
  file across opens only when the file's size, mtime and ctime at this open are exactly what
  they were when it was last closed through this mount, i.e. nobody changed it elsewhere
  meanwhile (ctime moves on every change, and no one can set it back).
* `always` keeps pages across opens and trusts names and attributes for a day: for an
  export nobody else changes. The watcher's notices reach it too (the same changes are seen
  within milliseconds), but a change inotify misses stays unseen for up to a day.

`none` does not ask for the watcher's notices (fusefront.invalidation): it needs none, and
an invalidation racing one of its GETATTRs would make the kernel drop that fresh answer.
Application channels' changes are seen at once in every mode (backend_server.coherence).
Writeback caching is a separate option (`-o writeback`).

Why 60 s for auto: measured with 3,000 files (create, stat of each, unlink, as in the fio
suite's jobs, two interleaved rounds under load from other agents), stat-many ran at 5,734/s
with 1 s, 188,868/s with 10 s, 236,862/s with 60 s and 233,194/s with 600 s, and unlink at
1,209, 1,616, 1,795 and 1,719/s: the gain is in once entries outlive a job, and 60 s does
that with margin on a loaded machine while keeping what inotify misses to a minute.

`-o entry_timeout=S` and `-o attr_timeout=S` override a mode's two timeouts, as sshfs's options
of those names do (`with_timeouts`); the rest of the mode stays.

Why `none` uses direct I/O (FOPEN_DIRECT_IO) only for write-only opens: the kernel refuses
MAP_SHARED (read-only or writable) on a direct-I/O handle with ENODEV unless the server
negotiated FUSE_DIRECT_IO_ALLOW_MMAP, which libfuse 3.14 cannot ask for; sqlite, LMDB and
every `mmap.mmap(fd, ...)` need it. A handle that can be mapped (one opened for reading) goes
through the page cache instead, and stays coherent with the export by three things: its
pages are dropped at every open (no keep_cache); attributes never outlive their reply
(timeout 0), so the kernel sends GETATTR before every read(2); and with
FUSE_AUTO_INVAL_DATA, which libfuse negotiates, a GETATTR that shows a new size or mtime
drops the pages. So a read sees any change the export made before it (the export's
multigrain timestamps give a write after a GETATTR a new mtime even within one clock tick);
a mapping sees it at the next read, stat or open of the file through the mount. A
write-only handle can never be mapped, and direct I/O keeps its writes one round trip each
(a write through the page cache also asks for `security.capability`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class CacheMode:
    name: str
    #: seconds the kernel may trust a name's lookup (entry) and an inode's attributes
    entry_timeout: float
    attr_timeout: float
    keep_cache: bool
    #: FOPEN_DIRECT_IO for handles opened write-only (see the module docstring)
    direct_writes: bool
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

    def direct_io(self, flags: int) -> bool:
        """Does a handle opened with `flags` bypass the page cache?"""
        return self.direct_writes and flags & os.O_ACCMODE == os.O_WRONLY


CACHE_MODES = {
    "none": CacheMode("none", 0.0, 0.0, keep_cache=False, direct_writes=True),
    "auto": CacheMode(
        "auto", 60.0, 60.0, keep_cache=False, direct_writes=False, keep_unchanged=True
    ),
    "always": CacheMode("always", 86400.0, 86400.0, keep_cache=True, direct_writes=False),
}
DEFAULT_CACHE_MODE = "auto"
