"""``plasticrl bench``: ms per gradient update of our DrQ vs stock SB3 ``SAC("CnnPolicy")`` on the same synthetic
9x84x84 uint8 batches in one process, and end-to-end frames/s of a short real DrQ training run on walker-walk.

Timings use ``torch.cuda.synchronize`` around a loop of updates (after warm-up), so they are wall-clock per update
including every kernel, not launch time.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3 import SAC
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import SubprocVecEnv

from plasticrl import envs
from plasticrl.agents import DrQ
from plasticrl.agents.drq.replay import PixelBatch
from plasticrl.envs import dmc
from plasticrl.lab.errors import ConfigError
from plasticrl.lab.runtime import configure_torch, resolve_device
from plasticrl.replay_ratio import StaticReplayRatio
from plasticrl.sb3 import ReplayRatioCallback


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _pixel_venv(size: int = 84, frame_stack: int = 3, n_envs: int = 1, seed: int = 0) -> Any:


    return make_vec_env(lambda: envs.make("dmc:walker-walk", size=size, frame_stack=frame_stack),
                        n_envs=n_envs, seed=seed)


def synthetic_batch(batch_size: int, obs_shape: tuple[int, ...], action_dim: int, device: torch.device,
                    seed: int) -> PixelBatch:
    """Random uint8 frames, actions in [-1, 1], rewards in [0, 1], discount 0.99**3."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randint(0, 256, (batch_size, *obs_shape), generator=g, dtype=torch.uint8)
    nxt = torch.randint(0, 256, (batch_size, *obs_shape), generator=g, dtype=torch.uint8)
    act = torch.rand(batch_size, action_dim, generator=g) * 2 - 1
    rew = torch.rand(batch_size, 1, generator=g)
    disc = torch.full((batch_size, 1), 0.99**3)
    return PixelBatch(*(t.to(device) for t in (obs, act, nxt, rew, disc)))


def _time(fn: Any, n: int, warmup: int, device: torch.device) -> float:
    for i in range(warmup):
        fn(i)
    _sync(device)
    t0 = time.perf_counter()
    for i in range(n):
        fn(i)
    _sync(device)
    return 1000.0 * (time.perf_counter() - t0) / n


def _quiet_logger(model: Any) -> None:

    model.set_logger(configure(None, []))  # train() outside learn() needs a logger


def _fill(buffer: Any, venv: Any, n: int, rng: np.random.Generator) -> None:
    """Adds n random vector steps of the venv's shapes to an SB3-style buffer."""
    shape = venv.observation_space.shape
    a_dim = venv.action_space.shape[0]
    ne = venv.num_envs
    obs = rng.integers(0, 256, (ne, *shape), dtype=np.uint8)
    for t in range(n):
        nxt = rng.integers(0, 256, (ne, *shape), dtype=np.uint8)
        done = np.full(ne, (t + 1) % 500 == 0)
        buffer.add(obs, nxt, rng.uniform(-1, 1, (ne, a_dim)).astype(np.float32),
                   rng.random(ne).astype(np.float32), done, [{"TimeLimit.truncated": bool(d)} for d in done])
        obs = nxt


def bench_drq(device: torch.device, batch_size: int, updates: int, hidden_dim: int = 1024,
              precision: str = "fp32", compile_update: bool | str = False, fused_q_heads: bool = False
              ) -> dict[str, float]:
    """ms per DrQ update: graphed (on CUDA) and eager on pre-made device batches; and sample + update from replay."""
    venv = _pixel_venv()
    out: dict[str, float] = {}
    for mode in ([True, False] if device.type == "cuda" else [False]):
        model = DrQ("CnnPolicy", venv, buffer_size=5000, batch_size=batch_size, device=device, cuda_graph=mode,
                    precision=precision, compile_update=compile_update and mode, fused_q_heads=fused_q_heads,
                    policy_kwargs={"hidden_dim": hidden_dim})
        shape, a_dim = venv.observation_space.shape, venv.action_space.shape[0]
        batches = [synthetic_batch(batch_size, shape, a_dim, device, s) for s in range(4)]
        name = "graph" if mode else "eager"
        out[f"drq_update_ms_{name}"] = _time(lambda i, m=model, b=batches: m._update_fn(b[i % 4]), updates, 5, device)
        _fill(model.replay_buffer, venv, 2000, np.random.default_rng(0))
        _quiet_logger(model)
        out[f"drq_sample_update_ms_{name}"] = _time(lambda i, m=model: m.train(1, batch_size), updates, 3, device)
    venv.close()
    return out


def bench_sb3_sac(device: torch.device, batch_size: int, updates: int) -> dict[str, float]:
    """ms per gradient step of stock SB3 SAC("CnnPolicy") (its own replay sampling and host-to-device copy)."""
    venv = _pixel_venv()
    model = SAC("CnnPolicy", venv, buffer_size=2000, batch_size=batch_size, device=device, seed=0)
    _fill(model.replay_buffer, venv, 2000, np.random.default_rng(0))
    _quiet_logger(model)
    ms = _time(lambda i: model.train(gradient_steps=1, batch_size=batch_size), updates, 3, device)
    venv.close()
    return {"sb3_sac_update_ms": ms}


def bench_training(device: torch.device, steps: int, n_envs: int, ratio: float = 0.5, batch_size: int = 256,
                   hidden_dim: int = 1024, precision: str = "fp32", async_env_step: bool = False,
                   compile_update: bool | str = False, fused_q_heads: bool = False) -> dict[str, float]:
    """Frames/s of real DrQ training on walker-walk pixels at replay ratio ``ratio`` once updates run."""


    class Clock(BaseCallback):
        def __init__(self, start: int):
            super().__init__()
            self.start, self.t0, self.s0 = start, None, 0

        def _on_step(self) -> bool:
            if self.t0 is None and self.num_timesteps >= self.start:
                _sync(device)
                self.t0, self.s0 = time.perf_counter(), self.num_timesteps
            return True



    venv = make_vec_env(lambda: envs.make("dmc:walker-walk"), n_envs=n_envs, seed=0,
                        vec_env_cls=SubprocVecEnv if n_envs > 1 else None)
    starts = min(2000, steps // 2)
    model = DrQ("CnnPolicy", venv, learning_starts=starts, buffer_size=max(steps, 10_000), batch_size=batch_size,
                train_freq=1, gradient_steps=0, device=device, precision=precision,
                async_env_step=async_env_step, compile_update=compile_update, fused_q_heads=fused_q_heads,
                policy_kwargs={"hidden_dim": hidden_dim})
    clock = Clock(starts + 100 * n_envs)
    t_all = time.perf_counter()
    model.learn(steps, callback=[ReplayRatioCallback(StaticReplayRatio(ratio)), clock])
    _sync(device)
    end = time.perf_counter()
    venv.close()
    measured = model.num_timesteps - clock.s0
    return {"train_frames_per_s": 2 * measured / (end - clock.t0), "train_steps": steps, "train_n_envs": n_envs,
            "train_updates": model._n_updates, "train_wall_s": end - t_all}


def check_args(args: Any) -> None:
    """ConfigError listing each argument of ``plasticrl bench`` that can't run here, before any benchmark: CUDA asked
    for (``--device cuda``, or ``--compile`` / ``--precision bf16``, which the CPU ignores) without it, sizes below 1,
    a ``--json`` folder that doesn't exist, no MuJoCo GL backend for walker-walk's pixels."""
    cuda = torch.cuda.is_available()
    problems = []
    if args.device == "cuda" and not cuda:
        build = "a CPU-only build" if torch.version.cuda is None else "no GPU visible"
        problems.append(f"--device cuda: torch {torch.__version__} sees no CUDA device ({build}); use --device cpu "
                        "(with --quick) or --device auto")
    on_cpu = args.device == "cpu" or not cuda
    for flag, value, set_ in (("--compile", args.compile, args.compile is not False),
                              ("--precision", args.precision, args.precision == "bf16")):
        if set_ and on_cpu:
            shown = flag if value is True else f"{flag} {value}"
            problems.append(f"{shown}: needs CUDA (the CPU runs the plain fp32 eager update); leave it out or "
                            "run on a GPU")
    for flag, value, least in (("--batch-size", args.batch_size, 1), ("--updates", args.updates, 1),
                               ("--n-envs", args.n_envs, 1), ("--train-steps", args.train_steps, 0)):
        if value < least:
            problems.append(f"{flag} {value}: must be >= {least}")
    if args.json and not Path(args.json).resolve().parent.is_dir():
        problems.append(f"--json {args.json}: the folder {Path(args.json).resolve().parent} does not exist")
    gl = dmc.gl_problem()
    if gl:
        problems.append(f"walker-walk pixels: {gl}")
    if len(problems) == 1:
        raise ConfigError(f"plasticrl bench: {problems[0]}")
    if problems:
        raise ConfigError("plasticrl bench can't run:\n  " + "\n  ".join(problems))


def main(args: Any) -> int:
    check_args(args)
    device = torch.device(resolve_device(args.device))
    configure_torch(device.type)
    batch, updates, steps = args.batch_size, args.updates, args.train_steps
    if args.quick:
        batch, updates, steps = min(batch, 32), min(updates, 5), min(steps, 300)
    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or 'x86'}, " \
        f"{torch.get_num_threads()} threads)"
    comp = args.compile if device.type == "cuda" else False
    drq = {"precision": args.precision, "compile_update": comp, "fused_q_heads": args.fused_q_heads}
    results: dict[str, Any] = {"device": hw, "torch": torch.__version__, "batch_size": batch, "updates": updates,
                               **drq}
    results.update(bench_drq(device, batch, updates, **drq))
    results.update(bench_sb3_sac(device, batch, updates))
    ours = results.get("drq_sample_update_ms_graph", results["drq_sample_update_ms_eager"])
    results["speedup_vs_sb3_sac"] = results["sb3_sac_update_ms"] / ours
    if steps:
        results.update(bench_training(device, steps, args.n_envs, batch_size=batch, **drq))
        if args.async_env_step:
            overlapped = bench_training(device, steps, args.n_envs, batch_size=batch, async_env_step=True, **drq)
            results["train_frames_per_s_async_env_step"] = overlapped["train_frames_per_s"]
    width = max(len(k) for k in results)
    for k, v in results.items():
        print(f"{k:<{width}}  {v:.2f}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0
