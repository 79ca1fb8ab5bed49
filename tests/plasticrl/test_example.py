"""examples/custom_loop.py runs and its controller and monitor do their jobs."""

import importlib.util
import math
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
