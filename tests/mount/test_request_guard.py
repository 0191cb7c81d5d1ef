"""A request handler that fails unexpectedly answers EIO and leaves the driver serving.

The driver is mounted (in the foreground, its log kept) on the echo server
(`harness.echo_server`), a real server that answers every command with the command's own body:
GETATTR then comes back with no attributes at all and LOOKUP with a name where an entry
belongs, so the driver's own code fails on the reply (TypeError, ValueError). Before
fusefront.guard such an exception left pyfuse3's main loop and ended the driver.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.echo_server import EchoServer
from tests.support.mounting import REPO, RINGFS

MOUNT_DEADLINE = 20.0


def _mounted(path: Path) -> bool:
    """From the mount table: os.path.ismount would stat the root, which fails here."""
    with open("/proc/self/mounts") as mounts:
        return any(line.split()[1] == str(path) for line in mounts)


def _wait_mounted(path: Path, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + MOUNT_DEADLINE
    while not _mounted(path):
        if proc.poll() is not None:
            raise AssertionError(f"the driver exited: {log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            raise AssertionError("the mount did not appear")
        time.sleep(0.02)  # a mount appearing cannot be waited on


def test_a_failing_handler_answers_eio_and_the_driver_lives(tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    log = tmp_path / "driver.log"
    with EchoServer(tmp_path / "echo.sock") as echo, open(log, "wb") as log_file:
        # transport=socket: no WATCH task, which the echo server would answer at once forever;
        # nodefault_permissions: the kernel would otherwise GETATTR (EIO here) before getxattr
        driver = subprocess.Popen(
            [
                *RINGFS,
                "mount",
                str(echo.path),
                str(mnt),
                "-f",
                "-o",
                "transport=socket,nodefault_permissions",
            ],
            cwd=REPO,
            stdout=log_file,
            stderr=log_file,
        )
        try:
            _wait_mounted(mnt, driver, log)
            for attempt in range(3):
                with pytest.raises(OSError) as failed:
                    os.stat(mnt)
                assert failed.value.errno == errno.EIO, attempt
                with pytest.raises(OSError) as failed:
                    os.stat(mnt / f"name{attempt}")
                assert failed.value.errno == errno.EIO, attempt
            assert driver.poll() is None, "the driver died"
            assert _mounted(mnt)
            info = json.loads(os.getxattr(mnt, "user.ringfs.info"))  # still answering
            assert info["driver_pid"] == driver.pid
        finally:
            subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
            try:
                driver.wait(timeout=10)
            except subprocess.TimeoutExpired:
                driver.kill()
                driver.wait()
                subprocess.run(["fusermount3", "-uz", str(mnt)], check=False)
    text = log.read_text()
    assert "getattr failed; answered EIO" in text and "lookup failed; answered EIO" in text
    assert "Traceback" in text  # logged with where it failed
    print(f"\ndriver exit status after the failures: {driver.returncode}", file=sys.stderr)
    assert driver.returncode == 0
