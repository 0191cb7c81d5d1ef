"""`ringfs stats`: the mount's options in text and JSON, per-second rates and the --watch
screen, the Prometheus exposition, and a socket-transport mount's channel. On real mounts."""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import select
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from channel.transport.stats import rates
from fusefront.cli import stats, stats_prometheus, stats_watch
from tests.support.mounting import REPO, RINGFS, ringfs, ringfs_mount


def _families(text: str) -> dict[str, Metric]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_rates_are_deltas_over_the_interval() -> None:
    before = {"commands": 10, "bytes_out": 0, "bytes_in": 4096, "wakeups_sent_by_client": 1,
              "wakeups_sent_by_server": 2, "errors": 0}  # fmt: skip
    after = {**before, "commands": 30, "bytes_in": 12288, "wakeups_sent_by_server": 6}
    assert rates(before, after, 2.0) == {
        "commands": 10.0, "bytes_out": 0.0, "bytes_in": 4096.0, "wakeups": 2.0, "errors": 0.0,
    }  # fmt: skip
    # a new channel in the old one's place: its counters started again from zero
    assert rates(after, {**before, "commands": 4}, 1.0)["commands"] == 4.0
    with pytest.raises(ValueError, match="some time apart"):
        rates(before, after, 0.0)


def test_watch_rates_and_screen_from_real_snapshots(tmp_path: Path) -> None:
    with ringfs_mount(tmp_path, "cache=none") as m:
        (m.path / "f").write_bytes(b"x" * 8192)
        first = stats.collect(str(m.path))
        for _ in range(50):
            os.stat(m.path / "f")
        (m.path / "f").read_bytes()
        second = stats.collect(str(m.path))
    (was,), (now,) = first["channels"], second["channels"]
    (r,) = stats_watch.report_rates(first, second, 2.0)
    assert r is not None
    assert r["commands"] == (now["commands"] - was["commands"]) / 2.0 >= 25.0
    assert r["bytes_in"] == (now["bytes_in"] - was["bytes_in"]) / 2.0 >= 4096.0
    sent = [f"wakeups_sent_by_{side}" for side in ("client", "server")]
    wakeups = sum(now[k] - was[k] for k in sent)
    assert r["wakeups"] == wakeups / 2.0
    out = io.StringIO()
    console = Console(file=out, width=200, color_system=None)
    console.print(stats_watch.render(second, [r], stats_watch.cpu_percent(first, second, 2.0)))
    screen = out.getvalue()
    assert "cache none (entry 0 s, attr 0 s), transport shm" in screen
    assert "wake-ups" in screen and "cmds" in screen and "rates: per second" in screen
    (row,) = [line for line in screen.splitlines() if line.startswith("0 shm")]
    cells = row.split()
    assert cells[2] == str(now["client_pid"])
    assert cells[3] == f"{r['commands']:,.0f}"
    assert f"{now['commands']:,}" in cells
    # the first screen has no rates yet
    out.truncate(0)
    console.print(stats_watch.render(first))
    (row,) = [line for line in out.getvalue().splitlines() if line.startswith("0 shm")]
    assert row.split()[3] == "…"


def test_text_and_json_show_the_cache_mode(tmp_path: Path) -> None:
    with ringfs_mount(tmp_path, "cache=always,attr_timeout=0,umask=022") as m:
        text = ringfs("stats", str(m.path)).stdout
        report = json.loads(ringfs("stats", str(m.path), "--json").stdout)
    assert (
        f"mount: fsname {m.export}, cache always (entry 86400 s, attr 0 s), transport shm, "
        "umask 022" in text.splitlines()
    )
    assert report["mount"]["cache"] == "always"
    assert (report["mount"]["entry_timeout"], report["mount"]["attr_timeout"]) == (86400.0, 0.0)
    assert report["channels"][0]["transport"] == "shm"


def test_prometheus_exposition_parses_and_matches_the_report(tmp_path: Path) -> None:
    with ringfs_mount(tmp_path, "cache=auto") as m:
        (m.path / "f").write_bytes(b"hello")
        report = stats.collect(str(m.path))
        text = stats_prometheus.exposition(report)
        cli = ringfs("stats", str(m.path), "--prometheus").stdout
        textfile = tmp_path / "ringfs.prom"
        ringfs("stats", str(m.path), "--textfile", str(textfile))
        unwritable = ringfs("stats", str(m.path), "--textfile", "/nonexistent/x.prom", check=False)
    (ch,) = report["channels"]
    families = _families(text)
    for name in ("ringfs_channel_commands", "ringfs_channel_sent_bytes",
                 "ringfs_channel_wakeups", "ringfs_process_cpu_seconds"):  # fmt: skip
        family = families[name]
        assert family.type == "counter", name
        assert f"# TYPE {name}_total counter" in text
        assert f"# HELP {name}_total " in text
    (commands,) = families["ringfs_channel_commands"].samples
    assert commands.name == "ringfs_channel_commands_total"
    assert commands.value == ch["commands"]
    assert commands.labels == {"target": str(m.path), "channel": "0",
                               "client_pid": str(m.driver_pid)}  # fmt: skip
    by_side = {s.labels["side"]: s.value for s in families["ringfs_channel_wakeups"].samples}
    assert by_side == {"client": ch["wakeups_sent_by_client"],
                       "server": ch["wakeups_sent_by_server"]}  # fmt: skip
    (info,) = families["ringfs_info"].samples
    assert info.labels["cache"] == "auto" and info.labels["fsname"] == str(m.export)
    assert families["ringfs_info"].type == "gauge"
    # the command line's output and the textfile are the same valid format
    assert set(_families(cli)) == set(families)
    assert set(_families(textfile.read_text())) == set(families)
    assert not list(tmp_path.glob("ringfs.prom.*"))  # the atomic write left no temporary
    assert unwritable.returncode == 1
    assert unwritable.stderr.startswith("ringfs: [Errno 2] No such file or directory")
    assert unwritable.stderr.count("\n") == 1


def test_a_socket_transport_mount_shows_its_channel(tmp_path: Path) -> None:
    with ringfs_mount(tmp_path, "transport=socket") as m:
        (m.path / "f").write_bytes(b"over the socket")
        report = json.loads(ringfs("stats", str(m.path), "--json").stdout)
        text = ringfs("stats", str(m.path)).stdout
        prom = ringfs("stats", str(m.path), "--prometheus").stdout
    (ch,) = report["channels"]
    assert ch["transport"] == "socket"
    assert (ch["client_pid"], ch["server_pid"]) == (m.driver_pid, m.server_pid)
    assert ch["socket"] == str(tmp_path / "server.sock")
    assert f"channel 0: client pid {m.driver_pid}, socket transport over" in text
    assert "transport socket" in text
    (info,) = _families(prom)["ringfs_info"].samples
    assert info.labels["transport"] == "socket"


def _read_until(fd: int, done: Callable[[bytes], bool], deadline: float, seen: bytearray) -> None:
    """Read the terminal into `seen` until `done(seen)`, failing at the deadline."""
    while not done(bytes(seen)):
        left = deadline - time.monotonic()
        assert left > 0, f"the screen did not come within the deadline: {bytes(seen)!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                seen += os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                assert done(bytes(seen)), bytes(seen)


def test_watch_on_a_terminal_redraws_one_screen_in_place(tmp_path: Path) -> None:
    legend = b"rates: per second"
    with ringfs_mount(tmp_path, "cache=none") as m:
        controller, terminal = pty.openpty()
        fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
        proc = subprocess.Popen(
            [*RINGFS, "stats", str(m.path), "--watch"],
            stdin=terminal, stdout=terminal, stderr=terminal, cwd=REPO,
            env={**os.environ, "TERM": "xterm-256color", "COLUMNS": "100", "LINES": "40"},
        )  # fmt: skip
        os.close(terminal)
        seen = bytearray()
        try:
            deadline = time.monotonic() + 30
            _read_until(controller, lambda s: legend in s, deadline, seen)
            os.stat(m.path)  # something to count
            _read_until(controller, lambda s: s.count(legend) >= 2, deadline, seen)
            proc.send_signal(signal.SIGINT)
            assert proc.wait(20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            os.close(controller)
    first_end = seen.index(legend)
    second = seen.index(b"ringfs stats", first_end)
    # rich's Live moves the cursor back up over its last frame before drawing the next:
    # one screen redrawn in place, not a scroll
    assert seen[first_end:second].count(b"\x1b[1A") >= 5
    frame = bytes(seen[second:]).decode(errors="replace")
    assert "cache none" in frame
    assert "0 shm" in frame
