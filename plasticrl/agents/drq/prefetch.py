"""Stepping the environments while the GPU trains.

SB3's off-policy loop is sequential: step the envs, store the transition, run the updates, pick the next action.
``PrefetchVecEnv`` lets an agent pick the next action *before* it launches its (asynchronous) GPU updates and start
the env step right away (``prefetch``); SB3's next ``env.step(actions)`` then only waits for that step. Env
simulation and rendering run in the worker processes while the GPU updates: the actions come from the policy before
that round of updates (one round stale), as in asynchronous actor-learner setups.
"""

from __future__ import annotations

import numpy as np
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper


class PrefetchVecEnv(VecEnvWrapper):
    """A VecEnv whose next step can be started early with ``prefetch(actions)``."""

    def __init__(self, venv: VecEnv):
        super().__init__(venv)
        self._pending: np.ndarray | None = None

    def prefetch(self, actions: np.ndarray) -> None:
        """Starts the step with ``actions`` now; the next ``step_async`` must pass the same actions."""
        self.venv.step_async(actions)
        self._pending = actions

    def step_async(self, actions: np.ndarray) -> None:
        if self._pending is None:
            self.venv.step_async(actions)
            return
        if not np.array_equal(actions, self._pending):
            raise RuntimeError("PrefetchVecEnv: the step was started with other actions than the ones passed now")

    def step_wait(self):
        self._pending = None
        return self.venv.step_wait()

    def reset(self):
        if self._pending is not None:  # finish the started step before resetting
            self.venv.step_wait()
            self._pending = None
        return self.venv.reset()
