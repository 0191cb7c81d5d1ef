"""Hostile bytes into a live channel: the server never crashes, answers with errors, and other
channels keep working with their data intact. A short hypothesis run; the long run is
`benchmarks/fuzz_channel.py`."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck as Health
from hypothesis import given, settings
from hypothesis import strategies as st

from channel.protocol import layout
from channel.transport import doorbell
from harness.fuzzing import ChannelFuzzer, HealthCheck
from tests.support.server_harness import ServerProcess

Target = tuple[ChannelFuzzer, HealthCheck, ServerProcess]


@pytest.fixture(scope="module")
def fuzz_target(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ChannelFuzzer, HealthCheck, ServerProcess]]:
    root = tmp_path_factory.mktemp("fuzz")
    export = root / "export"
    export.mkdir()
    with ServerProcess(export, root / "server.sock") as server:
        health = HealthCheck(server.path, server.pid)
        fuzzer = ChannelFuzzer(server.path)
        try:
            yield fuzzer, health, server
        finally:
            fuzzer.close()
            health.close()


@settings(max_examples=1500, deadline=None, suppress_health_check=list(Health))
@given(st.binary(min_size=0, max_size=600))
def test_hostile_bytes_never_break_the_server(fuzz_target: Target, data: bytes) -> None:
    fuzzer, health, _ = fuzz_target
    fuzzer.case(data)
    if fuzzer.cases % 50 == 0:
        health.check()


def test_fuzzing_reached_the_server(
    fuzz_target: Target,
) -> None:
    """After the fuzzing: the cases were answered, many with protocol errors, and the server
    still serves a well-behaved channel."""
    fuzzer, health, server = fuzz_target
    while fuzzer.cases < 1000:  # when run on its own (-k), fuzz here
        fuzzer.case(os.urandom(fuzzer.cases % 600))
    health.check()
    assert fuzzer.completions > fuzzer.cases // 4
    assert -errno.EPROTO in fuzzer.error_statuses or -errno.EACCES in fuzzer.error_statuses
    assert server.proc.poll() is None


def test_corrupt_cq_head_while_rejecting_closes_only_that_channel(fuzz_target: Target) -> None:
    """Regression: answering a rejected slot through a corrupt CQ head closed the channel
    mid-batch, and the poller then read the released region and died with the server."""
    _, health, server = fuzz_target
    victim = ChannelFuzzer(server.path)
    try:
        assert victim.conn is not None
        for _ in range(3):  # garbage slots: each is answered with -EPROTO
            victim.sq.next_slot()[:8] = b"\xff" * 8
            victim.sq.next_slot()[12:16] = b"\xff" * 4  # body length overruns the slot
            victim.sq.publish()
        victim.conn.region.words[layout.CQ_HEAD // 8] = 2**63
        doorbell.ring(victim.conn.sq_efd)
        deadline = time.monotonic() + 5
        while not doorbell.peer_gone(victim.conn.sock):
            assert time.monotonic() < deadline, "the server did not close the corrupt channel"
            time.sleep(0.001)  # waiting for another process to act
        health.check()
        assert server.proc.poll() is None
    finally:
        victim.close()
