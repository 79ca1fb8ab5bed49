"""Stepping the environments while the GPU trains.

SB3's off-policy loop is sequential: step the envs, store the transition, run the updates, pick the next action.
``PrefetchVecEnv`` lets an agent pick the next action *before* it launches its (asynchronous) GPU updates and start
the env step right away (``prefetch``); SB3's next ``env.step(actions)`` then only waits for that step. Env
simulation and rendering run in the worker processes while the GPU updates: the actions come from the policy before
that round of updates (one round stale), as in asynchronous actor-learner setups.

A started step can be finished early and its results held for the next ``step_wait`` (``settle``): the envs are then
between steps, so their state can be read and saved; ``hold`` gives a wrapper built anew (a resumed run) such a step.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper


class PrefetchVecEnv(VecEnvWrapper):
    """A VecEnv whose next step can be started early with ``prefetch(actions)``."""

    def __init__(self, venv: VecEnv):
        super().__init__(venv)
        self._pending: np.ndarray | None = None
        self._held: tuple[Any, ...] | None = None  # the results of the pending step, when it already finished

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
        held, self._pending, self._held = self._held, None, None
        return held if held is not None else self.venv.step_wait()

    def settle(self) -> tuple[np.ndarray, tuple[Any, ...]] | None:
        """Waits for a started step and holds its results; returns (actions, (obs, rewards, dones, infos)) of the
        step started and not yet taken by ``step_wait``, or None when none is."""
        if self._pending is None:
            return None
        if self._held is None:
            self._held = self.venv.step_wait()
        return self._pending, self._held

    def hold(self, actions: np.ndarray, results: tuple[Any, ...]) -> None:
        """Takes a finished step as ``settle`` returned it: the next ``step_async(actions)`` gets ``results``."""
        self._pending, self._held = actions, results

    def reset(self):
        if self._pending is not None and self._held is None:  # finish the started step before resetting
            self.venv.step_wait()
        self._pending = self._held = None
        return self.venv.reset()
