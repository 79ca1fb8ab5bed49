"""examples/custom_loop.py runs and its controller and monitor do their jobs."""

import importlib.util
import json
import math
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "custom_loop.py"


def test_custom_loop_runs_a_few_hundred_steps():
    spec = importlib.util.spec_from_file_location("custom_loop", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.run(steps=1000, check_every=1, probe_every=500)
    c = out["controller"]
    # Pendulum episodes are 200 steps: 5 episode ends; updates start at step 500, so the episodes ending at
    # steps 600, 800 and 1000 have critic-FAU values and are checked, the first two have none and are skipped.
    assert c.episodes == 5 and [step for step, _, _ in c.history] == [600, 800, 1000]
    assert all(0 < fau <= 1 for _, fau, _ in c.history)
    assert c.env_step == 1000
    assert len(out["probes"]) == 2
    assert all(math.isfinite(v) for v in out["probes"][-1].values())
    assert "plasticity/critic/fau" in out["probes"][-1]


SINGLE_FILE_SAC = EXAMPLE.parent / "sac_single_file.py"


def test_single_file_sac_feeds_the_controller_and_the_run_log(tmp_path):
    """The CleanRL-style SAC: warm-up transitions owe no updates (600 trained steps at RR 0.5 = 300 updates), the
    controller checks at every Pendulum episode end after updates began (steps 600, 800, 1000) with the critic FAU
    that capture read from its functional ReLUs, and the run log holds the monitor's per-member critic keys."""
    spec = importlib.util.spec_from_file_location("sac_single_file", SINGLE_FILE_SAC)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    args = module.Args(steps=1000, learning_starts=400, check_every=1, probe_every=500, hidden=32, batch_size=32,
                       out=str(tmp_path / "run"))
    c = module.main(args)["controller"]
    assert (c.env_step, c.updates) == (1000, 300)
    assert [step for step, _, _ in c.history] == [600, 800, 1000]
    assert all(0 < value <= 1 for _, value, _ in c.history)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    probes = [r for r in records if "plasticity/critic/fau" in r]
    assert [r["env_step"] for r in probes] == [500, 1000]
    assert {"plasticity/critic/0/fau", "plasticity/critic/1/fau", "plasticity/actor/relu_1/dormant_ratio"} <= set(
        probes[-1])
    assert all(math.isfinite(v) for v in probes[-1].values() if isinstance(v, float))


def test_single_file_sac_recycles_dormant_units_with_redo(tmp_path):
    """``--redo-every 500``: ReDo on both Q networks (functional ReLUs, 2 x 2 hidden layers of 32 units) at steps 500
    and 1000, logged with its unit counts; from the second on, the share of the last dormant units still dormant."""
    spec = importlib.util.spec_from_file_location("sac_single_file_redo", SINGLE_FILE_SAC)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    args = module.Args(steps=1000, learning_starts=400, check_every=1, probe_every=0, hidden=32, batch_size=32,
                       redo_every=500, out=str(tmp_path / "run"))
    module.main(args)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    redo = [r for r in records if "intervention/redo/critic/units" in r]
    assert [r["env_step"] for r in redo] == [500, 1000]
    assert all(r["intervention/redo/critic/units"] == 128 for r in redo)
    assert 0 <= redo[0]["intervention/redo/critic/dormant_ratio_before"] <= 1
    assert "intervention/redo/critic/dead_intersected_percent" in redo[1]
