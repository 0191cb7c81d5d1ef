"""Reading a channel's statistics counters out of its region (mapped read-only is enough).

Turns the raw words of `layout.ClientStat`/`layout.ServerStat` into a plain dict for display
and JSON: commands and completions by opcode, bytes each way, in flight, wake-ups sent
against commands (how few system calls the channel needed) and a latency summary.
"""

from __future__ import annotations

import glob
import os
from typing import Any

from channel.protocol import layout
from channel.protocol.layout import ClientStat, Region, ServerStat
from channel.protocol.opcodes import Op


def _percentile_us(histogram: list[int], fraction: float) -> float | None:
    """Upper edge (µs) of the log2 bucket holding the given fraction of round trips."""
    total = sum(histogram)
    if not total:
        return None
    seen = 0
    for bucket, count in enumerate(histogram):
        seen += count
        if seen >= fraction * total:
            return float(2**bucket)
    return float(2 ** len(histogram))


def _by_opcode(words: memoryview, start: int) -> dict[str, int]:
    result = {}
    for index in range(layout.OPCODE_COUNTERS):
        count = words[start + index]
        if count:
            try:
                name = Op(index).name
            except ValueError:
                name = f"op{index}" if index < layout.OPCODE_COUNTERS - 1 else "other"
            result[name] = count
    return result


def read_stats(region: Region) -> dict[str, Any]:
    """A snapshot of both sides' counters. Counters are read one by one while the channel
    runs, so a snapshot is consistent per counter, not across counters."""
    c = region.client_stats()
    s = region.server_stats()
    histogram = [c[ClientStat.LATENCY + i] for i in range(layout.LATENCY_BUCKETS)]
    completions = c[ClientStat.COMPLETIONS]
    commands = c[ClientStat.COMMANDS]
    wakeups = c[ClientStat.WAKEUPS_SENT] + s[ServerStat.WAKEUPS_SENT]
    return {
        "geometry": region.geometry.as_list(),
        "client_pid": c[ClientStat.PID],
        "server_pid": s[ServerStat.PID],
        "commands": commands,
        "completions": completions,
        "in_flight": max(commands - completions, 0),
        "bytes_out": c[ClientStat.BYTES_OUT],
        "bytes_in": c[ClientStat.BYTES_IN],
        "wakeups_sent_by_client": c[ClientStat.WAKEUPS_SENT],
        "wakeups_sent_by_server": s[ServerStat.WAKEUPS_SENT],
        "wakeups_per_command": round(wakeups / commands, 4) if commands else 0.0,
        "client_sleeps": c[ClientStat.SLEEPS],
        "server_sleeps": s[ServerStat.SLEEPS],
        "errors": s[ServerStat.ERRORS],
        "auth_failures": s[ServerStat.AUTH_FAILURES],
        "protocol_errors": s[ServerStat.PROTOCOL_ERRORS],
        "latency_us": {
            "mean": round(c[ClientStat.LATENCY_SUM_NS] / completions / 1000, 2)
            if completions
            else None,
            "p50_le": _percentile_us(histogram, 0.50),
            "p99_le": _percentile_us(histogram, 0.99),
        },
        "commands_by_opcode": _by_opcode(c, ClientStat.BY_OPCODE),
        "served_by_opcode": _by_opcode(s, ServerStat.BY_OPCODE),
    }


def find_region_fds(pid: int, name: str = "ringfs") -> list[str]:
    """Paths under /proc/PID/fd of the memfds named `name` that process holds, one per
    region (a region reached through two descriptors is listed once)."""
    found: dict[int, str] = {}
    for path in sorted(glob.glob(f"/proc/{pid}/fd/*"), key=lambda p: int(p.rsplit("/", 1)[1])):
        try:
            if os.readlink(path).startswith(f"/memfd:{name}"):
                found.setdefault(os.stat(path).st_ino, path)
        except OSError:
            continue
    return list(found.values())


def open_region_readonly(path: str) -> Region:
    """Map the region behind a /proc/PID/fd path (or any path to a memfd) read-only."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return Region.open_stats(fd)
    except BaseException:
        os.close(fd)
        raise


def process_cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) `pid` has used so far; 0.0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


#: The counters of a `read_stats` snapshot that `rates` turns into per-second rates.
RATE_COUNTERS = {
    "commands": ("commands",),
    "bytes_out": ("bytes_out",),
    "bytes_in": ("bytes_in",),
    "wakeups": ("wakeups_sent_by_client", "wakeups_sent_by_server"),
    "errors": ("errors",),
}


def rates(before: dict[str, Any], after: dict[str, Any], seconds: float) -> dict[str, float]:
    """Per-second rates between two `read_stats` snapshots of one channel taken `seconds`
    apart. A counter that went down belongs to a new channel in the old one's place: its
    whole value is counted as new."""
    if seconds <= 0:
        raise ValueError(f"snapshots must be taken some time apart, not {seconds} s")
    out = {}
    for rate, counters in RATE_COUNTERS.items():
        now = sum(after[c] for c in counters)
        then = sum(before[c] for c in counters)
        out[rate] = (now - then if now >= then else now) / seconds
    return out
