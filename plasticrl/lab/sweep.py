"""``plasticrl sweep``: a sweep file (a base config, a grid of config keys, arms of overlays and overrides, seeds)
-> every run validated before any starts -> one ``python -m plasticrl train`` per run, as local subprocesses or as
Ray tasks -> a folder per run that a re-run finds again: finished runs are skipped, interrupted ones start anew.

Run ``<sweep>/<arm>/<task>/seed<k>`` (also its ``run.name``) lives in ``<out_dir>/<sweep>/<arm>/<task>/seed<k>/``, which
is its training's run folder itself (the sweep sets ``run.dir`` to it): ``config.yaml``, ``metrics.jsonl``,
``checkpoints/``, ``plots/``, ``wandb/``, and beside them ``train.log`` (the run's output) and, once training has
finished, ``done.json`` (the completion marker). W&B: group = the sweep name, name = ``<arm>/<task>/seed<k>``, job
type = the arm.
"""

from __future__ import annotations

import ctypes
import fnmatch
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, field_validator

from plasticrl.lab.config import train as train_config
from plasticrl.lab.config.base import ConfigError, Section, apply_override, check_problems, read_yaml, validate_model

MARKER = "done.json"  # in a run's folder: training finished (final checkpoint saved, every step logged)
LOG = "train.log"  # in a run's folder: stdout and stderr of its `plasticrl train`
LOCK = "sweep.lock"  # in <out_dir>/<sweep>/: the process running the sweep
GRACE_S = 60.0  # on Ctrl-C/SIGTERM: seconds a run gets to stop (save checkpoints/interrupted.zip) before it is killed
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")  # sweep and arm names: one path segment
KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")  # a dotted config key, e.g. replay_ratio.kind
OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*=")  # an arm entry `key=value` (anything else is an overlay path)
SET_BY_SWEEP = ("run.name", "run.out_dir", "run.dir", "logging.wandb.group", "logging.wandb.name",
                "logging.wandb.job_type")


class ResourcesConfig(Section):
    cpus_per_run: float | None = Field(None, gt=0, description="Ray: CPUs a run declares (default: env.n_envs; "
                                                                "1 for n_envs auto)")
    gpus_per_run: float | None = Field(None, ge=0, description="GPUs a run declares (default: 1 with run.device "
                                                                "cuda, or auto where GPUs exist; else 0); 0.5 puts "
                                                                "two runs on a GPU")


class SweepConfig(Section):
    name: str = Field(description="sweep name: the first part of every run name, and the W&B group")
    base: list[str] = Field(default_factory=list, description="a train config, then overlays merged over it in "
                                                             "order (or give tasks)")
    tasks: dict[str, list[str]] = Field(default_factory=dict, description="{task: [train config, overlays...]}: one "
                                                                          "base per task, for tasks whose configs "
                                                                          "differ in more than env.id; crossed with "
                                                                          "arms, grid and seeds")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="{dotted train config key: [values]}; "
                                                                         "every combination is a run")
    arms: dict[str, list[str]] = Field(default_factory=dict, description="{arm name: [overlay path or key=value]}, "
                                                                         "crossed with the grid (none: one arm, base)")
    seeds: int | list[int] | None = Field(None, description="N (seeds 0..N-1) or a list: shorthand for a grid of "
                                                            "run.seed")
    overrides: list[str] = Field(default_factory=list, description="key=value applied to every run")
    out_dir: str = Field("runs", description="root folder; runs go to <out_dir>/<name>/<arm>/<task>/seed<k>/")
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)

    @field_validator("base", mode="before")
    @classmethod
    def _one_path(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    def bases(self) -> list[list[str]]:
        """The base (config + overlays) of every task: ``tasks``' values, or ``[base]``."""
        return [list(b) for b in self.tasks.values()] or [self.base]


def sweep_problems(s: SweepConfig) -> list[str]:
    """What the schema can't say: names that are not one path segment, keys the sweep sets itself, seeds twice."""
    problems = []
    if bool(s.base) == bool(s.tasks):
        problems.append("base, tasks: give exactly one: base (one train config and overlays, tasks by a grid of "
                        "env.id) or tasks ({task: [train config, overlays...]})")
    problems += [f"tasks.{task}: give a train config, then overlays" for task, b in s.tasks.items() if not b]
    if not NAME.match(s.name):
        problems.append(f"name: {s.name!r} is not allowed: use letters, digits and _ . + - (it is a folder name)")
    problems += [f"arms.{arm}: {arm!r} is not an allowed arm name: use letters, digits and _ . + - (it is a folder "
                 "name)" for arm in s.arms if not NAME.match(arm)]
    for key, values in s.grid.items():
        if not KEY.match(key):
            problems.append(f"grid.{key}: not a dotted config key like env.id or replay_ratio.kind")
        elif key in SET_BY_SWEEP:
            problems.append(f"grid.{key}: set by the sweep itself (runs are named <sweep>/<arm>/<task>/seed<k>); "
                            "remove it")
        elif not values:
            problems.append(f"grid.{key}: an empty list makes no runs; give at least one value")
    if s.seeds is not None and "run.seed" in s.grid:
        problems.append("seeds: given twice (seeds and grid.run.seed); keep one")
    if isinstance(s.seeds, int) and s.seeds < 1:
        problems.append(f"seeds: {s.seeds} is not allowed: give N >= 1 (seeds 0..N-1) or a list of seeds")
    if isinstance(s.seeds, list) and (not s.seeds or min(s.seeds) < 0 or len(set(s.seeds)) < len(s.seeds)):
        problems.append(f"seeds: {s.seeds} is not allowed: give distinct seeds >= 0")
    for i, entry in enumerate(s.overrides):
        if not OVERRIDE.match(entry):
            problems.append(f"overrides.{i}: {entry!r} is not key=value, e.g. eval.every=5000")
    for key in SET_BY_SWEEP:
        if any(e.startswith(f"{key}=") for e in s.overrides + [e for es in s.arms.values() for e in es]):
            problems.append(f"{key}: set by the sweep itself; remove it from overrides and arms")
    return problems


def load(path: str | Path) -> SweepConfig:
    """Reads and validates a sweep file; ConfigError naming each bad key."""
    data = read_yaml(path, sections="name, base, tasks, grid, arms, seeds, overrides, out_dir, resources",
                     examples=" (configs/sweeps/*.yaml)")
    sweep = validate_model(SweepConfig, data, source=str(path))
    check_problems(sweep_problems(sweep), source=str(path))
    return sweep


@dataclass(eq=False)
class Run:
    """One expanded run: its name, folder, the ``plasticrl train`` arguments and the validated config they give."""

    name: str  # <sweep>/<arm>/<task>/seed<k>
    arm: str
    task: str
    seed: int
    folder: Path  # <out_dir>/<name>: the same on every re-run
    config: str
    overlays: list[str]
    overrides: list[str]
    cfg: train_config.Config

    def command(self, python: str = sys.executable) -> list[str]:
        """``python -m plasticrl train CONFIG OVERLAYS... --set KEY=VALUE ...`` of this run."""
        sets = [a for o in self.overrides for a in ("--set", o)]
        return [python, "-m", "plasticrl", "train", self.config, *self.overlays, *sets]


def yaml_value(value: Any) -> str:
    """``value`` as ``--set`` reads it back (YAML flow style: ``0.5``, ``dmc:walker-run``, ``'true'``, ``[a, b]``)."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**9).strip().removesuffix("...").strip()


def _existing(path: str, key: str) -> str:
    if not Path(path).is_file():
        raise ConfigError(f"{key}: {path!r} not found (paths are relative to the current folder, {Path.cwd()})")
    return str(Path(path).resolve())


def _get(data: dict[str, Any], key: str, default: Any) -> Any:
    for part in key.split("."):
        if not isinstance(data, dict) or part not in data:
            return default
        data = data[part]
    return data


def task_name(env_id: str, point: dict[str, Any]) -> str:
    """The task part of a run name: the env id without its suite (``dmc:walker-run`` -> ``walker-run``), then
    ``,key=value`` for each other grid key of the run (not ``run.seed``)."""
    extras = [f"{k}={yaml_value(v)}" for k, v in point.items() if k not in ("env.id", "run.seed")]
    return re.sub(r"[/\s]", "_", ",".join([env_id.partition(":")[2] or env_id, *extras]))


def _compose(sweep: SweepConfig, base: list[str], arm: str, entries: list[str], point: dict[str, Any],
             cli: list[str], out_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A run's ``Run`` fields (all but ``cfg``) and its config data, not yet validated."""
    config, *base_overlays = [_existing(p, f"base.{i}") for i, p in enumerate(base)]
    overlays = base_overlays + [_existing(e, f"arms.{arm}.{i}") for i, e in enumerate(entries)
                                if not OVERRIDE.match(e)]
    overrides = sweep.overrides + [e for e in entries if OVERRIDE.match(e)]
    overrides += [f"{k}={yaml_value(v)}" for k, v in point.items()] + list(cli)
    data = read_yaml(config, overrides, overlays=overlays)
    seed = _get(data, "run.seed", train_config.RunConfig.model_fields["seed"].default)
    task = task_name(str(_get(data, "env.id", train_config.EnvConfig.model_fields["id"].default)), point)
    name = f"{sweep.name}/{arm}/{task}/seed{seed}"
    own = [f"{k}={yaml_value(v)}" for k, v in {"run.name": name, "run.out_dir": str(out_dir),
                                               "run.dir": str(out_dir / name),
                                               "logging.wandb.group": sweep.name,
                                               "logging.wandb.name": f"{arm}/{task}/seed{seed}",
                                               "logging.wandb.job_type": arm}.items()]
    for assignment in own:
        apply_override(data, assignment)
    fields = {"name": name, "arm": arm, "task": task, "seed": seed, "folder": out_dir / name, "config": config,
              "overlays": overlays, "overrides": overrides + own}
    return fields, data


def _problem_lines(exc: ConfigError) -> list[str]:
    lines = str(exc).splitlines()
    return [line.strip() for line in (lines[1:] if lines[0].endswith("is invalid:") else lines)]


def expand(sweep: SweepConfig, cli_overrides: list[str] | None = None, source: str = "sweep") -> list[Run]:
    """Every run of ``sweep``: arms x grid product x seeds, seed-major (seed 0 of every arm and task first). Each run's
    config is validated, env ids included; ConfigError naming the runs and keys otherwise, before anything runs.

    Each run's config is, in this order: the base config, the base overlays, the arm's overlay files; then as
    ``key=value``: ``overrides``, the arm's ``key=value`` entries, the grid values, ``cli_overrides``, and the keys the
    sweep sets itself (``run.name``, ``run.out_dir``, ``run.dir`` = the run's folder, ``logging.wandb.group``,
    ``.name`` and ``.job_type``)."""
    from plasticrl.lab.train import check_config  # the env registries: a misspelt env id fails here, not in a run

    check_problems([f"--set {o}: set by the sweep itself{' (use --out-dir)' if o.startswith('run.out_dir=') else ''}"
                    for o in cli_overrides or [] if o.split("=", 1)[0].strip() in SET_BY_SWEEP], source)
    grid = dict(sweep.grid)
    seeds = list(range(sweep.seeds)) if isinstance(sweep.seeds, int) else sweep.seeds
    seed_values = grid.pop("run.seed", None) or seeds or [None]
    points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    arms = sweep.arms or {"base": []}
    out_dir = Path(sweep.out_dir).resolve()
    runs: list[Run] = []
    failures: dict[str, list[str]] = {}  # problem line -> the runs that have it
    for seed, base, point, (arm, entries) in itertools.product(seed_values, sweep.bases(), points, arms.items()):
        full = point if seed is None else {**point, "run.seed": seed}
        label = f"{sweep.name}/{arm}"
        try:
            fields, data = _compose(sweep, base, arm, entries, full, list(cli_overrides or []), out_dir)
            label = fields["name"]
            cfg = train_config.validate(data, source=f"run {label}")
            check_config(cfg)
        except ConfigError as exc:
            for line in _problem_lines(exc):
                failures.setdefault(line, []).append(label)
            continue
        runs.append(Run(**fields, cfg=cfg))
    if failures:
        lines = [f"run {names[0]}{f' (and {len(names) - 1} more)' if len(names) > 1 else ''}: {line}"
                 for line, names in failures.items()]
        check_problems(lines, source)
    names = [r.name for r in runs]
    twice = sorted({n for n in names if names.count(n) > 1})
    check_problems([f"{n}: two runs get this name (the grid has the same env id and values twice?); make the grid "
                    "values distinct" for n in twice], source)
    return runs


def select(runs: list[Run], patterns: list[str]) -> list[Run]:
    """The runs whose name matches one of the glob ``patterns`` (all without patterns); ConfigError if none."""
    if not patterns:
        return runs
    chosen = [r for r in runs if any(fnmatch.fnmatchcase(r.name, p) or fnmatch.fnmatchcase(r.name, f"*/{p}")
                                     for p in patterns)]
    if not chosen:
        raise ConfigError(f"--only {' '.join(patterns)}: no run matches; runs are named like {runs[0].name}")
    return chosen


# --- run folders: completion, resume ---------------------------------------------------------------------------

def last_env_step(metrics: Path) -> int | None:
    """The ``env_step`` of the last complete record of a ``metrics.jsonl`` (read from its end), None if none."""
    try:
        with open(metrics, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 65536))
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            return int(json.loads(line)["env_step"])
        except (ValueError, KeyError, TypeError):
            continue
    return None


def current_step(folder: Path) -> int:
    """Agent steps a run has logged so far (0 before its first record)."""
    return last_env_step(folder / "metrics.jsonl") or 0


def completion(folder: Path, total_steps: int, returncode: int | None = None) -> dict[str, Any] | None:
    """The run's completion marker, or None if it has not finished. Without ``done.json``, a run folder with
    ``checkpoints/final.zip`` and records up to ``total_steps`` counts as finished, and the marker is written."""
    marker = folder / MARKER
    if marker.is_file():
        return json.loads(marker.read_text())
    step = last_env_step(folder / "metrics.jsonl")
    if not (folder / "checkpoints" / "final.zip").is_file() or step is None or step < total_steps:
        return None
    info = {"env_step": step, "total_steps": total_steps, "returncode": returncode,
            "finished": datetime.now().isoformat(timespec="seconds"), "host": socket.gethostname()}
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps(info, indent=1) + "\n")
    os.replace(tmp, marker)  # a signal never leaves half a marker
    return info


def set_aside(folder: Path) -> Path:
    """Renames an unfinished run's folder to ``<folder>.interrupted-<n>`` (the first free n); returns the new path."""
    n = 1
    while folder.with_name(f"{folder.name}.interrupted-{n}").exists():
        n += 1
    target = folder.with_name(f"{folder.name}.interrupted-{n}")
    folder.rename(target)
    return target


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix[:-1]: data}
    return {k: v for key, value in data.items() for k, v in _flat(value, f"{prefix}{key}.").items()}


def config_changes(run: Run) -> list[str]:
    """Keys whose value differs between a finished run's saved config and the sweep's config of it now (not those
    that are ``auto`` now: training saves what it resolved them to)."""
    saved = run.folder / "config.yaml"
    if not saved.is_file():
        return []
    was, now = _flat(yaml.safe_load(saved.read_text())), _flat(run.cfg.model_dump(mode="json"))
    return [f"{k}: {was.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(was) | set(now))
            if was.get(k) != now.get(k) and now.get(k) != "auto"]


def prepare(runs: list[Run], note: Any = print) -> list[Run]:
    """The runs to start: finished runs are skipped (noted, with any config key that changed since), unfinished
    folders are set aside to ``<folder>.interrupted-<n>`` so that their run starts from scratch."""
    todo = []
    for run in runs:
        marker = completion(run.folder, run.cfg.run.total_steps)
        if marker is not None:
            changed = config_changes(run)
            extra = f"; its config differs now ({', '.join(changed[:3])}): delete its folder to run it again" \
                if changed else ""
            note(f"skip     {run.name} (finished at step {marker.get('env_step')}{extra})")
            continue
        if run.folder.exists():
            note(f"restart  {run.name} (unfinished; old folder moved to {set_aside(run.folder).name})")
        todo.append(run)
    return todo


@contextmanager
def sweep_lock(folder: Path) -> Iterator[None]:
    """Holds ``<folder>/sweep.lock`` while the sweep runs: a second process on the same sweep stops with an error
    (it would move running runs' folders aside)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        holder = _lock_holder(path)
        if holder is not None:
            raise ConfigError(f"{path}: process {holder['pid']} on {holder['host']} is running this sweep; wait "
                              "for it or stop it (delete the file if that process is gone)") from None
        path.unlink(missing_ok=True)  # a stale lock: its process is gone
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    with os.fdopen(fd, "w") as f:
        json.dump(me, f)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def _lock_holder(path: Path) -> dict[str, Any] | None:
    """The lock's holder if it may still run (another host, or a live process here); None for a stale lock."""
    try:
        holder = json.loads(path.read_text())
        pid, host = int(holder["pid"]), str(holder["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if host != socket.gethostname():
        return holder
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return holder


# --- starting and stopping runs --------------------------------------------------------------------------------

def _die_with_parent() -> None:
    """In the child, before exec: its own process group (signals are the sweep's to send) and, on Linux, SIGTERM when
    the process that started it dies (a killed sweep leaves no training behind)."""
    os.setsid()
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def launch(run: Run, env: dict[str, str] | None = None, python: str = sys.executable) -> subprocess.Popen:
    """Starts the run's ``plasticrl train`` in its folder, output appended to its ``train.log``."""
    run.folder.mkdir(parents=True, exist_ok=True)
    with open(run.folder / LOG, "ab") as log:
        log.write(f"$ {' '.join(run.command(python))}\n".encode())
        log.flush()
        return subprocess.Popen(run.command(python), cwd=run.folder, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                preexec_fn=_die_with_parent)


def stop(procs: list[subprocess.Popen], grace: float = GRACE_S) -> None:
    """SIGINT to each running ``plasticrl train`` (it saves ``checkpoints/interrupted.zip`` and closes its logs), then
    SIGKILL to the process group of any still running after ``grace`` seconds."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    deadline = time.monotonic() + grace
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        time.sleep(0.2)
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def conclude(run: Run, returncode: int) -> str:
    """``done`` (the completion marker is written) or ``failed``."""
    return "done" if completion(run.folder, run.cfg.run.total_steps, returncode) is not None else "failed"


def run_blocking(run: Run, env: dict[str, str] | None = None) -> str:
    """Runs one run to its end (the body of a Ray task): ``done`` or ``failed``; a KeyboardInterrupt (Ray's cancel)
    stops the training first, then propagates."""
    proc = launch(run, env)
    try:
        return conclude(run, proc.wait())
    except KeyboardInterrupt:
        stop([proc])
        raise


class StopSignals:
    """Ctrl-C and SIGTERM while the sweep runs: the first asks for a clean stop (``signum``), a second for an
    immediate one (``force``); the previous handlers come back at exit."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.force = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum = signum
        else:
            self.force = True

    def __enter__(self) -> StopSignals:
        for s in (signal.SIGINT, signal.SIGTERM):
            self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


class Display:
    """The sweep's one progress display (rich): a bar of finished runs, a bar of agent steps per running run, and a
    line for each start, skip and end."""

    def __init__(self, title: str, total: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=Console(), refresh_per_second=2)
        self.overall = self.progress.add_task(f"{title}: runs finished", total=total)
        self.bars: dict[str, Any] = {}

    def __enter__(self) -> Display:
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def note(self, text: str) -> None:
        self.progress.console.print(text, highlight=False, markup=False)

    def started(self, run: Run, where: str = "") -> None:
        self.bars[run.name] = self.progress.add_task(run.name, total=run.cfg.run.total_steps)
        self.note(f"start    {run.name}{where}")

    def poll(self, runs: list[Run]) -> None:
        for run in runs:
            self.progress.update(self.bars[run.name], completed=current_step(run.folder))

    def finished(self, run: Run, status: str) -> None:
        self.progress.remove_task(self.bars.pop(run.name))
        if status == "done":
            self.progress.advance(self.overall)
        log = "" if status == "done" else f" (log: {run.folder / LOG})"
        self.note(f"{status:<8} {run.name}{log}")


# --- backends ----------------------------------------------------------------------------------------------------

def uses_gpu(cfg: train_config.Config, gpus: float) -> bool:
    """Whether a run trains on a GPU: ``run.device`` cuda, or auto where ``gpus`` > 0."""
    return cfg.run.device == "cuda" or (cfg.run.device == "auto" and gpus > 0)


def default_concurrency(runs: list[Run], cores: int, gpus: int, resources: ResourcesConfig) -> int:
    """The local backend's ``--max-concurrent`` default: with GPU runs, the GPUs over ``resources.gpus_per_run``
    (default 1: one run per GPU); else half the cores (a run steps its env and updates its networks: two cores)."""
    if gpus and any(uses_gpu(r.cfg, gpus) for r in runs):
        return max(1, int(gpus / (resources.gpus_per_run or 1)))
    return max(1, cores // 2)


def run_local(runs: list[Run], max_concurrent: int, gpus: int, display: Display, signals: StopSignals
              ) -> dict[str, str]:
    """Runs ``runs`` as subprocesses, ``max_concurrent`` at once; a GPU run gets ``CUDA_VISIBLE_DEVICES`` of the GPU
    with the fewest runs on it, every run ``OMP_NUM_THREADS`` = cores / ``max_concurrent`` (unless set). Returns
    each run's status: done, failed or interrupted."""
    threads = {} if "OMP_NUM_THREADS" in os.environ else \
        {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // max_concurrent))}
    pending, running, status = deque(runs), {}, {}
    on_gpu: dict[str, int] = {}
    while (pending or running) and signals.signum is None:
        while pending and len(running) < max_concurrent:
            run = pending.popleft()
            env = dict(threads)
            if uses_gpu(run.cfg, gpus):
                load = [list(on_gpu.values()).count(g) for g in range(gpus)]
                on_gpu[run.name] = load.index(min(load))
                env["CUDA_VISIBLE_DEVICES"] = str(on_gpu[run.name])
            running[run.name] = (run, launch(run, env))
            display.started(run, f" (GPU {on_gpu[run.name]})" if run.name in on_gpu else "")
        time.sleep(0.5)
        display.poll([r for r, _ in running.values()])
        for name, (run, proc) in list(running.items()):
            if proc.poll() is not None:
                del running[name]
                on_gpu.pop(name, None)
                status[name] = conclude(run, proc.returncode)
                display.finished(run, status[name])
    if running:
        display.note(f"stopping {len(running)} run(s): each saves checkpoints/interrupted.zip (Ctrl-C again: kill)")
        procs = [p for _, p in running.values()]
        stop(procs, grace=0 if signals.force else GRACE_S)
        for name, (run, proc) in running.items():
            status[name] = _after_stop(run, proc.returncode)
            display.finished(run, status[name])
    return status


def _after_stop(run: Run, returncode: int | None) -> str:
    """``done`` for a run that finished while the sweep stopped, else ``interrupted``."""
    return "done" if completion(run.folder, run.cfg.run.total_steps, returncode) is not None else "interrupted"


def ray_resources(cfg: train_config.Config, resources: ResourcesConfig, cluster_gpus: float) -> tuple[float, float]:
    """(num_cpus, num_gpus) a run's Ray task declares: ``resources`` if given; else CPUs = ``env.n_envs`` (1 for
    auto), GPUs = 1 if the run trains on a GPU (``run.device`` cuda, or auto on a cluster with GPUs), else 0."""
    n_envs = cfg.env.n_envs
    cpus = resources.cpus_per_run or (float(n_envs) if isinstance(n_envs, int) else 1.0)
    gpus = resources.gpus_per_run if resources.gpus_per_run is not None else \
        (1.0 if uses_gpu(cfg, cluster_gpus) else 0.0)
    return cpus, gpus


def run_ray(runs: list[Run], address: str | None, max_concurrent: int | None, resources: ResourcesConfig,
            display: Display, signals: StopSignals) -> dict[str, str]:
    """Runs each run as a Ray task (``num_cpus``/``num_gpus`` from ``ray_resources``) on the cluster at ``address``
    (default: a new local Ray instance); Ray's scheduler places them, at most ``max_concurrent`` at once if given.
    Each task runs ``plasticrl train`` as a subprocess on its node; folders must be on a file system all nodes share."""
    import ray

    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
    try:
        cluster = ray.cluster_resources()
        has_cpus, has_gpus = cluster.get("CPU", 0), cluster.get("GPU", 0)
        needs = {r.name: ray_resources(r.cfg, resources, has_gpus) for r in runs}
        check_problems([f"run {name}: declares {c:g} CPUs and {g:g} GPUs; the Ray cluster has {has_cpus:g} and "
                        f"{has_gpus:g} (set resources.cpus_per_run / gpus_per_run, or run.device)"
                        for name, (c, g) in needs.items() if c > has_cpus or g > has_gpus], "Ray resources")
        env = {k: os.environ[k] for k in ("MUJOCO_GL",) if k in os.environ}
        task = ray.remote(run_blocking)
        pending, refs, status = deque(runs), {}, {}
        while (pending or refs) and signals.signum is None:
            while pending and (max_concurrent is None or len(refs) < max_concurrent):
                run = pending.popleft()
                cpus, gpus = needs[run.name]
                refs[task.options(num_cpus=cpus, num_gpus=gpus, max_retries=0, name=run.name).remote(run, env)] = run
                display.started(run, f" (Ray task: {cpus:g} CPUs, {gpus:g} GPUs)")
            ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=1.0)
            display.poll(list(refs.values()))
            for ref in ready:
                run = refs.pop(ref)
                try:
                    status[run.name] = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    display.note(f"{run.name}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
                    status[run.name] = "failed"
                display.finished(run, status[run.name])
        if refs:
            display.note(f"stopping {len(refs)} run(s): each saves checkpoints/interrupted.zip")
            for ref in refs:
                ray.cancel(ref, force=signals.force)
            ray.wait(list(refs), num_returns=len(refs), timeout=GRACE_S + 10)
            for run in refs.values():
                status[run.name] = _after_stop(run, None)
                display.finished(run, status[run.name])
        return status
    finally:
        ray.shutdown()


# --- the command -------------------------------------------------------------------------------------------------

def plan(runs: list[Run]) -> str:
    """``--dry-run``: each run's state (finished, unfinished folder, new), its run folder and its command."""
    lines = []
    for run in runs:
        state = "finished" if completion(run.folder, run.cfg.run.total_steps) is not None else \
            "unfinished (restarts)" if run.folder.exists() else "new"
        lines += [f"{run.name}  [{state}]", f"  folder: {run.folder}", "  " + " ".join(run.command("python"))]
    return "\n".join(lines)


def run_sweep(path: str | Path, overrides: list[str] | None = None, backend: str = "local",
              address: str | None = None, max_concurrent: int | None = None, only: list[str] | None = None,
              dry_run: bool = False, out_dir: str | None = None) -> int:
    """``plasticrl sweep``: loads, expands and validates every run, skips finished ones, runs the rest (``out_dir``
    replaces the sweep file's); returns the exit status: 0 all finished, 1 some failed, 128 + signal number when
    stopped by Ctrl-C or SIGTERM."""
    if max_concurrent is not None and max_concurrent < 1:
        raise ConfigError(f"--max-concurrent {max_concurrent}: give 1 or more")
    if address and backend != "ray":
        raise ConfigError("--address is the Ray cluster's address: use it with --backend ray")
    if backend == "ray":
        import ray  # noqa: F401 - before anything is written: a missing ray is one line (the CLI names the extra)
    sweep = load(path)
    if out_dir:
        sweep = sweep.model_copy(update={"out_dir": out_dir})
    runs = select(expand(sweep, overrides, source=str(path)), list(only or []))
    if dry_run:
        print(plan(runs))
        return 0
    sweep_dir = Path(sweep.out_dir).resolve() / sweep.name
    with sweep_lock(sweep_dir), Display(sweep.name, len(runs)) as display, StopSignals() as signals:
        display.note(f"sweep {sweep.name}: {len(runs)} runs in {sweep_dir} ({backend} backend)")
        todo = prepare(runs, display.note)
        display.progress.advance(display.overall, len(runs) - len(todo))
        if backend == "ray":
            status = run_ray(todo, address, max_concurrent, sweep.resources, display, signals)
        else:
            import torch

            gpus = torch.cuda.device_count()
            if any(r.cfg.run.device == "cuda" for r in todo) and not gpus:
                raise ConfigError("run.device=cuda but torch sees no CUDA device here; use run.device=auto or cpu")
            limit = max_concurrent or default_concurrency(todo, os.cpu_count() or 1, gpus, sweep.resources)
            status = run_local(todo, limit, gpus, display, signals)
    counts = {s: list(status.values()).count(s) for s in ("done", "failed", "interrupted")}
    print(f"sweep {sweep.name}: {len(runs) - len(todo)} already finished, {counts['done']} done, "
          f"{counts['failed']} failed, {counts['interrupted']} interrupted; folders in {sweep_dir}", flush=True)
    if signals.signum is not None:
        return 128 + signals.signum
    return 1 if counts["failed"] else 0
