"""The compiled core against its reference: the same random command streams and the same
random or hostile region bytes drive `channel.protocol.sides_pure` and
`channel.protocol.sides_compiled`, each on a region of its own, and every result, error,
counter and byte of the regions must agree.

Caller-side range errors (a field that does not fit its header type) are left out of the
streams: both raise struct.error, but the reference may have written part of the header by
then and the core writes nothing (tested on their own below).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from channel.protocol import layout, sides_compiled, sides_pure
from channel.protocol.codec import NO_BUFFER, pack_body
from channel.protocol.layout import ClientStat, Geometry, Region
from channel.transport.shm_client import release_views

G = Geometry(sq_entries=4, cq_entries=4, slot_size=256, buf_count=2, buf_size=4096)
TOKEN = bytes(range(16))
RING_WORDS = [
    layout.SQ_HEAD,
    layout.SQ_TAIL,
    layout.SQ_FLAGS,
    layout.CQ_HEAD,
    layout.CQ_TAIL,
    layout.CQ_FLAGS,
]
#: Client statistics that depend on the clock, compared by their sum only.
_LATENCY_WORDS = (
    layout.CLIENT_STATS // 8 + ClientStat.LATENCY_SUM_NS,
    *range(
        layout.CLIENT_STATS // 8 + ClientStat.LATENCY,
        layout.CLIENT_STATS // 8 + ClientStat.LATENCY + layout.LATENCY_BUCKETS,
    ),
)

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 2**64 - 1)
i32 = st.integers(-(2**31), 2**31 - 1)
small = st.integers(0, 8)
bodies = st.one_of(
    st.binary(max_size=300),  # raw bytes: often not msgpack, sometimes larger than a slot
    st.builds(
        pack_body, st.one_of(st.none(), u64, st.text(max_size=40), st.lists(i32, max_size=5))
    ),
)
fields = st.tuples(u16, u64, u64, u64, st.one_of(small, u32), u32, u32, u32, u32)
buf_index = st.one_of(st.just(NO_BUFFER), st.integers(-3, 3), i32)
data_len = st.one_of(small, st.just(4096), st.just(4097), u32)
word_values = st.one_of(st.integers(0, 12), st.just(2**63), st.just(2**64 - 1), u64)

good_body = st.builds(pack_body, st.one_of(st.none(), small, st.text(max_size=20)))
good_fields = st.tuples(small, small, small, small, small, small, small, small, small)
#: Well-formed traffic, weighted up so that commands and completions really cross...
good = [
    st.tuples(st.just("post"), small, good_body, st.just(NO_BUFFER), st.just(0), good_fields),
    st.tuples(st.just("post"), small, good_body, st.integers(0, 1), small, good_fields),
    st.tuples(st.just("take")),
    st.tuples(st.just("take_many"), st.integers(1, G.sq_entries + 1)),
    st.tuples(st.just("reap")),
    st.tuples(
        st.sampled_from(["complete", "stage"]),
        st.integers(1, 12),
        st.sampled_from([0, -2, -5]),
        good_body,
        small,
        st.just(NO_BUFFER),
        small,
    ),
    st.tuples(st.just("publish")),
]
#: ...and everything else a caller or a hostile peer can do.
hostile = [
    st.tuples(st.just("post"), u16, bodies, buf_index, data_len, fields),
    st.tuples(st.just("take_many"), st.integers(-2, 2 * G.sq_entries)),
    st.tuples(
        st.sampled_from(["complete", "stage"]),
        st.one_of(small, u64),
        st.one_of(st.integers(-140, 2), i32),
        bodies,
        st.one_of(small, u32),
        buf_index,
        u64,
    ),
    st.tuples(st.just("flush")),
    st.tuples(st.just("park"), st.sampled_from(["server", "client"])),
    st.tuples(st.just("word"), st.sampled_from(RING_WORDS), word_values),
    st.tuples(
        st.just("slot"),
        st.sampled_from(["sq", "cq"]),
        st.integers(0, G.sq_entries - 1),
        st.integers(0, G.slot_size - 1),
        st.binary(min_size=1, max_size=96),
    ),
    st.tuples(st.just("token"), st.sampled_from([TOKEN, bytes(16), TOKEN[:8], TOKEN * 2])),
]
good.append(  # post, take, complete what was taken, reap: the whole round trip in one step
    st.tuples(st.just("trip"), small, good_body, st.sampled_from([0, -2]), good_body, small)
)
good.append(  # the poller's batch: post n, take_many, stage each, publish, reap all
    st.tuples(st.just("batch"), st.integers(1, G.sq_entries), good_body, st.integers(0, 6))
)
ops = st.integers(0, 9).flatmap(
    lambda i: st.one_of(*good) if i < 7 else st.one_of(*hostile)  # mostly well-formed
)


class Pair:
    """One implementation's client and server on a region of its own."""

    def __init__(self, sides: Any, region: Region, client_token: bytes) -> None:
        self.region = region
        self.client = sides.ClientSide(region, client_token)
        self.server = sides.ServerSide(region, TOKEN)

    def run(self, op: tuple[Any, ...]) -> object:
        kind, *args = op
        c, s = self.client, self.server
        actions: dict[str, Callable[[], object]] = {
            "post": lambda: c.post(*args),
            "take": s.take,
            "take_many": lambda: s.take_many(args[0]),
            "reap": c.reap,
            "complete": lambda: s.complete(
                args[0], args[1], args[2], data_len=args[3], buf=args[4], value=args[5]
            ),
            "stage": lambda: s.stage(
                args[0], args[1], args[2], data_len=args[3], buf=args[4], value=args[5]
            ),
            "publish": s.publish,
            "flush": s.flush,
            "park": lambda: (s.sq if args[0] == "server" else c.cq).prepare_park(),
            "word": lambda: self._poke_word(*args),
            "slot": lambda: self._poke_slot(*args),
            "token": lambda: setattr(c, "token", args[0]),
            "trip": lambda: self._trip(*args),
            "batch": lambda: self._batch(*args),
        }
        try:
            return _comparable(actions[kind]())
        except Exception as exc:  # the error is part of the result
            return ("raised", type(exc), str(exc))

    def _trip(self, opcode: int, body: bytes, status: int, reply: bytes, value: int) -> object:
        c, s = self.client, self.server
        posted = c.post(opcode, body, NO_BUFFER, 0, (0, 1, 2, 3, 0, 5, 6, 7, 8))
        taken = s.take()
        if isinstance(taken, tuple):
            s.complete(taken.tag, status, reply, value=value)
        return posted, _comparable(taken), _comparable(c.reap())

    def _batch(self, n: int, body: bytes, limit: int) -> object:
        c, s = self.client, self.server
        posted = [c.post(1, body, NO_BUFFER, 0, (0, i, 0, 0, 0, 0, 0, 0, 0)) for i in range(n)]
        taken = s.take_many(limit)
        for item in taken:
            s.stage(item.tag, -2 if isinstance(item, sides_pure.Rejected) else 0, body, value=n)
        woken = s.publish()
        reaped = [_comparable(c.reap()) for _ in range(len(taken) + 1)]
        return posted, [_comparable(item) for item in taken], woken, reaped

    def _poke_word(self, offset: int, value: int) -> None:
        self.region.words[offset // 8] = value

    def _poke_slot(self, ring: str, index: int, at: int, data: bytes) -> None:
        g = self.region.geometry
        slot = self.region.slot(g.sq_offset if ring == "sq" else g.cq_offset, index)
        data = data[: len(slot) - at]
        slot[at : at + len(data)] = data
        slot.release()

    def state(self) -> tuple[object, ...]:
        c, s = self.client, self.server
        raw = bytearray(self.region.buf)
        words = memoryview(raw).cast("Q")
        latency = sum(words[i] for i in _LATENCY_WORDS[1:])
        for i in _LATENCY_WORDS:
            words[i] = 0
        words.release()
        return (
            bytes(raw),
            latency,
            sorted(c.in_flight),
            c._next_tag,
            c.sq.tail,
            c.cq.head,
            s.sq.head,
            s.cq.tail,
            s.outstanding,
            s.staged,
            list(s.pending),
        )


def _comparable(result: object) -> object:
    if isinstance(result, sides_pure.Rejected):
        return ("Rejected", result.tag, result.status)
    if isinstance(result, tuple):  # Command / Completion: the tuple plus its type
        return (type(result).__name__, *result)
    if isinstance(result, list):  # take_many
        return [_comparable(item) for item in result]
    return result


def _pairs(client_token: bytes, noise: bytes) -> tuple[Pair, Pair]:
    pure_region, core_region = Region.create(G), Region.create(G)
    for region in (pure_region, core_region):  # the same random bytes in every slot
        g = region.geometry
        span = region.buf[g.sq_offset : g.buffers_offset]
        span[: len(noise)] = noise
        span.release()
    return (
        Pair(sides_pure, pure_region, client_token),
        Pair(sides_compiled, core_region, client_token),
    )


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    stream=st.lists(ops, max_size=80),
    client_token=st.sampled_from([TOKEN, TOKEN, bytes(16)]),
    noise=st.one_of(st.just(b""), st.binary(max_size=(G.sq_entries + G.cq_entries) * G.slot_size)),
)
def test_same_stream_same_results_and_bytes(
    stream: list[tuple[Any, ...]], client_token: bytes, noise: bytes
) -> None:
    pure, core = _pairs(client_token, noise)
    try:
        assert pure.state() == core.state()
        for step, op in enumerate(stream):
            expected = pure.run(op)
            got = core.run(op)
            assert got == expected, (step, op)
            assert core.state() == pure.state(), (step, op)
    finally:
        for pair in (pure, core):
            pair.region.close()


def test_a_whole_round_trip_agrees() -> None:
    """A plain stream (no hostility) that fills and drains both rings several times."""
    pure, core = _pairs(TOKEN, b"")
    try:
        for i in range(40):
            body = pack_body(["name", i])
            stream = [
                ("post", 3, body, i % 2, 10, (0, i, 0, 0, 10, 0, 0, 0, 0)),
                ("take",),
                ("complete", i + 1, -2 if i % 5 == 0 else 0, pack_body(i), 5, i % 2, i),
                ("reap",),
            ]
            for op in stream:
                assert core.run(op) == pure.run(op), op
            assert core.state() == pure.state()
    finally:
        pure.region.close()
        core.region.close()


@pytest.mark.parametrize("sides", [sides_pure, sides_compiled])
def test_out_of_range_fields_raise_struct_error(sides: Any) -> None:
    region = Region.create(G)
    try:
        client, server = sides.ClientSide(region, TOKEN), sides.ServerSide(region, TOKEN)
        fields = (0, 0, 0, 0, 0, 0, 0, 0, 0)
        with pytest.raises(struct.error):
            client.post(70000, b"", NO_BUFFER, 0, fields)
        with pytest.raises(struct.error):
            client.post(1, b"", NO_BUFFER, 0, (0, -1, 0, 0, 0, 0, 0, 0, 0))
        with pytest.raises(struct.error):
            server.complete(1, 2**40)
        assert client.sq.free_slots() == G.sq_entries  # nothing was published
        assert server.cq.free_slots() == G.cq_entries
    finally:
        region.close()


@pytest.mark.parametrize("sides", [sides_pure, sides_compiled])
def test_a_closed_region_is_an_error_not_a_dangling_mapping(sides: Any) -> None:
    """Closing releases the views the sides use; the mapping goes at once (no export keeps
    it), and every later call is a ValueError instead of an access to unmapped memory."""
    region = Region.create(G)
    client, server = sides.ClientSide(region, TOKEN), sides.ServerSide(region, TOKEN)
    client.post(1, b"", NO_BUFFER, 0, (0,) * 9)
    client.post(1, b"", NO_BUFFER, 0, (0,) * 9)
    taken = server.take()
    assert taken is not None
    server.stage(taken.tag, 0)  # staged, not yet published when the region goes
    release_views(client)
    release_views(server)
    region.close()
    assert region.mmap.closed  # nothing pinned the mapping
    calls = [
        lambda: client.post(1, b"", NO_BUFFER, 0, (0,) * 9),
        client.reap,
        server.take,
        lambda: server.take_many(4),
        lambda: server.complete(1, 0),
        lambda: server.stage(1, 0),
        server.publish,
        client.sq.free_slots,
        server.sq.prepare_park,
    ]
    for call in calls:
        with pytest.raises(ValueError, match="released"):
            call()


@pytest.mark.parametrize("sides", [sides_pure, sides_compiled])
def test_a_batch_is_one_head_store_and_one_tail_store(sides: Any) -> None:
    """take_many hands its slots back with one head store; staged completions stay invisible
    to the client (the CQ tail word does not move) until publish stores the tail once."""
    region = Region.create(G)
    words = region.words
    try:
        client, server = sides.ClientSide(region, TOKEN), sides.ServerSide(region, TOKEN)
        tags = [client.post(1, pack_body(i), NO_BUFFER, 0, (0,) * 9)[0] for i in range(3)]
        assert [c.tag for c in server.take_many(2)] == tags[:2]
        assert words[layout.SQ_HEAD // 8] == 2 and server.sq.head == 2
        assert [c.tag for c in server.take_many(8)] == [tags[2]]  # only what is ready
        assert words[layout.SQ_HEAD // 8] == 3
        assert server.take_many(8) == []
        for tag in tags:
            server.stage(tag, 0, pack_body(tag), value=tag)
        assert server.staged == 3 and server.cq.tail == 3
        assert words[layout.CQ_TAIL // 8] == 0  # nothing published yet
        assert client.reap() is None
        client.cq.prepare_park()  # the client sleeps: the one publish must say "wake it"
        assert server.publish() is True
        assert words[layout.CQ_TAIL // 8] == 3 and server.staged == 0
        assert [client.reap().value for _ in tags] == tags  # type: ignore[union-attr]
        assert server.publish() is False  # nothing staged: no store, no wake-up
    finally:
        release_views(client)
        release_views(server)
        region.close()


@pytest.mark.parametrize("sides", [sides_pure, sides_compiled])
def test_take_many_keeps_the_cq_promise(sides: Any) -> None:
    """A batch never takes more commands than the CQ has free slots for, counting the
    completions staged and the commands still outstanding."""
    g = Geometry(sq_entries=8, cq_entries=4, slot_size=256, buf_count=2, buf_size=4096)
    region = Region.create(g)
    try:
        client, server = sides.ClientSide(region, TOKEN), sides.ServerSide(region, TOKEN)
        client.max_in_flight = 8  # a client that ignores the CQ's size
        for _ in range(8):
            client.post(1, b"", NO_BUFFER, 0, (0,) * 9)
        first = server.take_many(16)
        assert len(first) == 4 and server.outstanding == 4
        assert server.take_many(16) == []
        server.stage(first[0].tag, 0)
        assert server.take_many(16) == []  # the staged one holds its CQ slot
        server.publish()
        assert client.reap() is not None
        assert len(server.take_many(16)) == 1
    finally:
        release_views(client)
        release_views(server)
        region.close()
