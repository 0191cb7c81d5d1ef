"""Keeping a mount's kernel caches true to what application channels change.

A FUSE mount's kernel caches attributes, directory entries and file pages of the inodes its
driver looked up. When an application changes such an object through a channel of its own,
the kernel must forget what it cached before anyone on the mount can look: the change is
then visible there right after the application's call returns.

The driver keeps one WATCH command outstanding. When an application channel's command
changes an inode or a directory entry that a watching driver holds, the server completes
that WATCH with notices (`[INODE, ino]`: forget attributes and pages; `[ENTRY, parent,
name]`: forget that name), and holds the application's completion back. The driver
invalidates through pyfuse3 (synchronously: the kernel has dropped the caches when the call
returns) and sends WATCH again, which acknowledges every notice it had; only then are the
held completions published. Objects no mount holds cost nothing: no notice, no delay.

Pure bookkeeping: the caller (the Backend) publishes completions and owns the channels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

INODE = 0
ENTRY = 1
#: Forget everything (the export changed in ways the server could not follow: see
#: backend_server.watcher); its second field is the root, which every watcher holds.
ALL = 2

Notice = list[Any]  # [INODE, ino], [ENTRY, parent, name] or [ALL, root]
Publish = Callable[[], None]


@dataclass(eq=False)
class Held:
    """An application's completion waiting for some drivers' acknowledgements."""

    publish: Publish
    pending: int = 0

    def acknowledged(self) -> None:
        self.pending -= 1
        if self.pending == 0:
            self.publish()


@dataclass(eq=False)
class Watcher:
    """One driver session's view: its outstanding WATCH and the notices it owes or awaits."""

    holds: Callable[[int], bool]
    #: also told of changes made in the export behind the server's back (WATCH [true])
    external: bool = False
    answer: Callable[[list[Notice]], None] | None = None  # completes the outstanding WATCH
    queued: list[Notice] = field(default_factory=list)
    queued_holds: list[Held] = field(default_factory=list)
    reported_holds: list[Held] = field(default_factory=list)

    def flush(self) -> None:
        if self.answer is not None and self.queued:
            answer, self.answer = self.answer, None
            notices, self.queued = self.queued, []
            self.reported_holds += self.queued_holds
            self.queued_holds = []
            answer(notices)

    def release_all(self) -> None:
        holds = self.queued_holds + self.reported_holds
        self.queued_holds, self.reported_holds, self.queued = [], [], []
        for held in holds:
            held.acknowledged()


class Coherence:
    def __init__(self) -> None:
        self._watchers: dict[int, Watcher] = {}

    def watch(
        self,
        key: int,
        holds: Callable[[int], bool],
        answer: Callable[[list[Notice]], None],
        external: bool = False,
    ) -> None:
        """A WATCH from driver session `key`: acknowledges everything reported to it before,
        and is answered now if notices are waiting, else when the next ones come. With
        `external`, changes made behind the server's back are reported to it too."""
        watcher = self._watchers.get(key)
        if watcher is None:
            watcher = self._watchers[key] = Watcher(holds)
        watcher.external = external
        acknowledged, watcher.reported_holds = watcher.reported_holds, []
        watcher.answer = answer
        watcher.flush()
        for held in acknowledged:
            held.acknowledged()

    def gone(self, key: int) -> None:
        """A driver session ended: nothing it would have invalidated is cached any more."""
        watcher = self._watchers.pop(key, None)
        if watcher is not None:
            watcher.release_all()

    def wants_external(self, key: int) -> bool:
        watcher = self._watchers.get(key)
        return watcher is not None and watcher.external

    def changed(self, notices: list[Notice], publish: Publish, *, external: bool = False) -> None:
        """An application channel changed what `notices` name: publish its completion once
        every watching driver that holds any of it has invalidated its kernel's caches.
        `external`: a change behind the server's back, for the drivers that asked for it."""
        held = Held(publish)
        for watcher in self._watchers.values():
            if external and not watcher.external:
                continue
            mine = [n for n in notices if watcher.holds(n[1])]
            if mine:
                held.pending += 1
                watcher.queued += mine
                watcher.queued_holds.append(held)
        if held.pending == 0:
            publish()
            return
        for watcher in list(self._watchers.values()):
            watcher.flush()
