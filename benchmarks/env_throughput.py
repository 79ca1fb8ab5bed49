"""Agent steps/s of dm_control pixel envs alone (random actions, no learning) in SB3's SubprocVecEnv, for several
numbers of worker processes: the ceiling that rendering puts on end-to-end training throughput.

    python benchmarks/env_throughput.py --env dmc:walker-walk --n-envs 8 16 32 --seconds 15
"""

import argparse
import json
import time

import numpy as np


def throughput(env_id: str, n_envs: int, seconds: float) -> float:
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import SubprocVecEnv

    from plasticrl import envs

    venv = make_vec_env(lambda: envs.make(env_id), n_envs=n_envs, seed=0, vec_env_cls=SubprocVecEnv)
    rng = np.random.default_rng(0)
    low, high = venv.action_space.low, venv.action_space.high
    venv.reset()
    for _ in range(5):  # warm-up: contexts created, first frames rendered
        venv.step(rng.uniform(low, high, (n_envs, *low.shape)).astype(np.float32))
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        venv.step(rng.uniform(low, high, (n_envs, *low.shape)).astype(np.float32))
        steps += n_envs
    rate = steps / (time.perf_counter() - t0)
    venv.close()
    return rate


def gpu_load(seconds: float) -> None:
    """Replays graphed DrQ updates (bf16, batch 256) for ``seconds``: the GPU work of training, without envs."""
    import torch

    from plasticrl.agents import DrQ
    from plasticrl.lab.bench import _pixel_venv, synthetic_batch
    from plasticrl.lab.runtime import configure_torch

    configure_torch("cuda")  # cuDNN autotuning, TF32: as the CLI

    venv = _pixel_venv()
    model = DrQ("CnnPolicy", venv, buffer_size=1000, device="cuda", precision="bf16")
    batch = synthetic_batch(256, venv.observation_space.shape, venv.action_space.shape[0], torch.device("cuda"), 0)
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        model._update_fn(batch)
        n += 1
        if n % 50 == 0:
            torch.cuda.synchronize()
    torch.cuda.synchronize()
    print(f"gpu load: {n / (time.perf_counter() - t0):.0f} updates/s", flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--env", default="dmc:walker-walk")
    p.add_argument("--n-envs", type=int, nargs="+", default=[8, 16, 32])
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--gpu-load", action="store_true", help="replay DrQ updates in another process meanwhile")
    p.add_argument("--json")
    args = p.parse_args()
    results = {}
    load = None
    if args.gpu_load:
        import multiprocessing as mp

        load = mp.get_context("spawn").Process(target=gpu_load, args=(len(args.n_envs) * (args.seconds + 15),))
        load.start()
        time.sleep(20)  # the load is running (graph captured) before the envs start
    for n in args.n_envs:
        results[n] = throughput(args.env, n, args.seconds)
        print(f"{args.env} n_envs={n}: {results[n]:.0f} agent steps/s ({2 * results[n]:.0f} frames/s at action "
              "repeat 2)", flush=True)
    if load is not None:
        load.join()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
