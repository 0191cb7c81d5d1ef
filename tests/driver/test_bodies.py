"""Split command bodies (fusefront.bodies) fit a driver slot at msgpack's worst case."""

from __future__ import annotations

from channel.protocol.codec import pack_body
from channel.protocol.limits import MAX_RESTORE_BATCH, NAME_MAX
from channel.protocol.opcodes import ROOT_INO
from fusefront.bodies import FORGETS_PER_BODY, MAX_BODY, RESTORE_BODY_BYTES, forget_bodies
from fusefront.nodes import NodeTable

U64_MAX = (1 << 64) - 1


def test_forget_bodies_fit_and_keep_every_pair_in_order() -> None:
    pairs = [(U64_MAX - i, U64_MAX) for i in range(10 * FORGETS_PER_BODY + 7)]
    bodies = list(forget_bodies(pairs))
    assert len(bodies) == 11
    assert max(len(pack_body(body)) for body in bodies) <= MAX_BODY
    # a full body at its widest is nearly the whole slot: the split wastes little
    assert len(pack_body(bodies[0])) > MAX_BODY - 2 * 19
    assert [tuple(pair) for body in bodies for pair in body] == pairs
    assert list(forget_bodies([])) == []
    assert list(forget_bodies([(2, 1)])) == [[[2, 1]]]


def test_restore_bodies_fit_with_the_longest_names_and_widest_numbers() -> None:
    table = NodeTable()
    parent = ROOT_INO
    for i in range(3 * MAX_RESTORE_BATCH):
        ino = U64_MAX - i
        table.learned(ino, parent, bytes([97 + i % 26]) * NAME_MAX)
        table.nodes[ino].lookups = U64_MAX
        parent = ino if i % 50 == 0 else parent
    batches = list(table.restore_batches(MAX_RESTORE_BATCH, RESTORE_BODY_BYTES))
    assert sum(len(batch) for batch in batches) == 3 * MAX_RESTORE_BATCH
    assert all(len(batch) <= MAX_RESTORE_BATCH for batch in batches)
    assert max(len(pack_body(batch)) for batch in batches) <= MAX_BODY
