"""Evaluation of the continual runner: lockstep episodes of an ``L2MAgent`` on tasks of the sequence, and how
each task is scored (success rate, or for DMC tasks the data-normalised return)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from plasticrl import envs
from plasticrl.continual_metrics import data_normalized_score
from plasticrl.lab.config.continual import EVAL_SEED_BASE, EVAL_SEEDS_PER_RUN

MAX_EPISODE_STEPS = 10_000  # a hard cap on any episode the runner plays (an env without a time limit ends here)
# Returns-to-go are divided by these before the DT sees them: L2M's per-domain reward scales
# (ml-jku/L2M configs/env_params/multi_domain_ft.yaml, reward_scale: mt50 200, dmcontrol 100)
RETURN_SCALES = {"metaworld": 200.0, "dmc": 100.0}

Select = Callable[[Any, Any, np.ndarray], Any]  # (context states (n, T, state_dim), timesteps (n, T), task index
# per row) -> context manager


def return_scale(env_id: str) -> float:
    """The return-to-go scale of ``env_id``'s domain (``RETURN_SCALES``, by the id's prefix)."""
    return RETURN_SCALES[env_id.partition(":")[0]]


def eval_seeds(run_seed: int, episodes: int) -> list[int]:
    """Reset seeds of the ``episodes`` evaluation episodes of a run: ``EVAL_SEED_BASE + EVAL_SEEDS_PER_RUN *
    run_seed + e``. Data collection resets with seeds below ``EVAL_SEED_BASE`` (the config checks it), so every
    evaluation episode starts from a Meta-World state (object and goal positions) that no training episode had."""
    if episodes > EVAL_SEEDS_PER_RUN:
        raise ValueError(f"at most {EVAL_SEEDS_PER_RUN} evaluation episodes, got {episodes}")
    return [EVAL_SEED_BASE + EVAL_SEEDS_PER_RUN * run_seed + e for e in range(episodes)]


def env_options(env_id: str, seed: int, max_episode_steps: int) -> dict[str, Any]:
    """``plasticrl.envs.make`` options of an evaluation env: Meta-World truncated after ``max_episode_steps``; DMC from
    states, at the suite's episode length."""
    if env_id.startswith("metaworld:"):
        return {"seed": seed, "max_episode_steps": max_episode_steps}
    return {"pixels": False, "seed": seed}


def score_kinds(seq_tasks: list[str]) -> list[str]:
    """How each task is scored: "data-normalised return" for DMC tasks (no success signal), else "success rate"."""
    return ["data-normalised return" if t.startswith("dmc:") else "success rate" for t in seq_tasks]


def task_scores(tasks: list[int], successes: np.ndarray, returns: np.ndarray,
                dmc_refs: dict[int, dict[str, float]]) -> np.ndarray:
    """Scores (len(tasks),) of the task indices ``tasks``: the success rate, or for a task in ``dmc_refs`` its
    data-normalised mean return (``dmc_references``' "random" and "data" returns as 0 and 1)."""
    return np.array([float(data_normalized_score(ret, dmc_refs[j]["random"], dmc_refs[j]["data"]))
                     if j in dmc_refs else float(success) for j, success, ret in zip(tasks, successes, returns)])


class Evaluator:
    """Lockstep evaluation of an ``L2MAgent`` on tasks x episodes: one env per (task, episode e), built on first use
    and reset with ``seeds[e]`` at every evaluation (the same held-out starts each time; Meta-World draws its object
    and goal positions from the reset seed), kept for later evaluations; all running envs are stepped together,
    one batched ``predict_batch`` per env step, each until its episode ends (Meta-World: truncated after
    ``max_episode_steps``; DMC: the suite's 1,000 frames; at most ``MAX_EPISODE_STEPS``). Success:
    ``info["success"] >= 1`` at any step (dmc has none: 0).

    ``deterministic``: argmax decoding of the action bins; else sampled from their softmax with the evaluator's own
    generator (seeded with ``sample_seed`` at the first evaluation, then continued). Returns-to-go are scaled per
    domain (``return_scale``)."""

    def __init__(self, tasks: list[str], seeds: list[int], max_episode_steps: int, deterministic: bool = True,
                 sample_seed: int = 0) -> None:
        if not seeds:
            raise ValueError("need at least one evaluation episode (one reset seed)")
        self.tasks, self.seeds, self.max_episode_steps = tasks, list(seeds), max_episode_steps
        self.deterministic, self.sample_seed = deterministic, sample_seed
        self._envs: dict[int, list[Any]] = {}
        self._generator: torch.Generator | None = None

    @property
    def episodes(self) -> int:
        return len(self.seeds)

    def envs_of(self, task: int) -> list[Any]:
        """The ``episodes`` envs of task index ``task``."""
        if task not in self._envs:
            env_id = self.tasks[task]
            self._envs[task] = [envs.make(env_id, **env_options(env_id, seed, self.max_episode_steps))
                                for seed in self.seeds]
        return self._envs[task]

    def _sampler(self, device: torch.device) -> torch.Generator | None:
        if self.deterministic:
            return None
        if self._generator is None:
            self._generator = torch.Generator(device=device).manual_seed(self.sample_seed)
        return self._generator

    def run(self, agent: Any, tasks: list[int], targets: list[float],
            select: Select | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(success rate, mean return), each (len(tasks),), of ``agent`` on the task indices ``tasks``; ``targets``
        the target return per task (reward units). ``select(states, timesteps, task_indices)`` -> context manager
        (see ``L2MAgent.predict_batch``), called with the sequence index of each row's task."""
        rows = [(k, e, env) for k, j in enumerate(tasks) for e, env in enumerate(self.envs_of(j))]
        n, width = len(rows), agent.config.state_dim
        task_of_row = np.array([tasks[k] for k, _, _ in rows])
        dims = [int(np.prod(env.action_space.shape)) for _, _, env in rows]
        scales = [return_scale(self.tasks[tasks[k]]) for k, _, _ in rows]
        batch = agent.new_episodes([targets[k] for k, _, _ in rows], dims, scales)
        generator = self._sampler(agent.device)
        obs = np.zeros((n, width), np.float32)
        for r, (_, e, env) in enumerate(rows):
            o = np.asarray(env.reset(seed=self.seeds[e])[0], np.float32).reshape(-1)
            obs[r, : o.size] = o
        rewards, returns, success = np.zeros(n), np.zeros(n), np.zeros(n, bool)
        active = np.arange(n)
        wrapped = None if select is None else (lambda states, steps, r: select(states, steps, task_of_row[r]))
        for _ in range(MAX_EPISODE_STEPS):
            if active.size == 0:
                break
            actions = agent.predict_batch(batch, obs[active], rewards[active], rows=active, select=wrapped,
                                          deterministic=self.deterministic, generator=generator)
            still = []
            for a, r in zip(actions, active):
                o, reward, terminated, truncated, info = rows[r][2].step(a[: dims[r]])
                o = np.asarray(o, np.float32).reshape(-1)
                obs[r] = 0.0
                obs[r, : o.size] = o
                rewards[r] = reward
                returns[r] += float(reward)
                success[r] |= float(info.get("success", 0.0)) >= 1.0
                if not (terminated or truncated):
                    still.append(r)
            active = np.asarray(still, dtype=np.int64)
        per_task = np.array([k for k, _, _ in rows])
        return (np.array([success[per_task == k].mean() for k in range(len(tasks))]),
                np.array([returns[per_task == k].mean() for k in range(len(tasks))]))

    def close(self) -> None:
        """Closes every env built so far."""
        for task_envs in self._envs.values():
            for env in task_envs:
                env.close()
        self._envs = {}
