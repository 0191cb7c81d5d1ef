"""Fuzz a live server's channel with random cases (default 1,000,000).

Starts `python -m backend_server` on a scratch export, then feeds
`harness.fuzzing.ChannelFuzzer` random bytes: garbage slots, random header fields, random
bodies under real opcodes, noisy data buffers, random ring indices, scribbles over the header page,
garbage handshakes. Every `--check-every` cases a separate well-behaved channel proves the server is
alive and its data intact. The last line is `fuzz_channel: cases=N ok` (or the failure).

    .venv/bin/python benchmarks/fuzz_channel.py [--cases N] [--quick] [--seed S] [--pure]

The server runs the compiled core unless `--pure` (or RINGFS_PURE=1) selects the reference.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fusefront.mount import START_TIMEOUT, wait_for_socket
from harness.fuzzing import ChannelFuzzer, HealthCheck


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=1_000_000)
    p.add_argument("--quick", action="store_true", help="20,000 cases")
    p.add_argument("--seed", type=int, default=int.from_bytes(os.urandom(4), "little"))
    p.add_argument("--check-every", type=int, default=1000)
    p.add_argument("--pure", action="store_true", help="the server runs the pure-Python sides")
    args = p.parse_args()
    env = dict(os.environ)
    if args.pure:
        env["RINGFS_PURE"] = "1"
    print(f"server sides: {'pure' if env.get('RINGFS_PURE') == '1' else 'compiled'}")
    cases = 20_000 if args.quick else args.cases
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="ringfs-fuzz-") as tmp:
        export = Path(tmp) / "export"
        export.mkdir()
        sock = Path(tmp) / "server.sock"
        server = subprocess.Popen(
            [sys.executable, "-m", "backend_server", str(export), "--socket", str(sock)],
            stderr=None if os.environ.get("RINGFS_FUZZ_LOG") else subprocess.DEVNULL,
            env=env,
        )
        try:
            wait_for_socket(str(sock), time.monotonic() + START_TIMEOUT, server)
            health = HealthCheck(sock, server.pid)
            fuzzer = ChannelFuzzer(sock)
            start = time.monotonic()
            for n in range(1, cases + 1):
                fuzzer.case(rng.randbytes(rng.choice([0, 8, 64, 88, 96, 200, 512, 600])))
                if n % args.check_every == 0:
                    health.check()
                if n % 50_000 == 0:
                    rate = n / (time.monotonic() - start)
                    print(f"  {n} cases, {rate:.0f}/s, {fuzzer.reconnects} channels ended",
                          flush=True)  # fmt: skip
            health.check()
            elapsed = time.monotonic() - start
            statuses = sorted(fuzzer.error_statuses.items(), key=lambda kv: -kv[1])[:6]
            print(f"seed {args.seed}: {cases} cases in {elapsed:.0f} s ({cases / elapsed:.0f}/s)")
            print(f"completions {fuzzer.completions}, channels ended {fuzzer.reconnects}, "
                  f"health checks {health.checks}, top statuses {statuses}")  # fmt: skip
            fuzzer.close()
            health.close()
            if server.poll() is not None:
                print(f"fuzz_channel: FAILED server exited with {server.returncode}")
                return 1
        except BaseException as exc:
            traceback.print_exc()
            print(f"fuzz_channel: FAILED {exc!r} (seed {args.seed})")
            return 1
        finally:
            if server.poll() is None:
                server.terminate()
            server.wait(10)
    print(f"fuzz_channel: cases={cases} ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
