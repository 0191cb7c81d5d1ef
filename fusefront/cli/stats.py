"""`ringfs stats MOUNTPOINT|SOCKET [--watch] [--json]`: a channel's counters, read from its
shared region mapped read-only (no request is sent to the server or the driver)."""

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

from channel.errors import ProtocolError
from channel.stats import (
    find_region_fds,
    open_region_readonly,
    process_cpu_seconds,
    read_stats,
)
from fusefront.mountinfo import MountError, read_info


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("stats", help="show channel statistics")
    p.add_argument("target", help="a ringfs mount point, or a server's socket")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--watch", action="store_true", help="refresh every second until ^C")
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
        server_pid, driver_pid = info.server_pid, info.driver_pid
        paths = find_region_fds(driver_pid)
    channels = []
    for path in paths:
        try:
            region = open_region_readonly(path)
        except (OSError, ProtocolError):
            continue  # a channel that ended while we looked
        try:
            channels.append(read_stats(region))
        finally:
            region.close()
    cpu = {"server": process_cpu_seconds(server_pid)}
    if driver_pid:
        cpu["driver"] = process_cpu_seconds(driver_pid)
    return {
        "server_pid": server_pid,
        "driver_pid": driver_pid,
        "cpu_seconds": cpu,
        "channels": channels,
    }


def render(report: dict[str, Any]) -> str:
    cpu = report["cpu_seconds"]
    lines = [
        f"server pid {report['server_pid']} (cpu {cpu['server']:.2f} s)   "
        + (f"driver pid {report['driver_pid']} (cpu {cpu['driver']:.2f} s)"
           if report["driver_pid"] else "driver -")
    ]  # fmt: skip
    for n, ch in enumerate(report["channels"]):
        lat = ch["latency_us"]
        lines += [
            f"channel {n}: client pid {ch['client_pid']}",
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


def run(args: argparse.Namespace) -> int:
    try:
        while True:
            report = collect(args.target)
            print(json.dumps(report) if args.json else render(report), flush=True)
            if not args.watch:
                return 0
            time.sleep(1.0)  # --watch: the refresh period itself
    except (MountError, FileNotFoundError) as exc:
        print(f"ringfs: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, BrokenPipeError):  # ^C, or `ringfs stats --watch | head`
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (no second EPIPE at exit)
        return 0
