"""Tests for the Meta-World envs (Continual World conventions) and the eq_data patch."""

import mujoco
import numpy as np
import pytest

from plasticrl import envs
from plasticrl.envs import metaworld_env

SEED = 0


@pytest.mark.filterwarnings("ignore:Constant")  # metaworld policy chatter
@pytest.mark.parametrize("env_id", envs.sequence("cw10"))
def test_cw10_scripted_policy_succeeds(env_id):
    """Needs the eq_data patch: unpatched metaworld 3.0.0 fails at construction."""
    env = envs.make(env_id, seed=SEED)
    policy = metaworld_env.scripted_policy(env_id.split(":")[1])
    obs, _ = env.reset()
    for _ in range(200):
        obs, _, terminated, truncated, info = env.step(policy.get_action(obs))
        assert not terminated
        if info["success"] == 1.0:
            return
        assert not truncated
    pytest.fail(f"scripted policy did not solve {env_id} in 200 steps")


def test_weld_patch_writes_metaworld_values():
    model = envs.make("metaworld:push-v3").unwrapped._env.model
    welds = [i for i in range(model.neq) if model.eq_type[i] == mujoco.mjtEq.mjEQ_WELD]
    assert welds
    for i in welds:
        np.testing.assert_array_equal(model.eq_data[i, :11], metaworld_env._WELD_DATA)


def test_spaces_and_200_step_truncation():
    env = envs.make("metaworld:push-v3", seed=SEED)
    assert env.observation_space.shape == (39,) and env.observation_space.dtype == np.float32
    assert env.action_space.shape == (4,) and env.action_space.dtype == np.float32
    assert np.all(env.action_space.low == -1) and np.all(env.action_space.high == 1)
    for _ in range(2):  # two episodes: reset restarts the step count
        obs, _ = env.reset()
        assert obs.shape == (39,) and obs.dtype == np.float32
        env.action_space.seed(0)
        for t in range(1, 201):
            obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
            assert obs.dtype == np.float32 and isinstance(reward, float)
            assert info["success"] in (0.0, 1.0)
            assert not terminated
            assert truncated == (t == 200)


def test_goal_fixed_per_seed():
    first = envs.make("metaworld:push-v3", seed=1)
    obs_a, _ = first.reset()
    first.step(first.action_space.sample())
    np.testing.assert_array_equal(first.reset()[0], obs_a)  # every episode starts the same
    np.testing.assert_array_equal(envs.make("metaworld:push-v3", seed=1).reset()[0], obs_a)
    obs_b, _ = envs.make("metaworld:push-v3", seed=2).reset()
    assert not np.array_equal(obs_a[-3:], obs_b[-3:])  # the goal (last 3 dims) differs
