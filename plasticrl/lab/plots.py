"""PNG dashboards from run folders' ``metrics.jsonl`` (no W&B needed), and continual runs' success matrices.

Panels: episode and evaluation return (continual runs: mean score), replay ratio in force, and for each monitored
group its dormant ratio, FAU and srank, all over env steps (continual runs: gradient steps); interventions
(``intervention/<kind>/<group>/count`` records) are dotted vertical lines in every panel. Runs are grouped by
config (the run folder's parent, ``runs/<name>/``); a group of several seeds is drawn as its mean with a shaded band
of one standard deviation, groups side by side in colour. ``plot_success_matrix`` draws a continual run's task x task
success matrix; ``plasticrl plot`` redraws it for continual run folders (``plot_success_matrix_of_run``).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure  # no pyplot: no global backend or figure registry
from matplotlib.ticker import EngFormatter, MaxNLocator

from plasticrl.runlog import STEP_KEY, read_jsonl

GROUP_METRICS = ("dormant_ratio", "fau", "srank")


def series(records: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(env steps, values) of every record that has ``key`` with a number."""
    pts = [(r[STEP_KEY], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    if not pts:
        return np.empty(0), np.empty(0)
    steps, values = zip(*pts)
    return np.asarray(steps, dtype=float), np.asarray(values, dtype=float)


def panel_keys(runs: list[list[dict]]) -> list[tuple[str, list[str]]]:
    """(title, keys) per panel, for the keys these runs contain."""
    keys = {k for records in runs for r in records for k in r}
    groups = sorted({k.split("/")[1] for k in keys if k.startswith("plasticity/") and k.count("/") == 2})
    panels = [("return", [k for k in ("train/episode_return", "eval/return_mean") if k in keys]),
              ("score (continual runs)", [k for k in ("eval/mean_score", "eval/mean_success") if k in keys][:1]),
              ("replay ratio", [k for k in ("replay_ratio/ratio",) if k in keys])]
    for group in groups:
        for metric in GROUP_METRICS:
            key = f"plasticity/{group}/{metric}"
            if key in keys:
                panels.append((f"{group} {metric}", [key]))
    return [(title, ks) for title, ks in panels if ks]


def interventions(records: list[dict]) -> list[tuple[float, str]]:
    """(env step, "<kind> <group>") of every intervention a run logged (its ``intervention/<kind>/<group>/count``)."""
    found = []
    for r in records:
        for key in r:
            parts = key.split("/")
            if parts[0] == "intervention" and len(parts) == 4 and parts[3] == "count":
                found.append((float(r[STEP_KEY]), f"{parts[1]} {parts[2]}"))
    return found


def _mean_band(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and std over seeds on the union of their steps (each seed interpolated, within its own range)."""
    grid = np.unique(np.concatenate([s for s, _ in curves]))
    stacked = np.full((len(curves), len(grid)), np.nan)
    for i, (s, v) in enumerate(curves):
        inside = (grid >= s.min()) & (grid <= s.max())
        stacked[i, inside] = np.interp(grid[inside], s, v)
    with np.errstate(all="ignore"):
        return grid, np.nanmean(stacked, axis=0), np.nanstd(stacked, axis=0)


def plot_runs(run_dirs: list[Path], out: Path | None = None) -> Path:
    """Draws the dashboard of ``run_dirs`` into ``out`` (default ``<first run>/plots/dashboard.png``)."""
    run_dirs = [Path(d) for d in run_dirs]
    missing = [str(d) for d in run_dirs if not (d / "metrics.jsonl").is_file()]
    if missing:
        raise FileNotFoundError(f"no metrics.jsonl in {', '.join(missing)}: pass run folders written by "
                                "`plasticrl train` (runs/<name>/<seed>-<time>/)")
    by_config: dict[str, list[list[dict]]] = defaultdict(list)
    for d in run_dirs:
        by_config[d.parent.name].append(read_jsonl(d))
    panels = panel_keys([r for runs in by_config.values() for r in runs])
    if not panels:
        raise ValueError("these runs logged nothing to plot yet (no returns, replay ratio or plasticity metrics)")
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(5 * cols, 3.2 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (title, keys) in zip(axes.flat, panels):
        for ci, (config, runs) in enumerate(sorted(by_config.items())):
            for ki, key in enumerate(keys):
                curves = [c for c in (series(r, key) for r in runs) if len(c[0])]
                if not curves:
                    continue
                steps, mean, std = _mean_band(curves)
                label = config if len(keys) == 1 else f"{config} {key.split('/')[0]}"
                style = "-" if ki == 0 else "--"
                # markers on sparse curves: a series of one point (e.g. the final eval only) is otherwise invisible
                ax.plot(steps, mean, style, color=colors[ci % len(colors)], label=label, lw=1.5,
                        marker="o" if len(steps) <= 20 else None, ms=3)
                if len(curves) > 1:
                    ax.fill_between(steps, mean - std, mean + std, color=colors[ci % len(colors)], alpha=0.2)
        for ci, (config, runs) in enumerate(sorted(by_config.items())):
            labelled: set[str] = set()
            for step, what in (m for r in runs for m in interventions(r)):
                ax.axvline(step, color=colors[ci % len(colors)], ls=":", lw=1,
                           label=None if what in labelled else f"{config} {what}")
                labelled.add(what)
        ax.set_title(title)
        ax.set_ylabel(title)
        ax.set_xlabel("steps (env; continual runs: gradient)")
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 25k, 1.5M: readable at any run length
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(", ".join(f"{config} ({len(runs)} seed{'s' if len(runs) > 1 else ''})"
                           for config, runs in sorted(by_config.items())))
    fig.tight_layout()
    out = Path(out) if out else run_dirs[0] / "plots" / "dashboard.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out


def plot_success_matrix(perf: np.ndarray, tasks: list[str], path: Path) -> Path:
    """Heatmap PNG of a continual run's success matrix ``perf`` (n, n) of scores: row i = after training task i,
    column j = task j evaluated; NaN rows (not reached yet) stay blank; scores written in; the colour range is [0, 1]
    widened to any score outside it. Returns ``path``."""
    n = len(tasks)
    labels = [t.partition(":")[2] or t for t in tasks]
    fig = Figure(figsize=(3.5 + 0.6 * n, 2.5 + 0.5 * n))
    ax = fig.subplots()
    finite = perf[np.isfinite(perf)]  # success rates lie in [0, 1]; DMC's data-normalised returns may not
    low, high = min(0.0, float(finite.min(initial=0.0))), max(1.0, float(finite.max(initial=1.0)))
    im = ax.imshow(perf, vmin=low, vmax=high, cmap="viridis")
    ax.set_xticks(range(n), labels, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(n), labels, fontsize=7)
    ax.set_xlabel("evaluated task")
    ax.set_ylabel("after training task")
    for i in range(n):
        for j in range(n):
            if np.isfinite(perf[i, j]):
                ax.text(j, i, f"{perf[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if perf[i, j] < (low + high) / 2 else "black")
    fig.colorbar(im, ax=ax, label="score (success rate; DMC: data-normalised return)")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def plot_success_matrix_of_run(run_dir: Path) -> Path:
    """``plot_success_matrix`` of a ``plasticrl continual`` run folder's success_matrix.json, into its
    plots/success_matrix.png."""
    data = json.loads((Path(run_dir) / "success_matrix.json").read_text())
    perf = np.array([[np.nan if v is None else v for v in row] for row in data["perf"]], dtype=float)
    return plot_success_matrix(perf, data["tasks"], Path(run_dir) / "plots" / "success_matrix.png")
