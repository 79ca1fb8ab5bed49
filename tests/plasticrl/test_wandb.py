"""W&B logging: an offline smoke run's ``.wandb`` file holds the same history and config as ``metrics.jsonl``;
W&B off writes nothing; a broken W&B never stops training.

wandb 0.31 ships no Python reader of its run files (``wandb.sdk.internal.datastore`` is gone; the Go core writes
them), so ``read_wandb_records`` below scans the format itself: a 7-byte file header (``:W&B``, magic 0xBEE1,
version 0), then LevelDB-log blocks of 32 KiB holding chunks with a 7-byte header (CRC-32 of type byte + data,
little-endian length, type FULL/FIRST/MIDDLE/LAST); each record is a ``wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import math
import struct
import warnings
import zlib
from pathlib import Path

import pytest

from plasticrl import runlog
from plasticrl.lab.config.train import load
from plasticrl.lab.train import train

ROOT = Path(__file__).resolve().parents[2]
SMOKE = str(ROOT / "configs" / "train" / "smoke.yaml")
# Shorter than the smoke config to save time: 150 agent steps (25 updates), plasticity probes at 50, 100 and 150,
# one episode (125 steps) and the final evaluation.
SMOKE_SET = ["run.total_steps=150", "monitor.every=50", "logging.plots=false", "monitor.histograms_every=2"]

BLOCK, HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_wandb_records(path: Path) -> list:
    """Every ``Record`` of a ``run-*.wandb`` file, in order; checks header and checksums."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:HEADER])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), "not a W&B run file of a known version"
    records, pending, pos = [], None, HEADER
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # a block's tail too short for a chunk header is padding
            pos += BLOCK - pos % BLOCK
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if kind == 0 and length == 0:  # zero fill of a preallocated or unfinished block
            break
        chunk = data[pos + HEADER:pos + HEADER + length]
        assert len(chunk) == length, f"truncated chunk at byte {pos}"
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) == crc, f"bad checksum at byte {pos}"
        pos += HEADER + length
        if kind == FULL:
            payload = chunk
        elif kind == FIRST:
            pending = chunk
            continue
        elif kind == MIDDLE:
            pending += chunk
            continue
        else:
            assert kind == LAST and pending is not None, f"chunk type {kind} out of order at byte {pos}"
            payload, pending = pending + chunk, None
        record = pb.Record()
        record.ParseFromString(payload)
        records.append(record)
    return records


def read_finished_run(path: Path, timeout_s: float = 60.0) -> list:
    """``read_wandb_records`` once the file ends with the run's ``exit`` record. ``run.finish()`` can return before
    W&B's core process has flushed the file: on a loaded 2-core machine a read right after it saw 2 of 7 history
    records (2026-11-25); the rest arrived later, in order, ending with ``exit``."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            records = read_wandb_records(path)
            if records and records[-1].WhichOneof("record_type") == "exit":
                return records
        except AssertionError:  # a chunk still being written
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} has no exit record {timeout_s:.0f} s after run.finish()")
        time.sleep(0.2)


def _key(item) -> str:
    return item.key or ".".join(item.nested_key)


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def series(rows: list[dict], key: str) -> list[tuple[int, float]]:
    """(env_step, value) of every row with a number under ``key``, in logging order."""
    return [(int(r["env_step"]), _number(r[key])) for r in rows if _number(r.get(key)) is not None]


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory):
    """The one training of this file: smoke config, W&B offline, W&B's env defaults as a user would have them."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.delenv("WANDB_DIR", raising=False)
        out = tmp_path_factory.mktemp("wandb_runs")
        run_dir = train(load(SMOKE, [f"run.out_dir={out}", "logging.wandb.mode=offline", *SMOKE_SET]))
    (wandb_file,) = sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    records = read_finished_run(wandb_file)
    history = [{_key(i): json.loads(i.value_json) for i in r.history.item} for r in records
               if r.WhichOneof("record_type") == "history"]
    config = {}
    for r in records:  # the run record carries wandb.init's config; later config records update it
        kind = r.WhichOneof("record_type")
        update = r.run.config.update if kind == "run" else r.config.update if kind == "config" else []
        config.update({_key(i): json.loads(i.value_json) for i in update})
    return {"run_dir": run_dir, "jsonl": runlog.read_jsonl(run_dir), "history": history, "config": config,
            "records": records}


def test_history_holds_plasticity_env_step_and_returns(offline_run):
    keys = {k for row in offline_run["history"] for k in row}
    for key in ("env_step", "train/episode_return", "eval/return_mean",
                "plasticity/critic/fau", "plasticity/critic/dormant_ratio", "plasticity/encoder/dormant_ratio",
                "plasticity/actor/srank"):
        assert key in keys, key
    assert all("env_step" in row for row in offline_run["history"])  # every row is plottable against env_step


def test_history_values_equal_metrics_jsonl(offline_run):
    jsonl = offline_run["jsonl"]
    history = [row for row in offline_run["history"] if not any(k.startswith("histograms/") for k in row)]
    assert len(history) == len(jsonl)  # one W&B history row per logged record, plus the histogram rows
    plasticity = sorted({k for r in jsonl for k in r if k.startswith("plasticity/")})
    assert "plasticity/critic/fau" in plasticity and "plasticity/encoder/dormant_ratio" in plasticity
    for key in [*plasticity, "train/episode_return", "train/critic_loss", "eval/return_mean"]:
        expected, got = series(jsonl, key), series(history, key)
        assert expected, key
        assert [s for s, _ in got] == [s for s, _ in expected], key
        assert [v for _, v in got] == pytest.approx([v for _, v in expected], rel=1e-9, abs=1e-12), key
    probes = [s for s, _ in series(jsonl, "plasticity/critic/fau")]
    assert probes == [50, 100, 150]


def test_per_unit_histograms_every_k_probes(offline_run):
    """monitor.histograms_every=2: of the probes at 50, 100, 150 only the second logs histograms, one per
    activation layer and kind (dormancy score, activation magnitude), as W&B histogram objects."""
    rows = [row for row in offline_run["history"] if any(k.startswith("histograms/") for k in row)]
    assert [row["env_step"] for row in rows] == [100]
    # W&B stores a histogram as nested keys <name>._type / .bins / .values
    keys = {k.rsplit(".", 1)[0] for k in rows[0] if k.startswith("histograms/") and k.endswith("._type")}
    assert "histograms/plasticity/critic/q1.1/dormant_score" in keys
    assert "histograms/plasticity/encoder/convnet.1/activation_magnitude" in keys
    assert len([k for k in keys if k.endswith("/dormant_score")]) == len([k for k in keys if k.endswith("_magnitude")])
    assert all(rows[0][f"{k}._type"] == "histogram" and len(rows[0][f"{k}.values"]) > 0 for k in keys)


def test_env_step_is_the_x_axis(offline_run):
    metrics = [r.metric for r in offline_run["records"] if r.WhichOneof("record_type") == "metric"]
    assert any(m.name == "env_step" for m in metrics)
    assert any(m.glob_name == "*" and m.step_metric == "env_step" for m in metrics)


def test_run_config_is_the_resolved_config(offline_run):
    config = offline_run["config"]
    assert config["run"]["name"] == "smoke" and config["env"]["id"] == "dmc:cartpole-swingup"
    assert config["logging"]["wandb"]["mode"] == "offline" and config["run"]["total_steps"] == 150
    resolved = load(offline_run["run_dir"] / "config.yaml").model_dump(mode="json")
    assert {k: v for k, v in config.items() if not k.startswith("_")} == resolved
    (run,) = [r.run for r in offline_run["records"] if r.WhichOneof("record_type") == "run"]
    assert run.display_name == "smoke-s0" and run.run_group == "smoke"
    assert "dmc:cartpole-swingup" in run.tags


def _log_three(logger: runlog.RunLogger) -> None:
    for step in (10, 20, 30):
        logger.log({"plasticity/critic/fau": step / 100, "train/episode_return": float(step)}, step)


def test_disabled_writes_no_wandb_files(tmp_path):
    logger = runlog.RunLogger(tmp_path, {"run": {"name": "x"}}, {"mode": "disabled"})
    assert logger.wandb is None
    _log_three(logger)
    logger.close()
    assert runlog.wandb_dir_files(tmp_path) == []
    assert not (tmp_path / "wandb").exists()
    assert [r["env_step"] for r in runlog.read_jsonl(tmp_path)] == [10, 20, 30]


def test_run_logger_creates_its_folder_with_parents(tmp_path):
    run_dir = tmp_path / "runs" / "my_loop" / "0"  # none of these exist yet
    logger = runlog.RunLogger(run_dir, wandb_settings={"mode": "disabled"})  # no config: a custom loop's log
    _log_three(logger)
    logger.close()
    assert [r["env_step"] for r in runlog.read_jsonl(run_dir)] == [10, 20, 30]


def test_failing_wandb_init_warns_and_jsonl_goes_on(tmp_path, monkeypatch):
    import wandb

    def broken_init(*args, **kwargs):
        raise RuntimeError("no network")

    monkeypatch.setattr(wandb, "init", broken_init)
    with pytest.warns(RuntimeWarning, match="W&B could not start.*no network"):
        logger = runlog.RunLogger(tmp_path, {}, {"mode": "offline"})
    assert logger.wandb is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no further warnings once W&B is off
        _log_three(logger)
        logger.log_histograms({"plasticity/critic/unit_scores": [0.1, 0.2]}, 30)
        logger.close()
    records = runlog.read_jsonl(tmp_path)
    assert [r["env_step"] for r in records] == [10, 20, 30]
    assert [r["plasticity/critic/fau"] for r in records] == [0.1, 0.2, 0.3]


class FlakySink:
    """Stands in for WandbSink: logs the first record, then fails."""

    def __init__(self, run_dir, config, **settings):
        self.written, self.closed = [], False

    def write(self, record):
        if self.written:
            raise ConnectionError("W&B went away")
        self.written.append(record)

    def histograms(self, values, step):
        raise AssertionError("W&B is off: nothing more may reach it")

    def close(self):
        self.closed = True


def test_wandb_failing_mid_run_is_switched_off_and_jsonl_stays_complete(tmp_path, monkeypatch):
    monkeypatch.setattr(runlog, "WandbSink", FlakySink)
    logger = runlog.RunLogger(tmp_path, {}, {"mode": "offline"})
    sink = logger.wandb
    assert isinstance(sink, FlakySink)
    with pytest.warns(RuntimeWarning, match="W&B failed to log.*W&B went away") as caught:
        _log_three(logger)
        logger.log_histograms({"plasticity/critic/unit_scores": [0.1]}, 30)
        logger.close()
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1
    assert logger.wandb is None and len(sink.written) == 1
    records = runlog.read_jsonl(tmp_path)
    assert [r["env_step"] for r in records] == [10, 20, 30]
    assert all(math.isfinite(r["time/wall_s"]) for r in records)


def test_training_survives_a_broken_wandb_init(tmp_path, monkeypatch):
    """End to end, cheaply: 20 agent steps (no updates, no probes) and the final evaluation."""
    import wandb

    def broken_init(*args, **kwargs):
        raise wandb.errors.CommError("wandb.init timed out")

    monkeypatch.setattr(wandb, "init", broken_init)
    with pytest.warns(RuntimeWarning, match="W&B could not start"):
        run_dir = train(load(SMOKE, [f"run.out_dir={tmp_path}", "logging.wandb.mode=offline", "run.total_steps=20",
                                     "logging.plots=false"]))
    assert (run_dir / "checkpoints" / "final.zip").is_file()
    assert runlog.wandb_dir_files(run_dir) == []
    records = runlog.read_jsonl(run_dir)
    assert records and records[-1]["env_step"] == 20 and "eval/return_mean" in records[-1]
