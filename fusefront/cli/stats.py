"""`ringfs stats MOUNTPOINT|SOCKET [--watch] [--json|--prometheus] [--textfile PATH]`: a
channel's counters, read from its shared region mapped read-only (no request is sent to the
server or the driver; a mount point's root attribute `user.ringfs.info` names the processes
and the mount's options). A socket-transport mount has no shared region: its channel is shown
from that description, without counters."""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import stat
import sys
import time
from typing import Any

from channel.protocol.errors import ProtocolError
from channel.transport.stats import (
    find_region_fds,
    open_region_readonly,
    process_cpu_seconds,
    read_stats,
)
from fusefront.cli import stats_prometheus, stats_watch
from fusefront.mountinfo import MountError, read_info


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("stats", help="show channel statistics")
    p.add_argument("target", help="a ringfs mount point, or a server's socket")
    form = p.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="print JSON")
    form.add_argument(
        "--prometheus", action="store_true", help="print Prometheus's text exposition format"
    )
    p.add_argument(
        "--textfile",
        metavar="PATH",
        help="write the Prometheus exposition to PATH (atomically; for node_exporter's "
        "textfile collector) instead of printing",
    )
    p.add_argument(
        "--watch",
        action="store_true",
        help="on a terminal, one live screen with per-second rates until ^C; otherwise "
        "(piped, --json, --prometheus, --textfile) a new report every second",
    )
    p.set_defaults(run=run)


def _socket_owner(path: str) -> int:
    """The pid of the process listening on the Unix socket `path`."""
    inodes = set()
    with open("/proc/net/unix") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if len(fields) >= 8 and fields[7] == path and fields[3] == "00010000":  # listening
                inodes.add(fields[6])
    for fd_path in glob.glob("/proc/[0-9]*/fd/*"):
        try:
            target = os.readlink(fd_path)
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            return int(fd_path.split("/")[2])
    raise MountError(f"no process is listening on {path}")


def collect(target: str) -> dict[str, Any]:
    """Statistics of every channel behind a mount point (its driver channel) or a server
    socket (all the server's channels)."""
    mount: dict[str, Any] | None = None
    channels: list[dict[str, Any]] = []
    try:
        is_socket = stat.S_ISSOCK(os.stat(target).st_mode)
    except OSError:
        is_socket = False  # missing or a dead mount: read_info says which, in one line
    if is_socket:
        server_pid = _socket_owner(os.path.abspath(target))
        driver_pid = 0
        paths = find_region_fds(server_pid)
    else:
        info = read_info(target)
        server_pid, driver_pid, mount = info.server_pid, info.driver_pid, info.options
        paths = find_region_fds(driver_pid)
        if mount.get("transport") == "socket":
            channels.append(_socket_channel(driver_pid, server_pid, info.server_socket))
    for path in paths:
        try:
            region = open_region_readonly(path)
        except (OSError, ProtocolError):
            continue  # a channel that ended while we looked
        try:
            channels.append({"transport": "shm", **read_stats(region)})
        finally:
            region.close()
    cpu = {"server": process_cpu_seconds(server_pid)}
    if driver_pid:
        cpu["driver"] = process_cpu_seconds(driver_pid)
    return {
        "target": os.path.abspath(target),
        "server_pid": server_pid,
        "driver_pid": driver_pid,
        "mount": mount,
        "cpu_seconds": cpu,
        "channels": channels,
    }


def _socket_channel(driver_pid: int, server_pid: int, socket_path: str) -> dict[str, Any]:
    return {
        "transport": "socket",
        "client_pid": driver_pid,
        "server_pid": server_pid,
        "socket": socket_path,
        "note": f"socket transport over {socket_path}: no shared region, so no counters",
    }


def render(report: dict[str, Any]) -> str:
    cpu = report["cpu_seconds"]
    lines = [
        f"server pid {report['server_pid']} (cpu {cpu['server']:.2f} s)   "
        + (f"driver pid {report['driver_pid']} (cpu {cpu['driver']:.2f} s)"
           if report["driver_pid"] else "driver -")
    ]  # fmt: skip
    if report.get("mount"):
        lines.append(stats_watch.describe_mount(report["mount"]))
    for n, ch in enumerate(report["channels"]):
        if "commands" not in ch:
            lines.append(f"channel {n}: client pid {ch['client_pid']}, {ch['note']}")
            continue
        lat = ch["latency_us"]
        lines += [
            f"channel {n}: client pid {ch['client_pid']}, transport {ch['transport']}",
            f"  commands {ch['commands']}  completions {ch['completions']}  "
            f"in flight {ch['in_flight']}  errors {ch['errors']}",
            f"  bytes out {ch['bytes_out']}  bytes in {ch['bytes_in']}",
            f"  wake-ups sent {ch['wakeups_sent_by_client'] + ch['wakeups_sent_by_server']} "
            f"for {ch['commands']} commands ({ch['wakeups_per_command']} per command); "
            f"sleeps client {ch['client_sleeps']} server {ch['server_sleeps']}",
            f"  latency mean {lat['mean']} µs, p50 <= {lat['p50_le']} µs, "
            f"p99 <= {lat['p99_le']} µs",
            f"  auth failures {ch['auth_failures']}  protocol errors {ch['protocol_errors']}",
            "  by opcode: "
            + ", ".join(f"{k} {v}" for k, v in sorted(ch["commands_by_opcode"].items())),
        ]
    return "\n".join(lines)


def show(args: argparse.Namespace, report: dict[str, Any]) -> None:
    """One report, in the form asked for."""
    if args.textfile:
        stats_prometheus.write_textfile(args.textfile, report)
    elif args.prometheus:
        print(stats_prometheus.exposition(report), end="", flush=True)
    else:
        print(json.dumps(report) if args.json else render(report), flush=True)


def run(args: argparse.Namespace) -> int:
    try:
        plain = not (args.json or args.prometheus or args.textfile)
        if args.watch and plain and sys.stdout.isatty():
            stats_watch.watch(lambda: collect(args.target))
            return 0
        while True:
            show(args, collect(args.target))
            if not args.watch:
                return 0
            time.sleep(stats_watch.PERIOD)  # --watch: the refresh period itself
    except (KeyboardInterrupt, BrokenPipeError):  # ^C, or `ringfs stats --watch | head`
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (no second EPIPE at exit)
        return 0
    except (MountError, OSError) as exc:  # no such target, or a --textfile we cannot write
        print(f"ringfs: {exc}", file=sys.stderr)
        return 1
