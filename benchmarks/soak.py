"""Soak: many concurrent clients doing mixed operations with content verification.

Mounts a scratch export with `ringfs up`, then runs `--clients` processes for `--seconds`:
half work on the mount with ordinary file APIs, half through application channels of their
own (`fusefront.direct.DirectClient`, which the mount's driver hands out). Each owns a
directory and keeps a model of what it wrote; every read is checked against the model (and
the application channels' files are also read through the mount, for coherence). Server
and driver memory is sampled each second. Exit status 0 and a last line
`soak: clients=N ops=M errors=0 ok` when nothing was lost, corrupted or unexpected.

    .venv/bin/python benchmarks/soak.py [--clients 16] [--seconds 600]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from channel.protocol.layout import Geometry  # noqa: E402
from fusefront.direct import DirectClient  # noqa: E402

GEOMETRY = Geometry(sq_entries=16, cq_entries=16, slot_size=8192, buf_count=4, buf_size=1 << 20)


def _payload(rng: random.Random) -> bytes:
    return rng.randbytes(rng.choice([0, 1, 100, 4096, 5000, 70_000, 300_000]))


def mount_worker(root: str, seconds: float, seed: int) -> dict[str, Any]:
    """Mixed operations through the mount, verified against a model."""
    rng = random.Random(seed)
    home = Path(root) / f"m{seed}"
    home.mkdir()
    model: dict[str, bytes] = {}
    ops = errors = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        name = f"f{rng.randrange(40)}"
        path = home / name
        action = rng.choice(["write", "write", "append", "read", "read", "rename", "unlink",
                             "stat", "list", "truncate"])  # fmt: skip
        try:
            if action == "write":
                data = _payload(rng)
                path.write_bytes(data)
                model[name] = data
            elif action == "append" and name in model:
                extra = _payload(rng)[:5000]
                with open(path, "ab") as f:
                    f.write(extra)
                model[name] += extra
            elif action == "read" and name in model:
                if path.read_bytes() != model[name]:
                    raise AssertionError(f"{path}: content differs from what was written")
            elif action == "rename" and name in model:
                other = f"f{rng.randrange(40)}"
                os.rename(path, home / other)
                model[other] = model.pop(name)
            elif action == "unlink" and name in model:
                path.unlink()
                del model[name]
            elif action == "stat" and name in model:
                if path.stat().st_size != len(model[name]):
                    raise AssertionError(f"{path}: size differs")
            elif action == "list":
                if set(os.listdir(home)) != set(model):
                    raise AssertionError(f"{home}: listing differs")
            elif action == "truncate" and name in model:
                size = rng.randrange(len(model[name]) + 1)
                os.truncate(path, size)
                model[name] = model[name][:size]
            ops += 1
        except AssertionError:
            raise
        except OSError:
            errors += 1
    for name, data in model.items():
        if (home / name).read_bytes() != data:
            raise AssertionError(f"{home / name}: lost or corrupted at the end")
    return {"ops": ops, "errors": errors}


def direct_worker(root: str, seconds: float, seed: int) -> dict[str, Any]:
    """Mixed operations through an application channel (DirectClient) on the mount, each
    read checked against a model; now and then the same file is read through the mount."""
    rng = random.Random(seed)
    ops = 0
    with DirectClient.connect(root, geometry=GEOMETRY) as fs:
        home = f"c{seed}"
        fs.mkdir(home)
        files: dict[str, bytes] = {}
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            name = f"{home}/f{rng.randrange(20)}"
            action = rng.choice(["write", "read", "read", "stat", "unlink", "mount-read"])
            data = files.get(name)
            if action == "write":
                data = _payload(rng)[: GEOMETRY.buf_size]
                fd = fs.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                if data:
                    fs.pwrite(fd, data, 0)
                fs.close(fd)
                files[name] = data
            elif data is None:
                continue
            elif action == "read":
                fd = fs.open(name)
                got = fs.pread(fd, len(data) or 1, 0)
                fs.close(fd)
                if got != data:
                    raise AssertionError(f"direct {seed}: {name} content differs")
            elif action == "stat":
                if fs.stat(name).st_size != len(data):
                    raise AssertionError(f"direct {seed}: {name} size differs")
            elif action == "mount-read":
                if (Path(root) / name).read_bytes() != data:
                    raise AssertionError(f"direct {seed}: the mount shows other content")
            elif action == "unlink":
                fs.unlink(name)
                del files[name]
            ops += 1
    return {"ops": ops, "errors": 0}


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _run(kind: str, arg: str, seconds: float, seed: int) -> dict[str, Any]:
    worker = mount_worker if kind == "mount" else direct_worker
    return worker(arg, seconds, seed)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=600)
    args = p.parse_args()
    base = Path(tempfile.mkdtemp(prefix="ringfs-soak-"))
    export, mnt, sock = base / "export", base / "mnt", base / "server.sock"
    export.mkdir()
    mnt.mkdir()
    ringfs = [sys.executable, "-m", "fusefront.cli.main"]
    subprocess.run([*ringfs, "up", str(export), str(mnt), "--socket", str(sock)],
                   check=True, cwd=REPO)  # fmt: skip
    status = 1
    try:
        info = json.loads(os.getxattr(mnt, "user.ringfs.info"))
        pids = {"server": info["server_pid"], "driver": info["driver_pid"]}
        memory: dict[str, list[int]] = {k: [] for k in pids}
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(args.clients) as pool:
            jobs = [
                pool.apply_async(_run, ("mount", str(mnt), args.seconds, i))
                if i % 2 == 0
                else pool.apply_async(_run, ("direct", str(mnt), args.seconds, i))
                for i in range(args.clients)
            ]
            while not all(j.ready() for j in jobs):
                for k, pid in pids.items():
                    memory[k].append(_rss_kib(pid))
                time.sleep(1.0)  # the sampling period
            results = [j.get() for j in jobs]  # raises if a worker saw lost/corrupt data
        ops = sum(r["ops"] for r in results)
        errors = sum(r["errors"] for r in results)
        for k, samples in memory.items():
            # after a warm-up tenth of the run (worker threads, caches), RSS should stay flat
            quarters = [samples[min(len(samples) - 1, len(samples) * q // 4)] for q in (1, 2, 3)]
            print(f"{k} RSS KiB: first {samples[0]}, at 1/4, 1/2, 3/4 of the run {quarters}, "
                  f"last {samples[-1]}, max {max(samples)}")  # fmt: skip
        print(f"{args.clients} clients, {args.seconds:.0f} s: {ops} operations "
              f"({ops / args.seconds:.0f}/s), {errors} unexpected errors")  # fmt: skip
        status = 0 if errors == 0 else 1
        print(f"soak: clients={args.clients} ops={ops} errors={errors} "
              f"{'ok' if status == 0 else 'FAILED'}")  # fmt: skip
    finally:
        subprocess.run([*ringfs, "umount", str(mnt)], check=False, cwd=REPO)
        subprocess.run(["rm", "-rf", str(base)], check=False)
    return status


if __name__ == "__main__":
    sys.exit(main())
