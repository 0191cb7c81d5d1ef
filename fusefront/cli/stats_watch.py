"""`ringfs stats --watch` on a terminal: one screen redrawn in place every second, with the
rates since the last redraw (commands/s, bytes/s each way, wake-ups/s) beside the totals.

Drawn with rich's `Live` rather than curses or hand-written escape sequences: rich measures
the terminal, redraws only its own lines in place, restores the cursor on ^C and degrades to
plain text without a terminal, which is also what lets the rendering be tested into a string.
`report_rates` and `render` are pure; `watch` is the loop.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.filesize import decimal
from rich.live import Live
from rich.table import Table
from rich.text import Text

from channel.transport.stats import rates

#: The redraw period of --watch, in seconds.
PERIOD = 1.0
#: Short enough for 80 columns; LEGEND says what they mean.
COLUMNS = (
    "chan", "client\npid", "cmds\n/s", "in\nB/s", "out\nB/s", "wake-ups\n/s",
    "queue", "total", "p50\nµs", "p99\nµs", "errs",
)  # fmt: skip
LEGEND = (
    "rates: per second since the last redraw; cmds: commands; in/out: data bytes to and"
    " from the server; queue: commands in flight; total: commands so far; p50/p99: upper"
    " edges of latency buckets; ^C to stop"
)


def _keys(report: dict[str, Any]) -> list[tuple[int, int, int]]:
    """A key per channel that survives between snapshots: its client, its server and which
    of that pair's channels it is (channels come and go on a server)."""
    seen: Counter[tuple[int, int]] = Counter()
    keys = []
    for ch in report["channels"]:
        pair = (ch["client_pid"], ch["server_pid"])
        keys.append((*pair, seen[pair]))
        seen[pair] += 1
    return keys


def report_rates(
    before: dict[str, Any], after: dict[str, Any], seconds: float
) -> list[dict[str, float] | None]:
    """For each channel of `after`, its rates since `before` (None: new, or no counters)."""
    earlier = {
        k: ch for k, ch in zip(_keys(before), before["channels"], strict=True) if "commands" in ch
    }
    out: list[dict[str, float] | None] = []
    for key, ch in zip(_keys(after), after["channels"], strict=True):
        old = earlier.get(key)
        out.append(rates(old, ch, seconds) if old is not None and "commands" in ch else None)
    return out


def cpu_percent(before: dict[str, Any], after: dict[str, Any], seconds: float) -> dict[str, float]:
    """Share of one core each process used between two reports."""
    then = before["cpu_seconds"]
    return {
        p: 100.0 * max(s - then.get(p, s), 0.0) / seconds for p, s in after["cpu_seconds"].items()
    }


def _header(report: dict[str, Any], cpu: dict[str, float] | None) -> Text:
    def process(role: str) -> str:
        pid = report[f"{role}_pid"]
        if not pid:
            return f"{role} -"
        used = f", {cpu[role]:.1f} % of a core" if cpu is not None and role in cpu else ""
        return f"{role} pid {pid} (cpu {report['cpu_seconds'][role]:.2f} s{used})"

    text = Text(f"ringfs stats {report.get('target', '')}", style="bold")
    text.append(f"\n{process('server')}   {process('driver')}")
    mount = report.get("mount")
    if mount:
        text.append("\n" + describe_mount(mount))
    return text


def describe_mount(mount: dict[str, Any]) -> str:
    """One line of the mount's options: cache mode and timeouts, transport, presentation."""
    shown = [
        f"fsname {mount['fsname']}",
        f"cache {mount['cache']} (entry {mount['entry_timeout']:g} s,"
        f" attr {mount['attr_timeout']:g} s)",
        f"transport {mount['transport']}",
    ]
    if mount["writeback"]:
        shown.append("writeback")
    if mount.get("xattr") is False:
        shown.append("noxattr")
    shown += [f"{k} {mount[k]}" for k in ("uid", "gid", "umask") if mount.get(k) is not None]
    return "mount: " + ", ".join(shown)


def render(
    report: dict[str, Any],
    channel_rates: list[dict[str, float] | None] | None = None,
    cpu: dict[str, float] | None = None,
) -> RenderableType:
    """One screen: the processes, the mount's options, and a row per channel."""
    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), show_edge=False)
    for column in COLUMNS:
        table.add_column(column, justify="left" if column == "chan" else "right", no_wrap=True)
    rows = channel_rates or [None] * len(report["channels"])
    for n, (ch, r) in enumerate(zip(report["channels"], rows, strict=True)):
        if "commands" not in ch:
            table.add_row(f"{n} {ch['transport']}", str(ch["client_pid"]), *["-"] * 9)
            continue
        lat = ch["latency_us"]
        table.add_row(
            f"{n} {ch['transport']}",
            str(ch["client_pid"]),
            "…" if r is None else f"{r['commands']:,.0f}",
            "…" if r is None else decimal(int(r["bytes_in"])),
            "…" if r is None else decimal(int(r["bytes_out"])),
            "…" if r is None else f"{r['wakeups']:,.0f}",
            str(ch["in_flight"]),
            f"{ch['commands']:,}",
            "-" if lat["p50_le"] is None else f"{lat['p50_le']:g}",
            "-" if lat["p99_le"] is None else f"{lat['p99_le']:g}",
            str(ch["errors"]),
        )
    notes = [
        Text(f"channel {n}: {ch['note']}", style="dim")
        for n, ch in enumerate(report["channels"])
        if "note" in ch
    ]
    return Group(_header(report, cpu), table, *notes, Text(LEGEND, style="dim"))


def watch(collect: Callable[[], dict[str, Any]], console: Console | None = None) -> None:
    """Redraw the screen every PERIOD seconds until interrupted."""
    before, then = collect(), time.monotonic()
    with Live(render(before), console=console, auto_refresh=False) as live:
        while True:
            time.sleep(PERIOD)  # the redraw period itself, not a wait for anything
            after, now = collect(), time.monotonic()
            seconds = now - then
            live.update(
                render(after, report_rates(before, after, seconds),
                       cpu_percent(before, after, seconds)),
                refresh=True,
            )  # fmt: skip
            before, then = after, now
