"""Shared fixtures: a tiny DrQ on a real dm_control pixel env, small enough for CPU tests.

The env is cartpole-swingup at 32x32 pixels, 2 stacked frames (observations uint8 (6, 32, 32)), action repeat 8:
an episode is 125 agent steps. The agent has an 8-dim trunk feature and 16 hidden units, batch 8, 40 warm-up steps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

TINY_PIXELS = {"size": 32, "frame_stack": 2, "action_repeat": 8}  # envs.make options of the tiny pixel env
TINY_DRQ = {"buffer_size": 500, "learning_starts": 40, "batch_size": 8, "seed": 0, "device": "cpu",
            "policy_kwargs": {"feature_dim": 8, "hidden_dim": 16}}  # DrQ arguments of the tiny agent


def make_tiny_pixel_env(n_envs: int = 1, seed: int = 0, wrap: Callable[[Any], Any] | None = None) -> Any:
    """A ``DummyVecEnv`` of ``n_envs`` tiny cartpole-swingup pixel envs; ``wrap`` (a gymnasium wrapper factory,
    e.g. ``lambda e: TimeLimit(e, 20)``) is applied to each env. The caller closes it."""
    from stable_baselines3.common.env_util import make_vec_env

    from plasticrl import envs

    def make() -> Any:
        env = envs.make("dmc:cartpole-swingup", **TINY_PIXELS)
        return wrap(env) if wrap is not None else env

    return make_vec_env(make, n_envs=n_envs, seed=seed)


def make_tiny_drq(env: Any, **overrides: Any) -> Any:
    """``DrQ("CnnPolicy", env, **TINY_DRQ)`` with ``overrides`` replacing (not merging into) its arguments."""
    from plasticrl.agents import DrQ

    return DrQ("CnnPolicy", env, **{**TINY_DRQ, **overrides})


@pytest.fixture(scope="session")
def tiny_pixel_env() -> Callable[..., Any]:
    """Factory ``tiny_pixel_env(n_envs=1, seed=0, wrap=None)``: see ``make_tiny_pixel_env``."""
    return make_tiny_pixel_env


@pytest.fixture(scope="session")
def tiny_drq() -> Callable[..., Any]:
    """Factory ``tiny_drq(env, **overrides)``: see ``make_tiny_drq``."""
    return make_tiny_drq
