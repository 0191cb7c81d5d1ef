"""What the kernel holds, as the driver must remember it to survive a server restart.

The kernel keeps inode numbers (with lookup counts) and open file handles that the server
handed out. If the server dies, a new one knows none of them. The driver therefore records,
for every inode the kernel holds, one name by which it was reached (parent inode and entry
name) and the kernel's lookup count, and for every open handle its inode and open flags.
After reconnecting it replays them (`restore_batches`, `handles`) so that the new server
registers the same numbers: the kernel never notices.

Names follow what happens through the mount (rename, unlink, rmdir). A change made behind
the mount's back (directly on the export) is not seen; such an inode is simply not found
again after a restart, and the kernel's requests for it then fail with ESTALE.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from channel.protocol.opcodes import ROOT_INO

#: "." and ".." reach an inode that already has a proper name; they never name one.
_DOTS = (b".", b"..")
#: msgpack bytes of one restore entry besides its name: array and bin headers, three ints.
_ENTRY_OVERHEAD = 1 + 3 + 9 + 9 + 9 + 1


@dataclass(slots=True)
class Node:
    parent: int
    name: bytes | None  # None once unlinked through the mount: it cannot be found again
    lookups: int


@dataclass(frozen=True, slots=True)
class OpenHandle:
    ino: int
    flags: int
    is_dir: bool


class NodeTable:
    def __init__(self) -> None:
        self.nodes: dict[int, Node] = {}
        self.handles: dict[int, OpenHandle] = {}
        self._children: dict[tuple[int, bytes], int] = {}

    # -- inodes -------------------------------------------------------------------------
    def learned(self, ino: int, parent: int, name: bytes) -> None:
        """The kernel received an entry for `ino` under `parent`/`name` (one more lookup)."""
        if ino == ROOT_INO:
            return  # the root is never forgotten and always restored
        node = self.nodes.get(ino)
        if node is None:
            if name in _DOTS:
                # Reached only through a dot: no name of its own known yet; count it anyway.
                self.nodes[ino] = Node(parent, None, 1)
                return
            self.nodes[ino] = Node(parent, name, 1)
            self._children[(parent, name)] = ino
            return
        node.lookups += 1
        if name not in _DOTS and node.name is None:
            node.parent, node.name = parent, name
            self._children[(parent, name)] = ino

    def forgot(self, ino: int, count: int) -> None:
        node = self.nodes.get(ino)
        if node is None:
            return
        node.lookups -= count
        if node.lookups <= 0:
            del self.nodes[ino]
            if node.name is not None and self._children.get((node.parent, node.name)) == ino:
                del self._children[(node.parent, node.name)]

    def renamed(self, parent: int, name: bytes, new_parent: int, new_name: bytes) -> None:
        replaced = self._children.pop((new_parent, new_name), None)
        if replaced is not None and replaced in self.nodes:
            self.nodes[replaced].name = None
        ino = self._children.pop((parent, name), None)
        if ino is not None and ino in self.nodes:
            node = self.nodes[ino]
            node.parent, node.name = new_parent, new_name
            self._children[(new_parent, new_name)] = ino

    def exchanged(self, parent: int, name: bytes, other_parent: int, other_name: bytes) -> None:
        """RENAME_EXCHANGE: the two names swapped their objects."""
        first = self._children.pop((parent, name), None)
        second = self._children.pop((other_parent, other_name), None)
        for ino, where in ((first, (other_parent, other_name)), (second, (parent, name))):
            if ino is not None and ino in self.nodes:
                node = self.nodes[ino]
                node.parent, node.name = where
                self._children[where] = ino

    def removed(self, parent: int, name: bytes) -> None:
        ino = self._children.pop((parent, name), None)
        if ino is not None and ino in self.nodes:
            self.nodes[ino].name = None

    # -- handles ------------------------------------------------------------------------
    def everything(self) -> list[list[object]]:
        """Invalidation notices for every inode the kernel holds and the name it has here
        (fusefront.invalidation's INODE 0 and ENTRY 1)."""
        notices: list[list[object]] = []
        for ino, node in self.nodes.items():
            notices.append([0, ino])
            if node.name is not None:
                notices.append([1, node.parent, node.name])
        return notices

    def opened(self, fh: int, ino: int, flags: int, is_dir: bool = False) -> None:
        self.handles[fh] = OpenHandle(ino, flags, is_dir)

    def closed(self, fh: int) -> None:
        self.handles.pop(fh, None)

    def handle_inode(self, fh: int) -> int | None:
        handle = self.handles.get(fh)
        return handle.ino if handle is not None else None

    # -- replay -------------------------------------------------------------------------
    def restore_order(self) -> Iterator[tuple[int, bytes, int, int]]:
        """(parent, name, number, lookups) of every named inode, parents before children;
        inodes whose chain of names does not reach the root are left out."""
        below: dict[int, list[int]] = {}
        for ino, node in self.nodes.items():
            if node.name is not None:
                below.setdefault(node.parent, []).append(ino)
        queue = deque([ROOT_INO])
        while queue:
            parent = queue.popleft()
            for ino in below.get(parent, ()):
                node = self.nodes[ino]
                assert node.name is not None
                yield parent, node.name, ino, node.lookups
                queue.append(ino)

    def restore_batches(self, entries: int, max_bytes: int) -> Iterator[list[list[object]]]:
        """`restore_order` in RESTORE_INODES bodies of at most `entries` entries and about
        `max_bytes` bytes (a name plus at most _ENTRY_OVERHEAD bytes of msgpack per entry)."""
        batch: list[list[object]] = []
        size = 0
        for parent, name, ino, lookups in self.restore_order():
            if batch and (len(batch) == entries or size + len(name) + _ENTRY_OVERHEAD > max_bytes):
                yield batch
                batch, size = [], 0
            batch.append([parent, name, ino, lookups])
            size += len(name) + _ENTRY_OVERHEAD
        if batch:
            yield batch
