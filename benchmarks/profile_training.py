"""Where the wall time of end-to-end DrQ training goes (host side): ``cProfile`` of a short walker-walk run with
``plasticrl.agents.bench.bench_training``; prints frames/s and the functions with the most cumulative and own time. Time
spent waiting shows up in the call that waits: ``step_wait`` (the envs), a ``.cpu()``/``copy_`` (the GPU queue).

    python benchmarks/profile_training.py --n-envs 16 --steps 8000 --precision bf16 --async-env-step [--compile]
"""

import argparse
import cProfile
import pstats

import torch

from plasticrl.lab.bench import bench_training
from plasticrl.lab.runtime import configure_torch


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n-envs", type=int, default=16)
    p.add_argument("--steps", type=int, default=8000, help="agent steps (all envs together)")
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    p.add_argument("--async-env-step", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--top", type=int, default=25)
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    profiler = cProfile.Profile()
    profiler.enable()
    result = bench_training(device, args.steps, args.n_envs, precision=args.precision,
                            async_env_step=args.async_env_step, compile_update=args.compile)
    profiler.disable()
    print(result, flush=True)
    stats = pstats.Stats(profiler).strip_dirs()
    stats.sort_stats("cumulative").print_stats(args.top)
    stats.sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    configure_torch("cuda" if torch.cuda.is_available() else "cpu")  # cuDNN autotuning, TF32: as the CLI
    main()
