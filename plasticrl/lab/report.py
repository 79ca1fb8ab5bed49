"""``plasticrl report``: per arm, task and frame budget, the mean +- std over seeds and the interquartile mean (IQM)
with a stratified-bootstrap 95 % confidence interval (rliable) of one metric, from run folders; written as a
Markdown table, a CSV and a PNG of the curves per arm with CI bands.

Frames = agent steps x ``env.action_repeat`` (from each run's ``config.yaml``). A run's value at budget B is its last
evaluation at or before B frames; a run that has not trained B frames is left out of B and counted as short. Runs
are grouped by arm and task: a sweep run named ``<sweep>/<arm>/<task>/seed<k>`` by those parts, any other run by
its ``run.name`` (arm) and env id (task).

With two or more tasks, each arm also gets an aggregate over tasks per budget (rows ``task = all``), as Agarwal et
al. 2021 make it: scores normalised per task (``dmc``: return / 1000, the DMC suite's maximum; ``none``: raw), then
the IQM over all (run, task) scores with a stratified-bootstrap 95 % CI of the (runs x tasks) matrix.
"""

from __future__ import annotations

import csv
import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import yaml
from matplotlib.figure import Figure  # no pyplot: no global backend or figure registry
from pydantic import Field

from plasticrl.lab.config.base import ConfigError, Section, validate_model
from plasticrl.runlog import STEP_KEY, read_jsonl

SEED_PART = re.compile(r"^seed\d+$")
SUFFIXES = {"k": 1_000, "m": 1_000_000, "g": 1_000_000_000}
DMC_MAX_RETURN = 1000.0  # a DMC episode is 1000 steps with rewards in [0, 1]
NORMALIZE = {"dmc": "return / 1000 (the DMC suite's maximum)", "none": "raw scores, not normalised"}


@dataclass
class RunCurve:
    """One run's metric over agent steps, and where its arm, task and frames come from."""

    folder: Path
    arm: str
    task: str
    seed: int
    action_repeat: int
    steps: np.ndarray  # agent steps of the metric's records
    values: np.ndarray
    last_step: int  # the last env_step the run logged (how far it trained)
    suite: str = ""  # the env id's prefix (``dmc`` of ``dmc:cheetah-run``)

    @property
    def frames(self) -> np.ndarray:
        return self.steps * self.action_repeat

    def value_at(self, budget: int) -> float | None:
        """The last value at or before ``budget`` frames; None if the run has not trained ``budget`` frames or has
        no value by then."""
        if self.last_step * self.action_repeat < budget:
            return None
        before = np.flatnonzero(self.frames <= budget)
        return float(self.values[before[-1]]) if len(before) else None


@dataclass
class Reference:
    """One published number: mean and std of ``arm`` on ``task`` at ``frames``."""

    task: str
    arm: str
    frames: int
    mean: float
    std: float
    label: str


@dataclass
class Cell:
    """One row of the report: an arm on a task at a frame budget."""

    arm: str
    task: str
    frames: int
    agent_steps: int | None  # None when the runs' action repeats differ
    scores: np.ndarray  # one value per run that reached the budget
    short: int  # runs of this arm and task that had not trained ``frames``
    iqm: float = float("nan")
    ci_low: float = float("nan")
    ci_high: float = float("nan")
    reference: Reference | None = None
    normalize: str = ""  # an aggregate over tasks (``task = all``): the normalisation of its scores


# --- inputs -----------------------------------------------------------------------------------------------------

def parse_budgets(text: str) -> list[int]:
    """``100k,500k,1M,2M`` -> frame counts (suffixes k, M, G; case-insensitive); ConfigError naming a bad item."""
    budgets = []
    for item in (t.strip() for t in text.split(",")):
        match = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmMgG]?)", item)
        if match is None or float(match.group(1)) <= 0:
            raise ConfigError(f"--budgets: {item!r} is not a frame count; give e.g. 100k,500k,1M,2M or 2000000")
        budgets.append(round(float(match.group(1)) * SUFFIXES.get(match.group(2).lower(), 1)))
    return sorted(set(budgets))


def find_runs(paths: list[str | Path]) -> list[Path]:
    """Run folders (``config.yaml`` and ``metrics.jsonl``) at or under ``paths``, not those set aside by a sweep
    (``*.interrupted-<n>``); ConfigError if there are none."""
    found: dict[Path, None] = {}
    for path in map(Path, paths):
        if not path.is_dir():
            raise ConfigError(f"{str(path)!r} is not a folder; give run folders or folders holding them (a sweep's)")
        for config in sorted([path / "config.yaml", *path.rglob("config.yaml")]):
            folder = config.parent.resolve()
            if config.is_file() and (folder / "metrics.jsonl").is_file() and \
                    not any(".interrupted-" in part for part in folder.parts):
                found[folder] = None
    if not found:
        raise ConfigError(f"no run folders (config.yaml + metrics.jsonl) at or under {', '.join(map(str, paths))}")
    return list(found)


def read_run(folder: Path, metric: str) -> RunCurve:
    """A run folder's curve of ``metric``; arm and task from a sweep run name, else ``run.name`` and the env id."""
    config = yaml.safe_load((folder / "config.yaml").read_text()) or {}
    run, env = config.get("run", {}), config.get("env", {})
    name, env_id = str(run.get("name", folder.parent.name)), str(env.get("id", "?"))
    parts = name.split("/")
    arm, task = (parts[-3], parts[-2]) if len(parts) >= 4 and SEED_PART.match(parts[-1]) else \
        (name, env_id.partition(":")[2] or env_id)
    records = read_jsonl(folder)
    points = [(r[STEP_KEY], r[metric]) for r in records if isinstance(r.get(metric), (int, float))]
    steps, values = (np.asarray(c, dtype=float) for c in zip(*points)) if points else (np.empty(0), np.empty(0))
    return RunCurve(folder, arm, task, int(run.get("seed", 0)), int(env.get("action_repeat", 1)), steps, values,
                    max((int(r[STEP_KEY]) for r in records), default=0), env_id.partition(":")[0] if ":" in env_id
                    else "")


class ReferenceFile(Section):
    source: str = Field(description="where the numbers are published")
    frames: int = Field(gt=0, description="the frame budget of every number")
    seeds: int | None = Field(None, ge=1, description="seeds behind each number")
    labels: dict[str, str] = Field(default_factory=dict, description="{arm: label printed for it}")
    results: dict[str, dict[str, tuple[float, float]]] = Field(description="{task: {arm: [mean, std]}}")


def read_reference(path: str | Path) -> tuple[str, list[Reference]]:
    """Published numbers: a YAML file (``ReferenceFile``: source, frames, results by task and arm) or a CSV with the
    columns task, arm, frames, mean, std. Returns (source, numbers); ConfigError naming the bad key or line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--reference {str(path)!r} not found; e.g. configs/reference/adaptive_rr_table1.yaml")
    if path.suffix.lower() == ".csv":
        return path.name, _reference_csv(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping (source, frames, results), got {type(data).__name__}")
    ref = validate_model(ReferenceFile, data, source=str(path))
    return ref.source, [Reference(task, arm, ref.frames, mean, std, ref.labels.get(arm, arm))
                        for task, arms in ref.results.items() for arm, (mean, std) in arms.items()]


def _reference_csv(path: Path) -> list[Reference]:
    columns = ["task", "arm", "frames", "mean", "std"]
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or any(c not in rows[0] for c in columns):
        raise ConfigError(f"{path}: a reference CSV needs the header {','.join(columns)}")
    out = []
    for line, row in enumerate(rows, start=2):
        try:
            out.append(Reference(row["task"], row["arm"], parse_budgets(row["frames"])[0], float(row["mean"]),
                                 float(row["std"]), row.get("label") or row["arm"]))
        except (ValueError, ConfigError):
            raise ConfigError(f"{path} line {line}: frames, mean and std must be numbers, got {row}") from None
    return out


# --- statistics ---------------------------------------------------------------------------------------------------

def iqm_ci(scores: np.ndarray, reps: int, seed: int) -> tuple[float, float, float]:
    """IQM of ``scores`` (one per run, or a runs x tasks matrix) and its 95 % stratified-bootstrap CI:
    ``rliable.library.get_interval_estimates`` with ``rliable.metrics.aggregate_iqm`` on a (runs x tasks) matrix (one
    task for a 1-d ``scores``), ``reps`` resamples, numpy's global RNG seeded with ``seed`` (rliable resamples with
    it) and restored after."""
    from rliable import library, metrics

    scores = np.asarray(scores, float)
    point, interval = _bootstrap(library, metrics.aggregate_iqm, scores.reshape(-1, 1) if scores.ndim == 1 else scores,
                                 reps, seed)
    low, high = np.ravel(interval)
    return float(point), float(low), float(high)


def iqm_band(scores: np.ndarray, reps: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IQM per point of a (runs x points) matrix and its 95 % stratified-bootstrap band: (iqm, low, high)."""
    from rliable import library
    from scipy.stats import trim_mean

    def per_point(s: np.ndarray) -> np.ndarray:  # rliable's IQM (the 25 % trimmed mean) over runs, at each point
        return trim_mean(s[:, 0, :], proportiontocut=0.25, axis=0)

    point, interval = _bootstrap(library, per_point, scores[:, None, :], reps, seed)
    return np.asarray(point), np.asarray(interval[0]), np.asarray(interval[1])


def _bootstrap(library: Any, func: Callable[[np.ndarray], Any], scores: np.ndarray, reps: int, seed: int
               ) -> tuple[Any, Any]:
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        points, intervals = library.get_interval_estimates({"x": scores}, func, reps=reps)
    finally:
        np.random.set_state(state)
    return points["x"], intervals["x"]


def build_cells(runs: list[RunCurve], budgets: list[int], reps: int, seed: int,
                references: list[Reference] | None = None) -> list[Cell]:
    """A ``Cell`` per (task, budget, arm) with its scores, short count, IQM and CI, and the matching reference."""
    groups: dict[tuple[str, str], list[RunCurve]] = {}
    for run in runs:
        groups.setdefault((run.task, run.arm), []).append(run)
    refs = {(r.task, r.arm, r.frames): r for r in references or []}
    cells = []
    for (task, arm), members in sorted(groups.items()):
        repeats = {r.action_repeat for r in members}
        repeat = repeats.pop() if len(repeats) == 1 else None
        for budget in budgets:
            values = [r.value_at(budget) for r in members]
            scores = np.asarray([v for v in values if v is not None])
            cell = Cell(arm, task, budget, budget // repeat if repeat else None, scores,
                        short=sum(v is None for v in values), reference=refs.get((task, arm, budget)))
            if len(scores):
                cell.iqm, cell.ci_low, cell.ci_high = iqm_ci(scores, reps, seed)
            cells.append(cell)
    return sorted(cells, key=lambda c: (c.task, c.frames, c.arm))


def build_aggregates(runs: list[RunCurve], budgets: list[int], reps: int, seed: int, normalize: str = "dmc"
                     ) -> tuple[list[Cell], list[str]]:
    """Per arm and budget, a ``Cell`` with ``task = all`` (when the runs hold two or more tasks): the (run, task)
    scores normalised per task (``normalize``: ``dmc`` divides by 1000, ``none`` keeps them), their IQM and the
    stratified-bootstrap CI of the (runs x tasks) matrix. Returns (cells, notes): a note for each aggregate left out
    (an arm without runs of some task at the budget, run counts that differ between tasks, non-DMC tasks under
    ``dmc``)."""
    if normalize not in NORMALIZE:
        raise ConfigError(f"--normalize {normalize!r}: give one of {', '.join(NORMALIZE)}")
    tasks = sorted({r.task for r in runs})
    if len(tasks) < 2:
        return [], []
    if normalize == "dmc":
        other = sorted({r.task for r in runs if r.suite != "dmc"})
        if other:
            what = "is not a DMC task" if len(other) == 1 else "are not DMC tasks"
            return [], [f"no aggregate over tasks: {', '.join(other)} {what} (--normalize dmc divides returns by "
                        "1000); pass --normalize none to pool raw scores"]
    scale = DMC_MAX_RETURN if normalize == "dmc" else 1.0
    cells, notes = [], []
    for arm in sorted({r.arm for r in runs}):
        members = sorted((r for r in runs if r.arm == arm), key=lambda r: (r.seed, str(r.folder)))
        lacking = [t for t in tasks if all(r.task != t for r in members)]
        if lacking:
            notes.append(f"{arm}: no aggregate over tasks, it has no runs of {', '.join(lacking)}")
            continue
        repeats = {r.action_repeat for r in members}
        repeat = repeats.pop() if len(repeats) == 1 else None
        for budget in budgets:
            values = {t: [r.value_at(budget) for r in members if r.task == t] for t in tasks}
            reached = {t: [v for v in vs if v is not None] for t, vs in values.items()}
            empty = [t for t, vs in reached.items() if not vs]
            counts = {t: len(vs) for t, vs in reached.items()}
            if empty or len(set(counts.values())) > 1:
                why = f"no run reached it on {', '.join(empty)}" if empty else \
                    "runs per task differ (" + ", ".join(f"{t}: {n}" for t, n in counts.items()) + \
                    "), and the stratified bootstrap needs a runs x tasks matrix"
                notes.append(f"{arm} at {frames_label(budget)} frames: no aggregate over tasks, {why}")
                continue
            matrix = np.asarray([reached[t] for t in tasks], float).T / scale  # runs x tasks
            cell = Cell(arm, "all", budget, budget // repeat if repeat else None, matrix.ravel(),
                        short=sum(v is None for vs in values.values() for v in vs), normalize=normalize)
            cell.iqm, cell.ci_low, cell.ci_high = iqm_ci(matrix, reps, seed)
            cells.append(cell)
    return sorted(cells, key=lambda c: (c.frames, c.arm)), notes


# --- outputs ------------------------------------------------------------------------------------------------------

def frames_label(frames: int) -> str:
    """2000000 -> ``2M``, 100000 -> ``100k``, 2400 -> ``2.4k``."""
    for suffix, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if frames >= size:
            return f"{frames / size:.4g}{suffix}"
    return str(frames)


def markdown(cells: list[Cell], metric: str, reps: int, seed: int, source: str | None = None,
             references: list[Reference] | None = None, notes: list[str] | None = None) -> str:
    """The report as Markdown: how it was computed, one table row per cell, and the published numbers."""
    lines = [f"# Report: `{metric}`", "",
             "Per arm, task and frame budget: the mean ± std (population, ddof=0) over the runs that reached the "
             "budget, and the IQM (interquartile mean) with its 95 % stratified-bootstrap confidence interval "
             f"(rliable, {reps} resamples, seed {seed}). Frames = agent steps × action repeat. A run's value at a "
             "budget is its last evaluation at or before it; runs that had not trained that many frames are left "
             "out and counted under *short*."
             + (f" Rows `all`: per arm and budget, the aggregate over tasks (Agarwal et al. 2021): scores "
                f"{NORMALIZE[aggregate[0].normalize]}, then the mean ± std and the IQM over all (run, task) scores, "
                "with the stratified-bootstrap CI of the runs × tasks matrix; *runs* counts (run, task) scores."
                if (aggregate := [c for c in cells if c.normalize]) else ""), "",
             "| task | arm | frames | agent steps | runs | short | mean ± std | IQM [95 % CI] |"
             + (" published |" if references else ""),
             "| --- | --- | --- | --- | --- | --- | --- | --- |" + (" --- |" if references else "")]
    for c in cells:
        f = ".3f" if c.normalize == "dmc" else ".1f"  # normalised scores lie in [0, 1]
        stats = [f"{c.scores.mean():{f}} ± {c.scores.std():{f}}", f"{c.iqm:{f}} [{c.ci_low:{f}}, {c.ci_high:{f}}]"] \
            if len(c.scores) else ["–", "–"]
        row = [c.task, c.arm, frames_label(c.frames), frames_label(c.agent_steps) if c.agent_steps else "mixed",
               str(len(c.scores)), str(c.short), *stats]
        if references:
            row.append(f"{c.reference.mean:g} ± {c.reference.std:g}" if c.reference else "")
        lines.append("| " + " | ".join(row) + " |")
    if notes:
        lines += ["", *(f"- {note}" for note in notes)]
    if references:
        lines += ["", f"Published ({source}), mean ± std:", "", "| task | arm | frames | mean ± std |",
                  "| --- | --- | --- | --- |"]
        lines += [f"| {r.task} | {r.label} | {frames_label(r.frames)} | {r.mean:g} ± {r.std:g} |" for r in references]
    return "\n".join(lines) + "\n"


def write_csv(cells: list[Cell], path: Path) -> Path:
    """One row per cell: task, arm, frames, agent_steps, runs, short, mean, std, iqm, iqm_ci_low, iqm_ci_high,
    reference_mean, reference_std (empty where there is none), normalize (the aggregates', ``task = all``)."""
    def num(x: float | None) -> str:
        return "" if x is None or not np.isfinite(x) else repr(float(x))

    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["task", "arm", "frames", "agent_steps", "runs", "short", "mean", "std", "iqm", "iqm_ci_low",
                      "iqm_ci_high", "reference_mean", "reference_std", "normalize"])
        for c in cells:
            n = len(c.scores)
            out.writerow([c.task, c.arm, c.frames, c.agent_steps or "", n, c.short,
                          num(c.scores.mean() if n else None), num(c.scores.std() if n else None), num(c.iqm),
                          num(c.ci_low), num(c.ci_high), num(c.reference.mean if c.reference else None),
                          num(c.reference.std if c.reference else None), c.normalize])
    return path


def plot_curves(runs: list[RunCurve], metric: str, path: Path, reps: int, seed: int,
                budgets: list[int] | None = None) -> Path:
    """One panel per task: per arm, the IQM over runs at each evaluation (the frames every run of the arm has) with
    its 95 % stratified-bootstrap band; frames on the x axis, agent steps on the top axis when the task's runs share
    one action repeat; budgets as dotted lines."""
    tasks = sorted({r.task for r in runs})
    cols = min(3, len(tasks))
    fig = Figure(figsize=(5.5 * cols, 4 * -(-len(tasks) // cols)))
    axes = fig.subplots(-(-len(tasks) // cols), cols, squeeze=False)
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    arms = sorted({r.arm for r in runs})
    for ax, task in zip(axes.flat, tasks):
        members = [r for r in runs if r.task == task]
        for arm in arms:
            group = [r for r in members if r.arm == arm and len(r.steps)]
            if not group:
                continue
            common = sorted(set.intersection(*(set(r.frames.tolist()) for r in group)))
            scores = np.asarray([[r.values[np.flatnonzero(r.frames == f)[-1]] for f in common] for r in group])
            iqm, low, high = iqm_band(scores, reps, seed)
            color = colors[arms.index(arm) % len(colors)]
            ax.plot(common, iqm, color=color, lw=1.5, marker="o" if len(common) <= 20 else None, ms=3,
                    label=f"{arm} ({len(group)} run{'s' if len(group) > 1 else ''})")
            ax.fill_between(common, low, high, color=color, alpha=0.2)
        for budget in budgets or []:
            ax.axvline(budget, color="grey", ls=":", lw=1)
        repeats = {r.action_repeat for r in members}
        if len(repeats) == 1:
            ar = repeats.pop()
            top = ax.secondary_xaxis("top", functions=(lambda f, ar=ar: f / ar, lambda s, ar=ar: s * ar))
            top.set_xlabel(f"agent steps (action repeat {ar})")
        ax.set_title(task)
        ax.set_xlabel("frames")
        ax.set_ylabel(f"{metric} (IQM, 95 % CI)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def report(paths: list[str | Path], budgets: str | None = None, metric: str = "eval/return_mean",
           reference: str | Path | None = None, out: str | Path | None = None, reps: int = 2000, seed: int = 0,
           normalize: str = "dmc") -> Path:
    """``plasticrl report``: reads the runs at or under ``paths``, writes ``report.md``, ``report.csv`` and
    ``curves.png`` into ``out`` (default ``<first path>/report``), prints the Markdown; returns ``out``. ``normalize``:
    how the aggregate over tasks normalises scores (``dmc``: return / 1000; ``none``)."""
    if reps < 1:
        raise ConfigError(f"--reps {reps}: give 1 or more bootstrap resamples (rliable's default is 50000)")
    if normalize not in NORMALIZE:
        raise ConfigError(f"--normalize {normalize!r}: give one of {', '.join(NORMALIZE)}")
    runs = [read_run(folder, metric) for folder in find_runs(paths)]
    if not any(len(r.steps) for r in runs):
        keys = sorted({k for r in runs for rec in read_jsonl(r.folder) for k in rec if k != STEP_KEY})
        close = difflib.get_close_matches(metric, keys, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else f" They log: {', '.join(k for k in keys if '/' in k)}"
        raise ConfigError(f"--metric {metric!r}: no run logged it.{hint}")
    frame_budgets = parse_budgets(budgets) if budgets else [min(r.last_step * r.action_repeat for r in runs)]
    source, references = read_reference(reference) if reference else (None, None)
    cells = build_cells(runs, frame_budgets, reps, seed, references)
    aggregates, notes = build_aggregates(runs, frame_budgets, reps, seed, normalize)
    cells += aggregates
    out = Path(out) if out else Path(paths[0]) / "report"
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(cells, metric, reps, seed, source, references, notes)
    (out / "report.md").write_text(text)
    write_csv(cells, out / "report.csv")
    plot_curves(runs, metric, out / "curves.png", reps, seed, frame_budgets)
    print(text)
    print(f"{len(runs)} runs; wrote {out / 'report.md'}, {out / 'report.csv'}, {out / 'curves.png'}")
    return out
