"""`ringfs stats --prometheus` and `--textfile PATH`: a `collect` report in Prometheus's text
exposition format.

Written with prometheus_client (the Prometheus project's own client) rather than by hand: it
owns the format's escaping, HELP/TYPE lines and `_total` suffixes, and writes a textfile for
node_exporter's textfile collector atomically (write, then rename), so a scrape never reads a
half-written file.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest, write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

#: counter name -> (the report's key in a channel, help text)
_CHANNEL_COUNTERS = {
    "commands": ("commands", "Commands the client posted."),
    "completions": ("completions", "Completions the client reaped."),
    "sent_bytes": ("bytes_out", "Data bytes the client sent with commands."),
    "received_bytes": ("bytes_in", "Data bytes the client received with completions."),
    "errors": ("errors", "Commands the server completed with an error."),
    "auth_failures": ("auth_failures", "Commands refused for a wrong token."),
    "protocol_errors": ("protocol_errors", "Malformed commands the server refused."),
}
_CHANNEL_LABELS = ["target", "channel", "client_pid"]


class _ReportCollector:
    """A prometheus_client collector over one report (collected once, not on every scrape)."""

    def __init__(self, report: dict[str, Any]) -> None:
        self.report = report

    def collect(self) -> Iterator[Metric]:
        report = self.report
        target = report.get("target", "")
        mount = report.get("mount") or {}
        info = GaugeMetricFamily(
            "ringfs_info", "The mount's options (value always 1).",
            labels=["target", "fsname", "cache", "transport", "writeback"],
        )  # fmt: skip
        if mount:
            info.add_metric(
                [target, str(mount.get("fsname", "")), str(mount.get("cache", "")),
                 str(mount.get("transport", "")), str(bool(mount.get("writeback"))).lower()],
                1,
            )  # fmt: skip
        yield info
        cpu = CounterMetricFamily(
            "ringfs_process_cpu_seconds", "CPU time used by the server and the driver.",
            labels=["target", "process", "pid"],
        )  # fmt: skip
        for process, seconds in report["cpu_seconds"].items():
            cpu.add_metric([target, process, str(report[f"{process}_pid"])], seconds)
        yield cpu
        channels = [
            (str(n), ch) for n, ch in enumerate(report["channels"]) if "commands" in ch
        ]  # a socket-transport channel keeps no shared counters
        for name, (key, help_text) in _CHANNEL_COUNTERS.items():
            family = CounterMetricFamily(
                f"ringfs_channel_{name}", help_text, labels=_CHANNEL_LABELS
            )
            for n, ch in channels:
                family.add_metric([target, n, str(ch["client_pid"])], ch[key])
            yield family
        in_flight = GaugeMetricFamily(
            "ringfs_channel_in_flight", "Commands posted and not yet completed.",
            labels=_CHANNEL_LABELS,
        )  # fmt: skip
        wakeups = CounterMetricFamily(
            "ringfs_channel_wakeups", "Doorbell wake-ups sent, by the side that sent them.",
            labels=[*_CHANNEL_LABELS, "side"],
        )  # fmt: skip
        sleeps = CounterMetricFamily(
            "ringfs_channel_sleeps", "Times a side parked waiting for the other.",
            labels=[*_CHANNEL_LABELS, "side"],
        )  # fmt: skip
        by_opcode = CounterMetricFamily(
            "ringfs_channel_opcode_commands", "Commands posted, by opcode.",
            labels=[*_CHANNEL_LABELS, "opcode"],
        )  # fmt: skip
        latency = GaugeMetricFamily(
            "ringfs_channel_latency_mean_seconds", "Mean round trip of the completed commands.",
            labels=_CHANNEL_LABELS,
        )  # fmt: skip
        for n, ch in channels:
            labels = [target, n, str(ch["client_pid"])]
            in_flight.add_metric(labels, ch["in_flight"])
            for side in ("client", "server"):
                wakeups.add_metric([*labels, side], ch[f"wakeups_sent_by_{side}"])
                sleeps.add_metric([*labels, side], ch[f"{side}_sleeps"])
            for opcode, count in sorted(ch["commands_by_opcode"].items()):
                by_opcode.add_metric([*labels, opcode], count)
            if ch["latency_us"]["mean"] is not None:
                latency.add_metric(labels, ch["latency_us"]["mean"] / 1e6)
        yield from (in_flight, wakeups, sleeps, by_opcode, latency)


def _registry(report: dict[str, Any]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ReportCollector(report))
    return registry


def exposition(report: dict[str, Any]) -> str:
    """The report in the text exposition format (version 0.0.4)."""
    return generate_latest(_registry(report)).decode()


def write_textfile(path: str, report: dict[str, Any]) -> None:
    """Replace `path` with the report's exposition, atomically."""
    write_to_textfile(path, _registry(report))
