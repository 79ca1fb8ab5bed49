"""The continual runner's data: Minari datasets per task (scripted Meta-World data collected when missing, checked
against their recorded provenance when reused), their episodes, and the DMC references of the data-normalised score
(a random policy's return, the data's return)."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import minari
import numpy as np

from plasticrl import envs
from plasticrl.lab.collect import (
    collect_scripted,
    datasets_path,
    provenance_differences,
    read_provenance,
    scripted_dataset_id,
    scripted_provenance,
)
from plasticrl.lab.config.base import ConfigError
from plasticrl.lab.continual.evaluation import MAX_EPISODE_STEPS, env_options, score_kinds

Episode = dict[str, np.ndarray]  # observations (L or L + 1, S), actions (L, A), rewards (L,)


def data_seed(cfg: Any) -> int:
    """The seed of scripted collection: ``data.seed``, else ``run.seed``."""
    return cfg.run.seed if cfg.data.seed is None else cfg.data.seed


def ensure_datasets(cfg: Any, tasks: list[str]) -> dict[str, str]:
    """Dataset id per task: ``data.dataset_ids`` entries, else scripted Meta-World data, collected if missing (in
    parallel processes, ``min(missing, os.cpu_count())`` of them, when several are missing).

    A scripted dataset's id names everything that made it (task, noise, episodes, seed, randomization), so another
    setting collects another dataset; an existing one is used only if its recorded provenance matches, else
    ConfigError naming the differing fields (e.g. a dataset written by hand under that id). A ``data.dataset_ids``
    entry that records its provenance must have been collected on its task."""
    out, ids, missing = Path(cfg.data.out_dir), {}, []
    episodes, noise, seed = cfg.data.episodes_per_task, cfg.data.noise_std, data_seed(cfg)
    for env_id in dict.fromkeys(tasks):
        if env_id in cfg.data.dataset_ids:
            ids[env_id] = cfg.data.dataset_ids[env_id]
            if not (out / ids[env_id]).exists():
                raise ConfigError(f"data.dataset_ids: {ids[env_id]!r} ({env_id}) not found under {out}")
            recorded = read_provenance(out, ids[env_id])
            if recorded is not None and recorded.get("env_id") != env_id:
                raise ConfigError(f"data.dataset_ids: {ids[env_id]!r} was collected on {recorded.get('env_id')}, "
                                  f"not on {env_id}; give a dataset of {env_id}")
            continue
        ids[env_id] = scripted_dataset_id(env_id, noise, episodes, seed)
        if not (out / ids[env_id]).exists():
            missing.append(env_id)
            continue
        differ = provenance_differences(read_provenance(out, ids[env_id]),
                                        scripted_provenance(env_id, noise, episodes, seed))
        if differ:
            raise ConfigError(f"data: {ids[env_id]!r} under {out} does not hold what its id says ({'; '.join(differ)});"
                              f" remove {out / ids[env_id]} to collect it anew")
    args = [(env_id, episodes, noise, seed, out) for env_id in missing]
    workers = min(len(missing), os.cpu_count() or 1)
    if workers > 1:
        print(f"collecting {len(missing)} scripted datasets with {workers} processes into {out}", flush=True)
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for future in [pool.submit(collect_scripted, *a) for a in args]:
                future.result()  # re-raises a worker's error
    else:
        for a in args:
            collect_scripted(*a)
    return ids


def load_episodes(out_dir: str | Path, dataset_id: str) -> list[Episode]:
    """The episodes of a Minari dataset as dicts of observations, actions, rewards (numpy)."""
    with datasets_path(out_dir):
        dataset = minari.load_dataset(dataset_id)
        return [{"observations": np.asarray(ep.observations), "actions": np.asarray(ep.actions),
                 "rewards": np.asarray(ep.rewards)} for ep in dataset.iterate_episodes()]


def best_return(episodes: list[Episode]) -> float:
    """The highest episode return (reward units) of a task's data: the target return the DT acts for."""
    return max(float(np.sum(ep["rewards"])) for ep in episodes)


def _play_episode(env: Any, act: Callable[[], Any]) -> tuple[float, int]:
    """Steps ``env`` (already reset) with ``act()`` until its episode ends (or ``MAX_EPISODE_STEPS``): (return in
    reward units, steps)."""
    total, steps = 0.0, 0
    for steps in range(1, MAX_EPISODE_STEPS + 1):
        _, reward, terminated, truncated, _ = env.step(act())
        total += float(reward)
        if terminated or truncated:
            break
    return total, steps


def random_return(env: Any, episodes: int, seed: int) -> float:
    """Mean return (reward units) of uniform random actions on ``env`` over ``episodes`` episodes, episode ``e``
    reset with ``seed + e`` and its actions drawn from ``action_space`` seeded with ``seed + e``: the 0 of
    ``data_normalized_score``."""
    total = 0.0
    for e in range(episodes):
        env.reset(seed=seed + e)
        env.action_space.seed(seed + e)
        total += _play_episode(env, env.action_space.sample)[0]
    return total / episodes


def check_dmc_episodes(env_id: str, episodes: list[Episode], env: Any) -> None:
    """ConfigError unless the dataset's episodes of DMC task ``env_id`` are as long as an episode of ``env`` (the
    evaluation env, action repeat 2): data recorded at another action repeat would be scored against other
    dynamics."""
    env.reset(seed=0)
    _, steps = _play_episode(env, lambda: np.zeros(env.action_space.shape, np.float32))
    lengths = sorted({len(ep["actions"]) for ep in episodes})
    if lengths != [steps]:
        raise ConfigError(
            f"{env_id}: dataset episodes have {lengths} steps, but the continual runner evaluates DMC at action "
            f"repeat 2 ({steps} steps per episode); collect from agents trained with env.action_repeat=2 (as "
            "configs/train/sac_state.yaml does)")


def dmc_references(cfg: Any, seq_tasks: list[str], dataset_ids: dict[str, str]) -> dict[int, dict[str, float]]:
    """For every DMC task of the sequence (index j): {"random": mean return of seeded uniform random actions over
    ``eval_episodes`` episodes, "data": its dataset's mean episode return}, the references of
    ``data_normalized_score``. ConfigError if the data was recorded at another action repeat or does not beat the
    random policy. Run before anything is written."""
    refs = {}
    for j, (env_id, kind) in enumerate(zip(seq_tasks, score_kinds(seq_tasks))):
        if kind == "success rate":
            continue
        env = envs.make(env_id, **env_options(env_id, cfg.run.seed, cfg.sequence.max_episode_steps))
        try:
            episodes = load_episodes(cfg.data.out_dir, dataset_ids[env_id])
            check_dmc_episodes(env_id, episodes, env)
            refs[j] = {"random": random_return(env, cfg.sequence.eval_episodes, cfg.run.seed + 50_000),
                       "data": float(np.mean([np.sum(ep["rewards"]) for ep in episodes]))}
        finally:
            env.close()
        if not refs[j]["data"] > refs[j]["random"]:
            raise ConfigError(f"{env_id}: the dataset's mean return {refs[j]['data']:.1f} does not exceed a random "
                              f"policy's {refs[j]['random']:.1f}, so its data-normalised score is undefined: collect "
                              "from a trained agent")
    return refs
