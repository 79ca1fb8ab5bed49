"""Meta-World (v3) tasks as gymnasium envs with Continual World's conventions.

Protocol (Continual World, awarelab/continual_world `continualworld/envs.py::get_single_env` and
`utils/wrappers.py::RandomizationWrapper`; L2M uses the same, `src/envs/cw_utils.py`): 200-step episodes and
`randomization="random_init_all"`, i.e. new object and goal positions at every reset, drawn uniformly from the task's
reset space. Here they are drawn from the reset seed: `reset(seed=s)` gives the same positions for the same `s`.

Importing this module patches metaworld 3.0.0 so it runs on MuJoCo >= 3.3.1
(see `_reset_mocap_welds` below).
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import metaworld
import mujoco
import numpy as np
from metaworld.env_dict import ALL_V3_ENVIRONMENTS
from metaworld.policies import ENV_POLICY_MAP
from metaworld.sawyer_xyz_env import SawyerMocapBase

OPTIONS = ("seed", "max_episode_steps", "randomization")
# Continual World's names: new object/goal positions at every reset, or one fixed state for all resets
RANDOMIZATIONS = ("random_init_all", "deterministic")

# --- Compatibility patch for metaworld 3.0.0 with MuJoCo >= 3.3.1 -------------
# metaworld's SawyerMocapBase.reset_mocap_welds (called from its __init__)
# assigns an 11-long array to each weld row of `model.eq_data`. MuJoCo 3.3.1
# widened eq_data to mjNEQDATA = 12 columns, so the assignment raises a numpy
# broadcast error and no task can even be constructed. The weld layout of the
# first 11 fields is unchanged (anchor[3], relpose pos[3] + quat[4],
# torquescale[1]); the 12th is new and only tells the compiler whether relpose
# was given, so we write metaworld's 11 values into the first 11 columns and
# leave the rest as compiled. Same values as metaworld otherwise.
_WELD_DATA = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 5.0])


def _reset_mocap_welds(self: SawyerMocapBase) -> None:
    """Reset the mocap welds used for actuation (width-agnostic metaworld copy)."""
    if self.model.nmocap > 0 and self.model.eq_data is not None:
        for i in range(self.model.eq_data.shape[0]):
            if self.model.eq_type[i] == mujoco.mjtEq.mjEQ_WELD:
                self.model.eq_data[i, : len(_WELD_DATA)] = _WELD_DATA


SawyerMocapBase.reset_mocap_welds = _reset_mocap_welds
# ------------------------------------------------------------------------------


def task_names() -> list[str]:
    """All Meta-World v3 task names, e.g. "push-v3"."""
    return list(ALL_V3_ENVIRONMENTS)


def scripted_policy(task: str) -> Any:
    """A new instance of Meta-World's scripted policy for `task` (e.g. "push-v3").

    `policy.get_action(obs)` maps a (39,) observation to a (4,) action; it is
    not clipped to [-1, 1] (the env clips). Raises ValueError for unknown tasks.
    """
    if task not in ENV_POLICY_MAP:
        raise ValueError(f"No Meta-World scripted policy for {task!r}; tasks: {', '.join(ENV_POLICY_MAP)}")
    return ENV_POLICY_MAP[task]()


class MetaWorldEnv(gym.Env):
    """One Meta-World task; object and goal positions per `randomization`.

    * ``"random_init_all"`` (default, Continual World's and L2M's): every reset draws new object and goal positions
      from metaworld's reset space with the env's generator; `reset(seed=s)` re-seeds it first, so the same `s`
      gives the same positions and different seeds (almost surely) different ones. `reset()` without a seed
      continues the stream that `seed` started.
    * ``"deterministic"``: every reset starts from one state, the first of the 50 that metaworld's MT1 benchmark
      samples with `seed`, whatever the reset seed (a task that never changes: an overfitting check, not the
      benchmark's protocol).

    Observations: float32 (39,) (goal included). Actions: float32 (4,) in [-1, 1]. Episodes truncate after
    `max_episode_steps` (Continual World: 200); terminated is always False. `info["success"]` is 0.0 or 1.0.
    """

    metadata: ClassVar[dict] = {"render_modes": []}

    def __init__(self, task: str, *, seed: int = 0, max_episode_steps: int = 200,
                 randomization: str = "random_init_all") -> None:
        if max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
        if randomization not in RANDOMIZATIONS:
            raise ValueError(f"randomization must be one of {RANDOMIZATIONS}, got {randomization!r}")
        benchmark = metaworld.MT1(task, seed=seed)
        self._env = benchmark.train_classes[task]()
        self._env.set_task(benchmark.train_tasks[0])  # task data (goal observable); freezes the positions
        self.randomization = randomization
        if randomization == "random_init_all":
            self._env._freeze_rand_vec = False  # as RandomizationWrapper does for random_init_all
            self._env.seeded_rand_vec = True  # draw from the env's own generator, not numpy's global one
            self._env.seed(seed)
        # metaworld raises if stepped past max_path_length; align it with ours.
        self._env.max_path_length = max_episode_steps
        self._max_episode_steps = max_episode_steps
        self._steps = 0
        space = self._env.sawyer_observation_space
        self.observation_space = gym.spaces.Box(
            space.low.astype(np.float32), space.high.astype(np.float32), dtype=np.float32
        )
        self.action_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode: new positions from `seed` (random_init_all), or the fixed state (deterministic)."""
        super().reset(seed=seed)
        if seed is not None and self.randomization == "random_init_all":
            self._env.seed(seed)  # metaworld's own reset ignores its seed argument
        obs, info = self._env.reset()
        self._steps = 0
        return obs.astype(np.float32), info

    def step(
        self, action: np.ndarray
    ) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Step with `action` of shape (4,) in [-1, 1]."""
        action = np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)
        obs, reward, _, _, info = self._env.step(action)
        self._steps += 1
        info["success"] = float(info["success"])
        truncated = self._steps >= self._max_episode_steps
        return obs.astype(np.float32), float(reward), False, truncated, info

    def close(self) -> None:
        self._env.close()
