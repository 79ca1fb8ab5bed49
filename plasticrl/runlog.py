"""Metric sinks of a run: a JSONL file (always) and Weights & Biases (offline by default).

Every record is a flat dict of floats logged against ``env_step``. W&B never takes training down: if it fails to
start or to log, a warning says why, W&B is switched off for the rest of the run, and the JSONL log stays complete.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

STEP_KEY = "env_step"
os.environ.setdefault("WANDB_SILENT", "true")  # W&B's own banner would interleave with the progress bar


def make_run_dir(out_dir: str | Path, name: str, seed: int) -> Path:
    """``<out_dir>/<name>/<seed>-<YYYYmmdd-HHMMSS>/`` with ``checkpoints/`` and ``plots/``; never reuses a folder."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(out_dir) / name
    run_dir = base / f"{seed}-{stamp}"
    n = 1
    while run_dir.exists():
        n += 1
        run_dir = base / f"{seed}-{stamp}-{n}"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "plots").mkdir()
    return run_dir


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


class JsonlSink:
    """Appends one JSON object per record to ``path``, flushed at once (a crash loses no record)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        self._failed = False  # a write raised

    def write(self, record: dict[str, Any]) -> None:
        """OSError naming the file and the record's step when it can't be written (e.g. a full disk)."""
        try:
            self._file.write(json.dumps({k: _jsonable(v) for k, v in record.items()}) + "\n")
            self._file.flush()
        except OSError as exc:
            self._failed = True
            if exc.errno is None:
                raise
            raise OSError(exc.errno, f"{self.path}: the record of env step {record.get(STEP_KEY)} not written "
                          f"({exc.strerror})") from None

    def close(self) -> None:
        try:
            self._file.close()
        except OSError:
            if not self._failed:  # an error only the close reports (e.g. a network file system) is raised
                raise
            # else the write that failed already raised, naming the file; the records before it are on disk


class WandbSink:
    """A W&B run in ``<run_dir>/wandb``; every metric uses ``env_step`` as its x-axis."""

    def __init__(self, run_dir: Path, config: dict[str, Any] | None, mode: str = "offline", project: str = "plasticrl",
                 entity: str | None = None, group: str | None = None, tags: list[str] | None = None,
                 name: str | None = None, run_id: str | None = None, job_type: str | None = None):
        import wandb  # imported here: W&B is optional at run time (mode: disabled never imports it)

        self._wandb = wandb
        resume = {"id": run_id, "resume": "allow"} if run_id else {}  # a resumed run continues its W&B run
        self.run = wandb.init(dir=str(run_dir), mode=mode, project=project, entity=entity, group=group, tags=tags,
                              name=name, job_type=job_type, config=config, reinit="create_new", **resume,
                              settings=wandb.Settings(console="off", x_disable_stats=True, silent=True))
        self.run.define_metric(STEP_KEY)
        self.run.define_metric("*", step_metric=STEP_KEY)

    def write(self, record: dict[str, Any]) -> None:
        self.run.log(record)

    def histograms(self, values: dict[str, Any], step: int) -> None:
        self.run.log({STEP_KEY: step, **{k: self._wandb.Histogram(v) for k, v in values.items()}})

    def table(self, key: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        self.run.log({STEP_KEY: step, key: self._wandb.Table(columns=columns, data=rows)})

    def image(self, key: str, path: str, step: int) -> None:
        self.run.log({STEP_KEY: step, key: self._wandb.Image(path)})

    def close(self) -> None:
        self.run.finish()


class RunLogger:
    """The run log: fans records out to ``<run_dir>/metrics.jsonl`` and, when enabled, to W&B; prints nothing itself.

    The public logging helper for custom loops as for ``plasticrl train`` and the SB3 callbacks (``run_logger=``):
    ``log(metrics, step)`` per record, ``close()`` at the end. ``plasticrl plot <run_dir>`` draws its PNG dashboard
    from ``metrics.jsonl``.

    :param run_dir: the run folder, created with its parents if missing; ``metrics.jsonl`` (appended to) and
        ``wandb/`` go there.
    :param config: the run's config, as W&B's run config (``None``: none).
    :param wandb_settings: keyword arguments of ``WandbSink`` (default W&B ``mode`` ``offline``; ``disabled`` skips
        W&B entirely and never imports it; ``run_id``: continue that W&B run).
    :param resume_step: a resumed run: records of ``metrics.jsonl`` with ``env_step`` beyond it are dropped first
        (``dropped`` counts them) and wall time continues from the last record kept.
    """

    def __init__(self, run_dir: str | Path, config: dict[str, Any] | None = None,
                 wandb_settings: dict[str, Any] | None = None, resume_step: int | None = None):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.started = time.time()
        self.dropped = 0
        if resume_step is not None:
            wall_s, self.dropped = truncate_jsonl(self.run_dir / "metrics.jsonl", resume_step)
            self.started -= wall_s
        self.jsonl = JsonlSink(self.run_dir / "metrics.jsonl")
        self.wandb: WandbSink | None = None
        settings = dict(wandb_settings or {})
        if settings.get("mode", "offline") != "disabled":
            try:
                self.wandb = WandbSink(self.run_dir, config, **settings)
            except ModuleNotFoundError as exc:
                self._warn(f"W&B could not start: {exc.name or 'wandb'} is not installed; training goes on with "
                           "metrics.jsonl only. Install it (pip install wandb) or set logging.wandb.mode=disabled.")
            except Exception as exc:  # noqa: BLE001 - W&B must never take training down
                self._warn(f"W&B could not start ({type(exc).__name__}: {exc}); training goes on with "
                           "metrics.jsonl only. Set logging.wandb.mode=offline or disabled, or run `wandb login`.")

    @property
    def wandb_id(self) -> str | None:
        """The W&B run's id (None without W&B), for resuming the same W&B run."""
        return None if self.wandb is None else str(self.wandb.run.id)

    @staticmethod
    def _warn(message: str) -> None:
        warnings.warn(message, RuntimeWarning, stacklevel=3)

    def _wandb_call(self, method: str, *args: Any) -> None:
        if self.wandb is None:
            return
        try:
            getattr(self.wandb, method)(*args)
        except Exception as exc:  # noqa: BLE001
            self._warn(f"W&B failed to log ({type(exc).__name__}: {exc}); W&B is off for the rest of this run, "
                       "metrics.jsonl stays complete.")
            self.wandb = None

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Writes ``metrics`` at ``env_step = step`` (plus wall time in seconds since start)."""
        record = {STEP_KEY: int(step), "time/wall_s": round(time.time() - self.started, 3), **metrics}
        self.jsonl.write(record)
        self._wandb_call("write", record)

    def log_histograms(self, values: dict[str, Any], step: int) -> None:
        """Per-unit distributions (1-D arrays) to W&B only."""
        self._wandb_call("histograms", values, int(step))

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        """A table (one list per row, in ``columns`` order) to W&B only, as ``wandb.Table`` under ``key``."""
        self._wandb_call("table", key, columns, rows, int(step))

    def log_image(self, key: str, path: str | Path, step: int) -> None:
        """An image file (e.g. a PNG plot) to W&B only, as ``wandb.Image`` under ``key``."""
        self._wandb_call("image", key, str(path), int(step))

    def close(self) -> None:
        self.jsonl.close()
        if self.wandb is not None:
            try:
                self.wandb.close()
            except Exception as exc:  # noqa: BLE001
                self._warn(f"W&B failed to finish ({exc}); its offline files may be incomplete")
            self.wandb = None


class CorruptRecord(ValueError):
    """A line of a run's ``metrics.jsonl``, not its last, that is not a JSON record."""


def _parse_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSONL file; a truncated last line (a crash mid-write) is skipped with a warning naming the
    file and line; a bad line elsewhere raises ``CorruptRecord`` naming them."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if any(rest.strip() for rest in lines[number:]):
                raise CorruptRecord(f"{path}:{number}: not a JSON record ({exc}); repair or delete that line "
                                    "(the records before and after it are read)") from None
            warnings.warn(f"{path}:{number}: truncated last record skipped (the run stopped mid-write)",
                          RuntimeWarning, stacklevel=3)
    return records


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file (a run folder is accepted too); a truncated last line (a crash
    mid-write) is skipped with a warning naming the file and line."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    return _parse_jsonl(path)


def truncate_jsonl(path: str | Path, step: int) -> tuple[float, int]:
    """Drops the records of a ``metrics.jsonl`` with ``env_step`` beyond ``step`` (and a truncated last line),
    rewriting it atomically; returns the last kept record's ``time/wall_s`` (0 if none) and the number dropped."""
    path = Path(path)
    if not path.is_file():
        return 0.0, 0
    records = _parse_jsonl(path)
    kept = [r for r in records if int(r.get(STEP_KEY, 0)) <= step]
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    wall = next((float(r["time/wall_s"]) for r in reversed(kept) if r.get("time/wall_s") is not None), 0.0)
    return wall, len(records) - len(kept)


def wandb_dir_files(run_dir: str | Path) -> list[str]:
    """Paths of W&B's files under a run folder (empty when W&B was disabled)."""
    root = Path(run_dir) / "wandb"
    return [str(p) for p in root.rglob("*") if p.is_file()] if root.exists() else []


__all__ = ["STEP_KEY", "JsonlSink", "RunLogger", "WandbSink", "make_run_dir", "read_jsonl", "truncate_jsonl",
           "wandb_dir_files"]
