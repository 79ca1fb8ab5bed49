"""plasticrl.lab.fast_path: what ``auto`` means on CUDA (the fast path) and on the CPU (the plain one)."""

import os

from plasticrl.lab.config.train import validate
from plasticrl.lab.fast_path import ENV_WORKERS_CEILING, resolve_auto


def test_auto_on_cuda_is_the_fast_path_and_on_the_cpu_the_plain_one():
    cfg = validate({})
    fast, line = resolve_auto(cfg, "cuda")
    assert fast.env.n_envs == min(ENV_WORKERS_CEILING, os.cpu_count()) and ENV_WORKERS_CEILING == 16
    a = fast.agent
    assert (a.precision, a.compile, a.fused_q_heads, a.async_env_step) == ("bf16", True, True, True)
    assert line.startswith("auto settings, fast path (CUDA): env.n_envs=") and "agent.precision=bf16" in line
    plain, line = resolve_auto(cfg, "cpu")
    p = plain.agent
    assert (plain.env.n_envs, p.precision, p.compile, p.fused_q_heads, p.async_env_step) == (1, "fp32", False, False,
                                                                                               False)
    assert "plain path" in line
    assert cfg.agent.precision == "auto"  # the given config is not changed


def test_values_set_in_the_config_are_kept_and_sac_takes_the_plain_path():
    cfg = validate({"env": {"n_envs": 4}, "agent": {"precision": "fp32", "compile": "max-autotune-no-cudagraphs"}})
    fast, line = resolve_auto(cfg, "cuda")
    assert (fast.env.n_envs, fast.agent.precision, fast.agent.compile) == (4, "fp32", "max-autotune-no-cudagraphs")
    assert fast.agent.fused_q_heads is True and "n_envs" not in line and "precision" not in line
    everything = validate({"env": {"n_envs": 2}, "agent": {"precision": "bf16", "compile": False,
                                                           "fused_q_heads": False, "async_env_step": False}})
    assert resolve_auto(everything, "cuda") == (everything, "")
    sac, line = resolve_auto(validate({"agent": {"kind": "sac"}}), "cuda")
    assert (sac.env.n_envs, sac.agent.precision, sac.agent.compile) == (1, "auto", "auto")  # DrQ keys: unused
    assert line == "auto settings, plain path: env.n_envs=1"
    validate(sac.model_dump(mode="json"))  # the resolved config (a run's config.yaml) validates again
