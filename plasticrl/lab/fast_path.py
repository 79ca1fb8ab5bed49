"""What the config's ``auto`` settings mean on this machine: on CUDA the fast path, on the CPU the plain one.

On CUDA a DrQ or DrQV2 run gets bf16 autocast (``agent.precision``), a compiled update (``agent.compile``: about a
minute of compiling at the first update), fused Q heads, the env step overlapped with the updates
(``agent.async_env_step``) and ``env.n_envs = min(16, cores)`` env workers: 16 is where the env-throughput benchmark
stops paying (``benchmarks/env_throughput.py`` on the H100 machine: 759 / 1,014 / 1,096 agent steps/s with 8 / 16 /
32 ``SubprocVecEnv`` workers; see docs/performance.md). On the CPU every ``auto`` is the plain setting (fp32, eager,
two Q MLPs, synchronous, one env); with ``agent.kind: sac`` only ``env.n_envs`` is resolved (to 1). A value set in
the config is kept as it is.
"""

from __future__ import annotations

import os

from plasticrl.lab.config.train import Config

ENV_WORKERS_CEILING = 16


def resolve_auto(cfg: Config, device: str) -> tuple[Config, str]:
    """A copy of ``cfg`` with every ``auto`` replaced by its value for ``device`` (``cpu`` or ``cuda``), and one line
    saying what was chosen (empty when nothing was ``auto``)."""
    fast = device == "cuda" and cfg.agent.kind in ("drq", "drqv2")
    a = cfg.agent
    chosen = {
        "env.n_envs": min(ENV_WORKERS_CEILING, os.cpu_count() or 1) if fast else 1,
        "agent.precision": "bf16" if fast else "fp32",
        "agent.compile": bool(fast),
        "agent.fused_q_heads": bool(fast),
        "agent.async_env_step": bool(fast),
    }
    current = {"env.n_envs": cfg.env.n_envs, "agent.precision": a.precision, "agent.compile": a.compile,
               "agent.fused_q_heads": a.fused_q_heads, "agent.async_env_step": a.async_env_step}
    if cfg.agent.kind == "sac":  # the DrQ keys don't apply to SB3's SAC: they stay auto (and valid for it)
        current = {"env.n_envs": current["env.n_envs"]}
    picked = {key: chosen[key] for key, value in current.items() if value == "auto"}
    if not picked:
        return cfg, ""
    env = cfg.env.model_copy(update={"n_envs": picked.get("env.n_envs", cfg.env.n_envs)})
    agent = a.model_copy(update={k.split(".")[1]: v for k, v in picked.items() if k.startswith("agent.")})
    resolved = cfg.model_copy(update={"env": env, "agent": agent})
    path = "fast path (CUDA)" if fast else "plain path"
    line = f"auto settings, {path}: " + ", ".join(f"{k}={v}" for k, v in picked.items())
    return resolved, line
