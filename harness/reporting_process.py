"""A test server run as a child process that reports on stdout, one line per event.

`ReportingProcess(argv, name)` starts `python -m argv...` from the checkout, waits for its
`ready` line, and lets tests wait for later lines (`open <id> <pid>`, `closed <id>`, ...)
with a deadline. It is always killed on exit.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self

REPO = Path(__file__).resolve().parents[1]


class ReportingProcess:
    def __init__(self, socket_path: Path, module_args: list[str], name: str) -> None:
        self.path = socket_path
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, "-m", *module_args],
            cwd=REPO,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        assert self.proc.stdout is not None
        self._out = self.proc.stdout.fileno()
        self._pending = b""
        self.lines: list[str] = []
        self.wait_line(lambda line: line == "ready", timeout=20.0)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _take(self, chunk: bytes) -> None:
        *complete, self._pending = (self._pending + chunk).split(b"\n")
        self.lines.extend(c.decode() for c in complete)

    def wait_line(self, match: Callable[[str], bool], timeout: float = 5.0) -> str:
        """The first line (seen so far or arriving before the deadline) that matches."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for line in self.lines[seen:]:
                if match(line):
                    return line
            seen = len(self.lines)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no matching line from the {self.name}: {self.lines[-20:]}")
            ready, _, _ = select.select([self._out], [], [], left)
            if ready:
                chunk = os.read(self._out, 65536)
                if not chunk:
                    raise RuntimeError(f"the {self.name} exited; output {self.lines[-20:]}")
                self._take(chunk)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)

    def close(self) -> None:
        self.kill()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
