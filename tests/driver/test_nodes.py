"""The driver's record of what the kernel holds (fusefront.nodes): pure bookkeeping."""

from __future__ import annotations

from fusefront.nodes import NodeTable


def _order(table: NodeTable) -> list[tuple[int, bytes, int, int]]:
    return list(table.restore_order())


def test_names_follow_renames_exchanges_and_unlinks() -> None:
    t = NodeTable()
    t.learned(2, 1, b"a")  # dir a
    t.learned(3, 2, b"f")  # a/f
    t.learned(3, 2, b"f")  # looked up twice
    t.learned(4, 1, b"b")
    assert _order(t) == [(1, b"a", 2, 1), (1, b"b", 4, 1), (2, b"f", 3, 2)]
    t.renamed(2, b"f", 4, b"g")  # a/f -> b/g
    assert (4, b"g", 3, 2) in _order(t)
    t.exchanged(1, b"a", 1, b"b")  # a and b swap
    assert set(_order(t)) == {(1, b"b", 2, 1), (1, b"a", 4, 1), (4, b"g", 3, 2)}
    t.learned(5, 1, b"c")
    t.renamed(1, b"c", 1, b"a")  # c replaces a: the old a has no name any more
    order = _order(t)
    assert (1, b"a", 5, 1) in order and all(entry[2] not in (4, 3) for entry in order)
    t.removed(1, b"a")
    assert all(entry[2] != 5 for entry in _order(t))


def test_forget_drops_nodes_and_dots_never_name_one() -> None:
    t = NodeTable()
    t.learned(2, 1, b"d")
    t.learned(2, 3, b"..")  # reached again through a dot: counted, name kept
    assert _order(t) == [(1, b"d", 2, 2)]
    t.forgot(2, 1)
    assert _order(t) == [(1, b"d", 2, 1)]
    t.forgot(2, 1)
    assert _order(t) == [] and not t.nodes
    t.learned(1, 1, b"x")  # the root is never recorded
    assert not t.nodes


def test_batches_respect_entry_and_byte_limits() -> None:
    t = NodeTable()
    for i in range(10):
        t.learned(10 + i, 1, b"n" * 200 + bytes([65 + i]))
    batches = list(t.restore_batches(entries=4, max_bytes=700))
    assert [len(b) for b in batches] == [3, 3, 3, 1]  # 3 x (201 + 32) bytes fit in 700
    assert sum(len(b) for b in batches) == 10
    assert len(list(t.restore_batches(entries=4, max_bytes=10**6))) == 3


def test_handles_are_recorded_until_released() -> None:
    t = NodeTable()
    t.opened(7, 3, 2)
    t.opened(8, 4, 0, is_dir=True)
    assert t.handle_inode(7) == 3 and t.handles[8].is_dir
    t.closed(7)
    assert t.handle_inode(7) is None and list(t.handles) == [8]


def test_everything_names_each_inode_and_its_entry_for_a_forget_all() -> None:
    t = NodeTable()
    t.learned(2, 1, b"dir")
    t.learned(3, 2, b"file")
    t.learned(4, 2, b"gone")
    t.removed(2, b"gone")  # unlinked through the mount: no name left to forget
    notices = t.everything()
    assert [0, 2] in notices and [1, 1, b"dir"] in notices
    assert [0, 3] in notices and [1, 2, b"file"] in notices
    assert [0, 4] in notices and not [n for n in notices if n[:1] == [1] and n[2] == b"gone"]
