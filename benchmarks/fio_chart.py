"""The fio suite's chart: what a reader needs from one run, on one figure.

Top left, the headline ratio per job, the default cache mode against pyfuse3's passthroughfs,
drawn as ratios on a log scale against the project's target (1.5x) and parity (1x), each bar
labelled with its value and coloured by whether it meets the target. Top right, the two other
headline ratios against their targets: shared memory against the socket transport (1.6x) and
cache=always against native tmpfs (0.5x). Error bars span the rounds: each round's ratio pairs
runs made seconds apart (every job runs on every target back to back), so min to max of those
is the run's own spread. Below, every target's rate per job (log scale), the default target
in a strong colour and the rest muted, with the same min-max error bars. The date, mode,
rounds and machine are on the figure itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: The project's targets for the headline ratios.
RATIO_TARGETS = {"default_vs_passthrough": 1.5, "shm_vs_socket": 1.6, "always_vs_tmpfs": 0.5}
#: The default target stands out; passthroughfs, the reference, is dark; the rest are muted.
DEFAULT_COLOUR = "#d62728"
MUTED = {
    "tmpfs": "#9ecae1",
    "disk": "#c6dbef",
    "ringfs-none": "#a1d99b",
    "ringfs-auto": "#fcbba1",
    "ringfs-always": "#74c476",
    "ringfs-writeback": "#c7e9c0",
    "ringfs-noxattr": "#fdae6b",
    "ringfs-socket": "#bcbddc",
    "passthrough": "#525252",
}
PASS_COLOUR, FAIL_COLOUR = "#2ca02c", "#ff7f0e"


def _rate(result: dict[str, Any]) -> float | None:
    rate: float | None = result.get("iops") or result.get("ops_s")
    return rate


def _round_rates(result: dict[str, Any]) -> list[float]:
    return [r for r in result.get("round_rates") or [] if r]


def _ratio_spread(
    results: dict[str, Any], a: str, b: str, job: str, central: float
) -> tuple[float, float] | None:
    """(below, above) `central` to the smallest and largest per-round ratio of a over b, or
    None when the results file holds no per-round rates."""
    ra = results.get(a, {}).get(job, {}).get("round_rates") or []
    rb = results.get(b, {}).get(job, {}).get("round_rates") or []
    pairs = [x / y for x, y in zip(ra, rb, strict=False) if x and y]
    if len(pairs) < 2:
        return None
    return max(central - min(pairs), 0.0), max(max(pairs) - central, 0.0)


def _ratio_bars(
    ax: Any,
    labels: list[str],
    values: list[float],
    spreads: list[tuple[float, float] | None],
    target: list[float],
    log: bool = True,
) -> None:
    colours = [PASS_COLOUR if v >= t else FAIL_COLOUR for v, t in zip(values, target, strict=True)]
    xs = list(range(len(values)))
    ax.bar(xs, values, color=colours, edgecolor="black", linewidth=0.5, zorder=2)
    with_spread = [(x, v, s) for x, v, s in zip(xs, values, spreads, strict=True) if s]
    if with_spread:
        ax.errorbar(
            [x for x, _, _ in with_spread],
            [v for _, v, _ in with_spread],
            yerr=[[s[0] for _, _, s in with_spread], [s[1] for _, _, s in with_spread]],
            fmt="none",
            ecolor="black",
            capsize=3,
            linewidth=1,
            zorder=3,
        )
    for x, v, s in zip(xs, values, spreads, strict=True):
        ax.annotate(
            f"{v:.2f}x",
            (x, v + (s[1] if s else 0.0)),
            textcoords="offset points",
            xytext=(0, 3),
            ha="center",
            va="bottom",
            fontsize=7,
        )
    reach = [v + (s[1] if s else 0.0) for v, s in zip(values, spreads, strict=True)]
    top = max([*reach, *target]) * (2.5 if log else 1.15)
    if log:
        ax.set_yscale("log")
    ax.set_ylim(top=top)
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle=":", zorder=1)
    ax.set_xticks(
        xs, labels, rotation=35 if log else 0, ha="right" if log else "center", fontsize=8
    )
    ax.grid(axis="y", which="both", alpha=0.25, zorder=0)


def draw_chart(report: dict[str, Any], path: Path) -> bool:
    """Draw `report` (fio_suite's JSON) to `path`; False (and a note) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.lines import Line2D
        from matplotlib.patches import Patch
    except ImportError:
        print("(matplotlib not installed: no chart)")
        return False
    results: dict[str, Any] = report["results"]
    ratios: dict[str, Any] = report.get("ratios", {})
    default = ratios.get("default", "ringfs-auto")
    targets = list(results)
    jobs = [j for j in next(iter(results.values()), {})] if results else []
    fig = plt.figure(figsize=(15, 10.5))
    grid = fig.add_gridspec(
        2,
        2,
        width_ratios=[3.4, 1],
        height_ratios=[1, 1.15],
        hspace=0.5,
        wspace=0.15,
        top=0.88,
        bottom=0.1,
    )

    # -- the default against passthroughfs, per job
    ax = fig.add_subplot(grid[0, 0])
    vs = ratios.get("default_vs_passthrough", {})
    labels = [j for j in jobs if j in vs]
    goal = RATIO_TARGETS["default_vs_passthrough"]
    if labels:
        values = [vs[j] for j in labels]
        spreads = [_ratio_spread(results, default, "passthrough", j, vs[j]) for j in labels]
        _ratio_bars(ax, labels, values, spreads, [goal] * len(labels))
        ax.axhline(goal, color="black", linestyle="--", linewidth=1, zorder=4)
        ax.annotate(
            f"target {goal}x",
            (-0.5, goal),
            textcoords="offset points",
            xytext=(2, 3),
            ha="left",
            fontsize=8,
        )
        met = sum(v >= goal for v in values)
        ax.set_title(
            f"{default} (the default) / passthroughfs: {met} of {len(values)} jobs "
            f"meet the {goal}x target",
            fontsize=10,
        )
    else:
        ax.text(
            0.5,
            0.5,
            "not measured in this run (needs the default and passthrough)",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
        ax.set_xticks([])
    ax.set_ylabel("ratio of rates (log)")

    # -- the other headline ratios, each against its own target
    ax = fig.add_subplot(grid[0, 1])
    other = [
        (
            "shm / socket\ncache=none\n4k rand read",
            "shm_vs_socket_randread_4k_qd1",
            "ringfs-none",
            "ringfs-socket",
            RATIO_TARGETS["shm_vs_socket"],
        ),
        (
            "cache=always\n/ tmpfs\n4k rand read",
            "always_vs_tmpfs_randread_4k_qd1",
            "ringfs-always",
            "tmpfs",
            RATIO_TARGETS["always_vs_tmpfs"],
        ),
    ]
    shown = [o for o in other if o[1] in ratios]
    if shown:
        values = [ratios[key] for _, key, _, _, _ in shown]
        spreads = [
            _ratio_spread(results, a, b, "randread-4k-qd1", ratios[key])
            for _, key, a, b, _ in shown
        ]
        _ratio_bars(
            ax, [label for label, *_ in shown], values, spreads, [t for *_, t in shown], log=False
        )
        for x, (*_, t) in enumerate(shown):
            ax.hlines(t, x - 0.45, x + 0.45, colors="black", linestyles="--", linewidth=1, zorder=4)
            ax.annotate(
                f"target {t}x",
                (x, t),
                textcoords="offset points",
                xytext=(0, 3),
                ha="center",
                fontsize=7,
            )
    else:
        ax.text(
            0.5, 0.5, "not measured\nin this run", ha="center", va="center", transform=ax.transAxes
        )
        ax.set_xticks([])
    ax.set_title("other headline ratios", fontsize=10)
    legend = [
        Patch(color=PASS_COLOUR, label="meets its target"),
        Patch(color=FAIL_COLOUR, label="below its target"),
        Line2D([], [], color="black", linestyle="--", label="target"),
        Line2D([], [], color="grey", linestyle=":", label="parity (1x)"),
    ]
    ax.legend(handles=legend, fontsize=7, loc="upper right")

    # -- every target's rates, the default highlighted
    ax = fig.add_subplot(grid[1, :])
    width = 0.8 / max(len(targets), 1)
    for i, t in enumerate(targets):
        xs = [j + i * width for j in range(len(jobs))]
        values = [_rate(results[t].get(job, {})) or 0 for job in jobs]
        spread = [_round_rates(results[t].get(job, {})) for job in jobs]
        pairs = list(zip(values, spread, strict=True))
        lows = [max(v - min(s), 0) if len(s) > 1 else 0 for v, s in pairs]
        highs = [max(max(s) - v, 0) if len(s) > 1 else 0 for v, s in pairs]
        is_default = t == default
        ax.bar(
            xs,
            values,
            width,
            label=f"{t} (default)" if is_default else t,
            color=DEFAULT_COLOUR if is_default else MUTED.get(t, "#d9d9d9"),
            edgecolor="black" if is_default else "none",
            linewidth=1.2 if is_default else 0,
            yerr=[lows, highs] if any(highs) or any(lows) else None,
            error_kw={"elinewidth": 0.6, "capsize": 1.5},
            zorder=3 if is_default else 2,
        )
    ax.set_xticks(
        [j + 0.4 - width / 2 for j in range(len(jobs))], jobs, rotation=35, ha="right", fontsize=8
    )
    ax.set_yscale("log")
    ax.set_ylabel("IOPS (fio jobs) or operations/s (log)")
    ax.set_title("every target's rate per job", fontsize=10)
    ax.grid(axis="y", which="major", alpha=0.25, zorder=0)
    ax.legend(fontsize=8, ncol=4, loc="upper right")

    has_rounds = any(_round_rates(r) for per_job in results.values() for r in per_job.values())
    bars = (
        "Error bars: smallest to largest of the rounds"
        if has_rounds
        else "No error bars: one round"
        if report.get("rounds") == 1
        else "No error bars: this results file records only each job's median round"
    )
    fig.suptitle(
        f"ringfs fio suite ({report.get('mode', '?')} mode, {report.get('date', '?')}, "
        f"median of {report.get('rounds', '?')} round(s))",
        fontsize=13,
    )
    fig.text(
        0.5, 0.94, f"{report.get('machine', '')}; {report.get('fio', '')}", ha="center", fontsize=9
    )
    fig.text(
        0.5,
        0.01,
        f"All targets up at once, each job run on every target back to back. {bars}.",
        ha="center",
        fontsize=8,
        style="italic",
    )
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
