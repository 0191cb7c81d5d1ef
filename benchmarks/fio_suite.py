"""The fio suite: the same jobs against ringfs and what a user would use instead, in one run.

Targets (all FUSE targets export the same tmpfs directory, so they measure the file system
layer, not a disk):
  tmpfs            the export directory itself, no FUSE
  disk             a directory on the machine's disk file system, no FUSE
  ringfs-none      ringfs, -o cache=none
  ringfs-auto      ringfs, -o cache=auto
  ringfs-always    ringfs, -o cache=always
  ringfs-writeback ringfs, -o cache=auto,writeback (the kernel's writeback cache; not the default)
  ringfs-noxattr   ringfs, -o noxattr on the default cache mode (no security.capability per write)
  ringfs-socket    ringfs over its Unix-socket transport (same code, no shared memory), cache=none
  passthrough      pyfuse3's own examples/passthroughfs.py (in-process, page cache, no IPC)

Jobs: the fio job files in examples/fio/ (4 KiB random read/write psync QD1, 4 KiB random read
libaio QD16, 1 MiB sequential read/write; numjobs 1 and 2), a stat loop, metadata rates
(create, stat, readdir, unlink) and a small-file workload (untar of a source tree).

All targets are up at once and each job runs on every target back to back (full mode: three
rounds, medians), because this machine's speed drifts within minutes: a ratio must compare
runs made seconds apart.

Reported: IOPS, MiB/s, completion latency p50/p99, CPU seconds of the server and the driver
(or of passthroughfs), every round's rate, ratios; written as markdown, JSON and a PNG chart
to benchmarks/results/ (or `--output DIR`) with the machine description. The chart plots the
headline ratios against their targets (error bars: the spread of the rounds) above every
target's rates, the default cache mode highlighted. `--quick` (one round, 1 s per fio job)
finishes in under three minutes once the passthrough example has been fetched. `--targets`
and `--jobs` take comma-separated names from the lists above (an unknown one is an error,
exit 2, before anything runs); `--replot JSON` redraws the chart of an earlier run.

    .venv/bin/python benchmarks/fio_suite.py [--quick] [--rounds N] [--targets a,b] [--jobs x,y]
        [--output DIR] [--replot RESULTS.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fio_chart import draw_chart

from channel.transport.stats import process_cpu_seconds
from fusefront.mountinfo import read_info

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
FIO_JOBS = REPO / "examples" / "fio"
RINGFS = [sys.executable, "-m", "fusefront.cli.main"]
PASSTHROUGH_CACHE = Path.home() / ".cache" / "ringfs-bench"

FIO_RUNS = [  # (label, job file, numjobs)
    ("randread-4k-qd1", "randread-4k-qd1", 1),
    ("randread-4k-qd1-j2", "randread-4k-qd1", 2),
    ("randwrite-4k-qd1", "randwrite-4k-qd1", 1),
    ("randwrite-4k-qd1-j2", "randwrite-4k-qd1", 2),
    ("randread-4k-qd16", "randread-4k-qd16", 1),
    ("seqread-1m", "seqread-1m", 1),
    ("seqread-1m-j2", "seqread-1m", 2),
    ("seqwrite-1m", "seqwrite-1m", 1),
]
PY_RUNS = ["stat", "create", "stat-many", "readdir", "unlink", "untar"]
TARGETS = [
    "tmpfs", "disk", "ringfs-none", "ringfs-auto", "ringfs-always", "ringfs-writeback",
    "ringfs-noxattr", "ringfs-socket", "passthrough",
]  # fmt: skip
JOBS = [label for label, _, _ in FIO_RUNS] + PY_RUNS


@dataclass
class Target:
    name: str
    path: Path
    pids: dict[str, int] = field(default_factory=dict)  # role -> pid whose CPU we charge
    laid_out: set[str] = field(default_factory=set)  # which data files exist (rand, seq)


def _cpu(target: Target, since: dict[str, float] | None = None) -> dict[str, float]:
    """CPU seconds of the target's processes, or used since an earlier reading."""
    now = {role: process_cpu_seconds(pid) for role, pid in target.pids.items()}
    if since is None:
        return now
    return {role: round(now[role] - since[role], 2) for role in now}


def wait_mounted(path: Path, proc: subprocess.Popen[bytes] | None, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.ismount(path):
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{path}: the file system process exited ({proc.returncode})")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} was not mounted within {timeout} s")
        time.sleep(0.02)  # another process is mounting


def passthrough_script() -> Path:
    """pyfuse3's examples/passthroughfs.py for the installed version, from its sdist (fetched
    once with pip into a cache directory; never committed)."""
    from importlib.metadata import version

    import pyfuse3  # noqa: F401  (the installed version decides which sdist)

    v = version("pyfuse3")
    script = PASSTHROUGH_CACHE / f"passthroughfs-{v}.py"
    if not script.exists():
        PASSTHROUGH_CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary",
                 ":all:", "-d", tmp, f"pyfuse3=={v}"],
                check=True,
            )  # fmt: skip
            (sdist,) = Path(tmp).glob("pyfuse3-*.tar.gz")
            with tarfile.open(sdist) as tar:
                member = tar.getmember(f"pyfuse3-{v}/examples/passthroughfs.py")
                extracted = tar.extractfile(member)
                assert extracted is not None
                script.write_bytes(extracted.read())
    return script


@contextlib.contextmanager
def mounted(name: str, export: Path, base: Path) -> Iterator[Target]:
    mnt = base / f"mnt-{name}"
    mnt.mkdir()
    if name == "passthrough":
        proc = subprocess.Popen(
            [sys.executable, str(passthrough_script()), str(export), str(mnt)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_mounted(mnt, proc)
            yield Target(name, mnt, {"fs": proc.pid})
        finally:
            subprocess.run(["fusermount3", "-u", str(mnt)], check=False)
            proc.wait(20)
        return
    opts = {
        "ringfs-none": "cache=none",
        "ringfs-auto": "cache=auto",
        "ringfs-always": "cache=always",
        "ringfs-writeback": "cache=auto,writeback",
        "ringfs-noxattr": "cache=auto,noxattr",
        "ringfs-socket": "cache=none,transport=socket",
    }[name]
    sock = base / f"{name}.sock"
    subprocess.run(
        [*RINGFS, "up", str(export), str(mnt), "-o", opts, "--socket", str(sock)],
        check=True, cwd=REPO,
    )  # fmt: skip
    try:
        info = read_info(str(mnt))  # the published description (noxattr has no xattr)
        yield Target(name, mnt, {"driver": info.driver_pid, "server": info.server_pid})
    finally:
        subprocess.run([*RINGFS, "umount", str(mnt)], check=False, cwd=REPO)


def run_fio(target: Target, job: str, numjobs: int, size: str, runtime: int) -> dict[str, Any]:
    env = {**os.environ, "DIR": str(target.path), "SIZE": size, "RUNTIME": str(runtime),
           "NUMJOBS": str(numjobs)}  # fmt: skip
    job_file = str(FIO_JOBS / f"{job}.fio")
    data_kind = job.split("-")[0].removesuffix("read").removesuffix("write")  # rand or seq
    data_file = target.path / f"ringfs-fio-{data_kind}.dat"
    if data_kind not in target.laid_out:
        # Laid out here in 1 MiB writes: fio would lay it out in the job's block size, 4 KiB
        # writes that took most of --quick's time on the slower targets.
        chunk = os.urandom(1 << 20)
        with open(data_file, "wb") as out:
            for _ in range(int(size.removesuffix("m"))):
                out.write(chunk)
        target.laid_out.add(data_kind)
    if "read" in job:
        # Reads run on a warm file, read once just before (this VM pages out memory idle
        # for a minute), so that every target's caches have had their chance: what a cache
        # mode keeps is the point of comparing.
        with open(data_file, "rb") as warm:
            while warm.read(1 << 20):
                pass
    before = _cpu(target)
    done = subprocess.run(
        ["fio", "--output-format=json", job_file],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    cpu = _cpu(target, before)
    if done.returncode != 0:
        return {"error": (done.stderr or done.stdout).strip()[-300:], "cpu_s": cpu}
    result = json.loads(done.stdout[done.stdout.index("{") :])["jobs"][0]
    side = result["read"] if result["read"]["io_bytes"] else result["write"]
    pct = side["clat_ns"].get("percentile", {})
    return {
        "iops": round(side["iops"]),
        "mib_s": round(side["bw_bytes"] / 2**20, 1),
        "p50_us": round(pct.get("50.000000", 0) / 1000, 1),
        "p99_us": round(pct.get("99.000000", 0) / 1000, 1),
        "cpu_s": cpu,
    }


def run_python(target: Target, job: str, count: int, tarball: Path) -> dict[str, Any]:
    """Metadata and small-file workloads, timed in this process."""
    work = target.path / f"meta-{job}"
    before = _cpu(target)
    names = [work / f"f{i:06d}" for i in range(count)]
    ops = count
    if job != "untar":
        work.mkdir(exist_ok=True)
    if job in ("stat-many", "readdir", "unlink"):
        for n in names:
            n.touch()
    start = time.perf_counter()
    if job == "stat":
        probe = work / "probe"
        probe.touch()
        start = time.perf_counter()
        for _ in range(count * 3):
            os.stat(probe)
        ops = count * 3
    elif job == "create":
        for n in names:
            os.close(os.open(n, os.O_CREAT | os.O_WRONLY, 0o644))
    elif job == "stat-many":
        for n in names:
            os.stat(n)
    elif job == "readdir":
        rounds = 20
        for _ in range(rounds):
            os.listdir(work)
        ops = rounds
    elif job == "unlink":
        for n in names:
            os.unlink(n)
    elif job == "untar":
        with tarfile.open(tarball) as tar:
            members = tar.getmembers()
            tar.extractall(work, filter="fully_trusted")
        ops = len(members)
    elapsed = time.perf_counter() - start
    cpu = _cpu(target, before)
    shutil.rmtree(work, ignore_errors=True)
    rate = ops / elapsed
    return {
        "ops_s": round(rate, 1) if rate < 100 else round(rate),  # readdir: a few per second
        "ops": ops,
        "seconds": round(elapsed, 3),
        "cpu_s": cpu,
    }


def _no_bytecode(member: tarfile.TarInfo) -> tarfile.TarInfo | None:
    return None if "__pycache__" in member.name else member


def source_tarball(base: Path) -> Path:
    """A small-file tree: some of the standard library's sources (about 240 entries)."""
    tarball = base / "stdlib.tar"
    stdlib = Path(os.__file__).parent
    with tarfile.open(tarball, "w") as tar:
        for sub in (
            "email",
            "json",
            "asyncio",
            "unittest",
            "xml",
            "http",
            "logging",
            "importlib",
            "concurrent",
            "multiprocessing",
            "sqlite3",
            "urllib",
            "wsgiref",
            "tomllib",
        ):
            tar.add(stdlib / sub, arcname=sub, filter=_no_bytecode)
    return tarball


def ratios(results: dict[str, dict[str, dict[str, Any]]], default: str) -> dict[str, Any]:
    def rate(target: str, job: str) -> float | None:
        r = results.get(target, {}).get(job, {})
        return r.get("iops") or r.get("ops_s")

    out: dict[str, Any] = {"default_vs_passthrough": {}, "default": default}
    for job in JOBS:
        a, b = rate(default, job), rate("passthrough", job)
        if a and b:
            out["default_vs_passthrough"][job] = round(a / b, 2)
    for job in ("randwrite-4k-qd1", "randwrite-4k-qd1-j2", "seqwrite-1m"):
        a, b = rate("ringfs-noxattr", job), rate("passthrough", job)
        if a and b:
            out.setdefault("noxattr_vs_passthrough", {})[job] = round(a / b, 2)
    a, b = rate("ringfs-none", "randread-4k-qd1"), rate("ringfs-socket", "randread-4k-qd1")
    if a and b:
        out["shm_vs_socket_randread_4k_qd1"] = round(a / b, 2)
    a, b = rate("ringfs-always", "randread-4k-qd1"), rate("tmpfs", "randread-4k-qd1")
    if a and b:
        out["always_vs_tmpfs_randread_4k_qd1"] = round(a / b, 2)
    return out


def write_reports(report: dict[str, Any], suffix: str, output: Path = RESULTS) -> None:
    output.mkdir(parents=True, exist_ok=True)
    (output / f"fio_suite{suffix}.json").write_text(json.dumps(report, indent=1))
    targets = list(report["results"])
    jobs = JOBS
    lines = [
        f"# fio suite ({report['mode']}), {report['date']}",
        "",
        report["machine"],
        "",
        "Rates: IOPS for fio jobs (p50/p99 completion latency in µs), operations/s otherwise;"
        f" the median of {report['rounds']} round(s). All targets were up at once and each job"
        " ran on every target back to back, so each row compares runs seconds apart.",
        "",
        "| job | " + " | ".join(targets) + " |",
        "|---" * (len(targets) + 1) + "|",
    ]
    for job in jobs:
        cells = []
        for t in targets:
            r = report["results"][t].get(job, {})
            if "error" in r:
                cells.append("error")
            elif "iops" in r:
                cells.append(f"{r['iops']} ({r['p50_us']}/{r['p99_us']})")
            elif "ops_s" in r:
                cells.append(str(r["ops_s"]))
            else:
                cells.append("-")
        lines.append(f"| {job} | " + " | ".join(cells) + " |")
    lines += ["", "Ratios:", "", "```", json.dumps(report["ratios"], indent=1), "```"]
    (output / f"fio_suite{suffix}.md").write_text("\n".join(lines) + "\n")
    draw_chart(report, output / f"fio_suite{suffix}.png")


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), "?")
    mem = Path("/proc/meminfo").read_text().split("\n")[0].split()[1]
    return (f"Machine: {os.cpu_count()} cores ({cpu}), {int(mem) // 2**20} GiB, "
            f"Linux {platform.release()}, Python {platform.python_version()}")  # fmt: skip


def target(
    name: str, tmpfs: Path, disk: Path, base: Path
) -> contextlib.AbstractContextManager[Target]:
    """A target ready for jobs: a directory of its own (each FUSE target exports its own
    directory of the same tmpfs), mounted when it is a file system process."""
    if name == "tmpfs":
        (tmpfs / "native").mkdir()
        return contextlib.nullcontext(Target(name, tmpfs / "native"))
    if name == "disk":
        return contextlib.nullcontext(Target(name, disk))
    export = tmpfs / f"export-{name}"
    export.mkdir()
    return mounted(name, export, base)


def _rate(r: dict[str, Any]) -> float | None:
    rate: float | None = r.get("iops") or r.get("ops_s")
    return rate


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median rate (its latencies and CPU come with it); errors lose.
    `round_rates` keeps every round's rate in round order (None for a failed round)."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[-1]
    ok.sort(key=lambda r: _rate(r) or 0)
    return {**ok[len(ok) // 2], "rounds": len(ok), "round_rates": [_rate(r) for r in runs]}


def selection(
    parser: argparse.ArgumentParser, value: str, known: list[str], what: str
) -> list[str]:
    """The comma-separated names in `value`, each one of `known` (else a usage error, exit 2)."""
    names = list(dict.fromkeys(n.strip() for n in value.split(",") if n.strip()))
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        given = f"unknown {what} {', '.join(unknown)}" if unknown else f"no {what} given"
        parser.error(f"{given}; valid {what}s: {', '.join(known)}")
    return names


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short runs, under three minutes")
    p.add_argument("--targets", default=",".join(TARGETS), help="of: " + ", ".join(TARGETS))
    p.add_argument("--jobs", default=",".join(JOBS), help="of: " + ", ".join(JOBS))
    p.add_argument("--rounds", type=int, help="runs of each job per target (median reported)")
    p.add_argument("--output", type=Path, default=RESULTS, help="where results go (%(default)s)")
    p.add_argument("--replot", type=Path, metavar="JSON", help="only redraw this run's chart")
    args = p.parse_args()
    if args.replot is not None:
        try:
            report = json.loads(args.replot.read_text())
        except (OSError, ValueError) as exc:
            p.error(f"--replot {args.replot}: {exc}")
        args.output.mkdir(parents=True, exist_ok=True)
        chart = args.output / args.replot.with_suffix(".png").name
        draw_chart(report, chart)
        print(f"fio_suite: chart={chart}")
        return 0
    targets = selection(p, args.targets, TARGETS, "target")
    wanted = selection(p, args.jobs, JOBS, "job")
    jobs = [j for j in JOBS if j in wanted]
    if args.rounds is not None and args.rounds < 1:
        p.error(f"--rounds {args.rounds}: at least one round")
    # Data files are 64 MiB in full mode too: this VM pages out memory left idle for about a
    # minute (a DAMON pageout scheme, see results/MACHINE.md), and with 256 MiB files for
    # eight targets warm files were paged out between warm-up and run (4,607 IOPS where the
    # 64 MiB run gave 600,000).
    size, runtime, count = ("64m", 1, 200) if args.quick else ("64m", 3, 3000)
    rounds = args.rounds or (1 if args.quick else 3)
    sys.path.insert(0, str(REPO))
    from fusefront.cache import DEFAULT_CACHE_MODE

    fio_runs = {label: (job, numjobs) for label, job, numjobs in FIO_RUNS}
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {t: {j: [] for j in jobs} for t in targets}
    base = Path(tempfile.mkdtemp(prefix="ringfs-bench-"))
    tmpfs = base / "tmpfs"
    tmpfs.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8g", "tmpfs", str(tmpfs)], check=True)
    disk = Path(tempfile.mkdtemp(prefix="ringfs-bench-disk-", dir="/var/tmp"))
    tarball = source_tarball(base)
    total = len(targets) * len(jobs) * rounds
    done = 0
    started = time.monotonic()
    try:
        with contextlib.ExitStack() as stack:
            # Every target is up at once and each job runs on all of them back to back (the
            # order reversed every other time), so that a ratio compares runs seconds apart,
            # not minutes apart on a machine whose speed drifts.
            live = {name: stack.enter_context(target(name, tmpfs, disk, base)) for name in targets}
            order = list(targets)
            for _ in range(rounds):
                for label in jobs:
                    order.reverse()
                    for name in order:
                        if label in fio_runs:
                            job, numjobs = fio_runs[label]
                            r = run_fio(live[name], job, numjobs, size, runtime)
                        else:
                            r = run_python(live[name], label, count, tarball)
                        runs[name][label].append(r)
                        # The disk target leaves gigabytes of dirty pages; written back
                        # during the next target's run they would be charged to it.
                        os.sync()
                        done += 1
                        progress(done, total, started, name, label, r)
    finally:
        subprocess.run(["umount", str(tmpfs)], check=False)
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(disk, ignore_errors=True)
    results = {t: {j: median_run(rs) for j, rs in per_job.items()} for t, per_job in runs.items()}
    default = f"ringfs-{DEFAULT_CACHE_MODE}"
    report: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": machine(),
        "rounds": rounds,
        "fio": subprocess.run(["fio", "--version"], capture_output=True, text=True).stdout.strip(),
        "results": results,
        "ratios": ratios(results, default),
    }
    write_reports(report, "-quick" if args.quick else "", args.output)
    print((args.output / f"fio_suite{'-quick' if args.quick else ''}.md").read_text())
    worst = min(report["ratios"]["default_vs_passthrough"].values(), default=0.0)
    print(f"fio_suite: default_vs_passthrough_min={worst:.2f}")
    return 0


def progress(
    done: int, total: int, started: float, target: str, job: str, r: dict[str, Any]
) -> None:
    elapsed = time.monotonic() - started
    eta = elapsed / done * (total - done)
    rate = r.get("iops", r.get("ops_s", r.get("error", "?")))
    print(
        f"[{done:3}/{total}] {target:16} {job:20} {rate!s:>10}   "
        f"({elapsed:4.0f} s, eta {eta:4.0f} s)",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
