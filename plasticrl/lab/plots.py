"""PNG dashboards from run folders' ``metrics.jsonl`` (no W&B needed), and continual runs' success matrices.

A figure for a paper draft: one panel per quantity, over env steps (continual runs: gradient steps). Panels: return
(training episodes thin and light, evaluations thick with markers; continual runs: mean score), the critic and actor
losses and Q (when logged), the replay ratio (only when it changes), and one panel per plasticity metric (dormant
ratio, FAU, srank) with a line per monitored group (encoder, actor, critic: line styles). Ratios keep the fixed
range [0, 1]; ranks start at 0, so that 116 -> 115 does not fill a panel. Dotted vertical lines mark interventions
(``intervention/<kind>/<group>/count`` records), dashed ones the replay-ratio switch of adaptive runs.

Runs are grouped by *config*: folders under one ``runs/<name>/`` (a sweep's: of one ``<sweep>/<arm>/<task>``) whose
``config.yaml`` differ (in anything but the seed, folders and W&B names) are different arms, labelled
``<name> [key=value, ...]`` with the keys that tell them apart; seeds of one arm are drawn as their mean with a shaded
band of one standard deviation, arms in colour.
``plot_success_matrix`` draws a continual run's task x task success matrix; ``plasticrl plot`` redraws it for
continual run folders (``plot_success_matrix_of_run``). ``plasticrl plot`` takes run folders or folders holding them
(``runs/<name>/``, ``runs/``): ``find_run_dirs`` expands those to the run folders (with a ``metrics.jsonl``) under
them.
"""

from __future__ import annotations

import json
import re
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import yaml
from matplotlib.figure import Figure  # no pyplot: no global backend or figure registry
from matplotlib.ticker import EngFormatter, MaxNLocator

from plasticrl.lab.errors import ConfigError
from plasticrl.runlog import STEP_KEY, read_jsonl

GROUP_METRICS = ("dormant_ratio", "fau", "srank")
TRAIN_PANELS = (("critic loss", "train/critic_loss"), ("actor loss", "train/actor_loss"), ("Q", "train/q"))
FIXED_RANGE = {"dormant_ratio": (0.0, 1.0), "fau": (0.0, 1.0)}
GROUP_STYLES = ("-", "-.", (0, (5, 1)), (0, (3, 1, 1, 1)))  # ":" and "--" mark interventions and RR switches
# config keys that differ between seeds of one arm, not between arms
_NOT_ARM = ("run.seed", "run.out_dir", "run.name", "run.dir", "logging.wandb.name", "logging.wandb.group")
SEED_PART = re.compile(r"^seed\d+$")  # the last part of a sweep run's name, <sweep>/<arm>/<task>/seed<k>


RUN_HINT = ("pass run folders written by `plasticrl train` (runs/<name>/<seed>-<time>/, a sweep's "
            "<sweep>/<arm>/<task>/seed<k>/) or a folder holding them")


def find_run_dirs(paths: list[str | Path]) -> list[Path]:
    """``paths`` with each folder that is not a run folder (no ``metrics.jsonl``) replaced by the run folders under it,
    in name order, leaving out those a sweep set aside (``*.interrupted-<n>``); ConfigError, one line naming the path,
    for a path that is missing, not a folder, or holds no run folder."""
    found: dict[Path, None] = {}
    for path in map(Path, paths):
        if not path.exists():
            raise ConfigError(f"{str(path)!r} does not exist; {RUN_HINT}")
        if not path.is_dir():
            raise ConfigError(f"{str(path)!r} is not a folder; {RUN_HINT}")
        if (path / "metrics.jsonl").is_file():
            found[path] = None
            continue
        under = [m.parent for m in sorted(path.rglob("metrics.jsonl"))
                 if m.is_file() and not any(".interrupted-" in part for part in m.parent.relative_to(path).parts)]
        if not under:
            raise ConfigError(f"no run folders (with a metrics.jsonl) at or under {str(path)!r}; {RUN_HINT}")
        found.update(dict.fromkeys(under))
    return list(found)


def series(records: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(env steps, values) of every record that has ``key`` with a number."""
    pts = [(r[STEP_KEY], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    if not pts:
        return np.empty(0), np.empty(0)
    steps, values = zip(*pts)
    return np.asarray(steps, dtype=float), np.asarray(values, dtype=float)


def _ratio_changes(records: list[dict]) -> bool:
    return len(set(series(records, "replay_ratio/ratio")[1].tolist())) > 1


def panel_keys(runs: list[list[dict]]) -> list[tuple[str, list[str]]]:
    """(title, keys) per panel, for the keys these runs contain: return, score, losses and Q, the replay ratio when
    some run changes it, and per metric of ``GROUP_METRICS`` the key of every monitored group."""
    keys = {k for records in runs for r in records for k in r}
    groups = sorted({k.split("/")[1] for k in keys if k.startswith("plasticity/") and k.count("/") == 2})
    panels = [("return", [k for k in ("train/episode_return", "eval/return_mean") if k in keys]),
              ("score (continual runs)", [k for k in ("eval/mean_score", "eval/mean_success") if k in keys][:1])]
    panels += [(title, [key] if key in keys else []) for title, key in TRAIN_PANELS]
    panels.append(("replay ratio", ["replay_ratio/ratio"] if any(_ratio_changes(r) for r in runs) else []))
    for metric in GROUP_METRICS:
        panels.append((metric.replace("_", " "), [f"plasticity/{g}/{metric}" for g in groups
                                                  if f"plasticity/{g}/{metric}" in keys]))
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


def ratio_switches(records: list[dict]) -> list[float]:
    """Env steps at which the logged replay ratio changed (an adaptive run's switch)."""
    steps, values = series(records, "replay_ratio/ratio")
    return [float(steps[i]) for i in range(1, len(values)) if values[i] != values[i - 1]]


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix[:-1]: json.dumps(data, sort_keys=True)}
    out: dict[str, Any] = {}
    for k, v in data.items():
        out.update(_flat(v, f"{prefix}{k}."))
    return out


def _arm_config(run_dir: Path) -> dict[str, Any]:
    """The run's ``config.yaml`` flattened, without the keys that differ between seeds ({} without one)."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return {}
    flat = _flat(yaml.safe_load(path.read_text()) or {})
    return {k: v for k, v in flat.items() if k not in _NOT_ARM}


def series_name(run_dir: Path) -> str:
    """The name a run's seeds share: ``<sweep>/<arm>/<task>`` for a sweep run (``run.name`` without its
    ``/seed<k>``), else the run folder's parent name (``runs/<name>/``)."""
    path = run_dir / "config.yaml"
    run = (yaml.safe_load(path.read_text()) or {}).get("run", {}) if path.is_file() else {}
    parts = str(run.get("name", "")).split("/")
    return "/".join(parts[:-1]) if len(parts) >= 4 and SEED_PART.match(parts[-1]) else run_dir.parent.name


def arms(run_dirs: list[Path]) -> dict[str, list[Path]]:
    """Run folders grouped into arms (label -> folders): by ``series_name``, split further by config where folders
    of one name were run with different configs; such labels get the keys that tell them apart."""
    by_name: dict[str, list[Path]] = defaultdict(list)
    for d in run_dirs:
        by_name[series_name(d)].append(d)
    out: dict[str, list[Path]] = {}
    for name, dirs in by_name.items():
        configs = {d: _arm_config(d) for d in dirs}
        distinct: list[dict[str, Any]] = []
        for c in configs.values():
            if c not in distinct:
                distinct.append(c)
        if len(distinct) == 1:
            out[name] = dirs
            continue
        differing = sorted({k for c in distinct for k in c if any(c.get(k) != o.get(k) for o in distinct)})
        for c in distinct:
            label = f"{name} [{', '.join(f'{k}={c.get(k)}' for k in differing)}]"
            out[label] = [d for d in dirs if configs[d] == c]
    return out


def _mean_band(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and std over seeds on the union of their steps (each seed interpolated, within its own range)."""
    grid = np.unique(np.concatenate([s for s, _ in curves]))
    stacked = np.full((len(curves), len(grid)), np.nan)
    for i, (s, v) in enumerate(curves):
        inside = (grid >= s.min()) & (grid <= s.max())
        stacked[i, inside] = np.interp(grid[inside], s, v)
    with np.errstate(all="ignore"):
        return grid, np.nanmean(stacked, axis=0), np.nanstd(stacked, axis=0)


def _line_style(title: str, key: str, keys: list[str]) -> tuple[str, str, dict[str, Any]]:
    """(label suffix, line style, plot keywords) of ``key`` in a panel of ``keys``."""
    if title == "return":
        train = key.startswith("train/")
        return ("train" if train else "eval"), "-", {"lw": 0.8 if train else 2.0, "alpha": 0.45 if train else 1.0}
    if key.startswith("plasticity/"):
        return key.split("/")[1], GROUP_STYLES[keys.index(key) % len(GROUP_STYLES)], {"lw": 1.5}
    return "", "-", {"lw": 1.5}


def _y_range(ax: Any, title: str) -> None:
    metric = title.replace(" ", "_")
    if metric in FIXED_RANGE:
        ax.set_ylim(*FIXED_RANGE[metric])
    elif metric == "srank":
        ax.set_ylim(bottom=0)


def plot_runs(run_dirs: list[Path], out: Path | None = None) -> Path:
    """Draws the dashboard of ``run_dirs`` into ``out`` (default ``<first run>/plots/dashboard.png``)."""
    run_dirs = [Path(d) for d in run_dirs]
    missing = [str(d) for d in run_dirs if not (d / "metrics.jsonl").is_file()]
    if missing:
        raise FileNotFoundError(f"no metrics.jsonl in {', '.join(missing)}: pass run folders written by "
                                "`plasticrl train` (runs/<name>/<seed>-<time>/)")
    out = Path(out) if out else run_dirs[0] / "plots" / "dashboard.png"  # the first run's, even if left out below
    records = {d: read_jsonl(d) for d in run_dirs}  # each file read (and warned about) once
    empty = [str(d / "metrics.jsonl") for d in run_dirs if not records[d]]
    if len(empty) == len(run_dirs):
        raise ConfigError(f"{', '.join(empty)} {'is' if len(empty) == 1 else 'are'} empty: the run has logged nothing "
                          "yet (records come at episode ends and evaluations); plot it later or leave it out")
    if empty:  # runs that have just started, beside others: drawn without them
        warnings.warn(f"left out, nothing logged yet: {', '.join(empty)}", RuntimeWarning, stacklevel=2)
        run_dirs = [d for d in run_dirs if records[d]]
    by_arm = {label: [records[d] for d in dirs] for label, dirs in sorted(arms(run_dirs).items())}
    panels = panel_keys([r for runs in by_arm.values() for r in runs])
    if not panels:
        raise ConfigError("these runs logged nothing to plot yet (no returns, replay ratio or plasticity metrics)")
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(5 * cols, 3.2 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (title, keys) in zip(axes.flat, panels):
        for ci, (arm, runs) in enumerate(by_arm.items()):
            color = colors[ci % len(colors)]
            for key in keys:
                curves = [c for c in (series(r, key) for r in runs) if len(c[0])]
                if not curves:
                    continue
                steps, mean, std = _mean_band(curves)
                suffix, style, kw = _line_style(title, key, keys)
                label = f"{arm} {suffix}".strip() if len(by_arm) > 1 or suffix else arm
                # markers on sparse curves: a series of one point (e.g. the final eval only) is otherwise invisible
                ax.plot(steps, mean, linestyle=style, color=color, label=label,
                        marker="o" if len(steps) <= 20 else None, ms=3, **kw)
                if len(curves) > 1:
                    ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.2)
            labelled: set[str] = set()
            for step, what in (m for r in runs for m in interventions(r)):
                ax.axvline(step, color=color, ls=":", lw=1, label=None if what in labelled else f"{arm} {what}")
                labelled.add(what)
            for i, step in enumerate(s for r in runs for s in ratio_switches(r)):
                ax.axvline(step, color=color, ls="--", lw=1, label=None if i else f"{arm} RR switch")
        ax.set_title(title)
        ax.set_ylabel(title)
        _y_range(ax, title)
        ax.set_xlabel("steps (env; continual runs: gradient)")
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 25k, 1.5M: readable at any run length
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(", ".join(f"{arm} ({len(runs)} seed{'s' if len(runs) > 1 else ''})" for arm, runs in by_arm.items()))
    fig.tight_layout()
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
