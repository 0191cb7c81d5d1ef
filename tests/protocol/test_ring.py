"""Ring invariants: random produce/consume sequences never lose, duplicate or reorder."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from channel.protocol import layout
from channel.protocol.errors import ProtocolError
from channel.protocol.layout import Geometry, Region
from channel.protocol.sides import cq_consumer, cq_producer, sq_consumer, sq_producer

SMALL = Geometry(sq_entries=8, cq_entries=4, slot_size=256, buf_count=2, buf_size=4096)


@pytest.fixture
def region() -> Iterator[Region]:
    r = Region.create(SMALL)
    yield r
    r.close()


def _fresh_pair(start: int = 0) -> tuple[Region, object, object]:
    r = Region.create(SMALL)
    r.words[layout.SQ_HEAD // 8] = start
    r.words[layout.SQ_TAIL // 8] = start
    return r, sq_producer(r), sq_consumer(r)


# Each step: ("produce", n) or ("consume", n); counters may start near 2**63 to cover wrap of
# the slot index far from zero.
steps = st.lists(
    st.tuples(st.sampled_from(["produce", "consume"]), st.integers(min_value=1, max_value=9)),
    max_size=200,
)


@settings(max_examples=300, deadline=None)
@given(steps, st.sampled_from([0, 5, 2**32 - 3, 2**63 - 5]))
def test_random_sequences_keep_fifo_order(plan: list[tuple[str, int]], start: int) -> None:
    region, producer, consumer = _fresh_pair(start)
    model: deque[int] = deque()
    next_value = 0
    try:
        for action, n in plan:
            if action == "produce":
                for _ in range(n):
                    if producer.free_slots() == 0:
                        assert len(model) == SMALL.sq_entries  # full means really full
                        break
                    producer.next_slot()[:8] = next_value.to_bytes(8, "little")
                    producer.publish()
                    model.append(next_value)
                    next_value += 1
            else:
                for _ in range(n):
                    if consumer.available() == 0:
                        assert not model
                        break
                    got = int.from_bytes(consumer.current_slot()[:8], "little")
                    consumer.release()
                    assert got == model.popleft()
            assert consumer.available() == len(model)
            assert producer.free_slots() == SMALL.sq_entries - len(model)
    finally:
        region.close()


def test_batch_publish_and_release(region: Region) -> None:
    producer, consumer = cq_producer(region), cq_consumer(region)
    for i in range(3):
        producer.slots[(producer.tail + i) & producer.mask][:1] = bytes([i])
    producer.publish(3)
    assert consumer.available() == 3
    assert [consumer.slots[(consumer.head + i) & consumer.mask][0] for i in range(3)] == [0, 1, 2]
    consumer.release(3)
    assert producer.free_slots() == SMALL.cq_entries


@pytest.mark.parametrize("tail", [-1 & (2**64 - 1), SMALL.sq_entries + 1, 2**40])
def test_consumer_rejects_impossible_tail(region: Region, tail: int) -> None:
    consumer = sq_consumer(region)
    region.words[layout.SQ_TAIL // 8] = tail
    with pytest.raises(ProtocolError):
        consumer.available()


@pytest.mark.parametrize("head", [1, 2**63])
def test_producer_rejects_impossible_head(region: Region, head: int) -> None:
    producer = cq_producer(region)
    region.words[layout.CQ_HEAD // 8] = head
    with pytest.raises(ProtocolError):
        producer.free_slots()


def test_park_flag_protocol(region: Region) -> None:
    producer, consumer = sq_producer(region), sq_consumer(region)
    assert producer.publish(0) is False  # nobody parked: no wake-up needed
    assert consumer.prepare_park() is True
    assert consumer.parked
    producer.next_slot()[:1] = b"x"
    assert producer.publish() is True  # parked consumer: the producer must ring
    consumer.finish_park()
    assert not consumer.parked
    # Work already waiting: prepare_park refuses and leaves the flag clear.
    assert consumer.prepare_park() is False
    assert not consumer.parked
