"""Tests for the Meta-World envs (Continual World's conventions, random_init_all) and the eq_data patch."""

import mujoco
import numpy as np
import pytest

from plasticrl import envs
from plasticrl.envs import metaworld_env

SEED = 0


@pytest.mark.filterwarnings("ignore:Constant")  # metaworld policy chatter
@pytest.mark.parametrize("env_id", envs.sequence("cw10"))
def test_cw10_scripted_policy_succeeds(env_id):
    """Needs the eq_data patch: unpatched metaworld 3.0.0 fails at construction. Under random_init_all the scripted
    policies do not solve every start within 200 steps (push-back about 4 in 10, shelf-place 6 in 10, the others
    9 or 10 in 10), so each task gets up to 10 reset seeds and must succeed on one."""
    env = envs.make(env_id, seed=SEED)
    policy = metaworld_env.scripted_policy(env_id.split(":")[1])
    for reset_seed in range(10):
        obs, _ = env.reset(seed=reset_seed)
        for _ in range(200):
            obs, _, terminated, truncated, info = env.step(policy.get_action(obs))
            assert not terminated
            if info["success"] == 1.0:
                return
        assert truncated
    pytest.fail(f"scripted policy did not solve {env_id} from any of 10 starts in 200 steps")


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


def positions(obs):
    """The first object's position (obs[4:7]) and the goal (obs[36:39]) of a Meta-World observation."""
    return np.concatenate([obs[4:7], obs[36:39]])


def test_random_init_all_draws_positions_from_the_reset_seed():
    """Continual World's random_init_all: new object and goal positions at every reset, a function of the reset
    seed only (not of the env instance, its construction seed or what ran before)."""
    env = envs.make("metaworld:push-v3", seed=1)
    first = positions(env.reset(seed=10)[0])
    env.step(env.action_space.sample())
    assert np.array_equal(positions(env.reset(seed=10)[0]), first)  # same seed, same positions
    other = envs.make("metaworld:push-v3", seed=7)
    other.reset(seed=3)
    assert np.array_equal(positions(other.reset(seed=10)[0]), first)  # another env, seeded alike
    second = positions(env.reset(seed=11)[0])
    assert not np.array_equal(first[:3], second[:3]) and not np.array_equal(first[3:], second[3:])
    unseeded = [positions(env.reset()[0]) for _ in range(2)]  # the stream continues: a new state each time
    assert not np.array_equal(unseeded[0], unseeded[1])
    # the positions lie in the task's reset space (metaworld's _random_reset_space: object xyz, then goal xyz; the
    # object's height is where it settled, so only its x and y are compared)
    space = env.unwrapped._env._random_reset_space
    shown = [0, 1, 3, 4, 5]
    assert np.all(first[shown] >= space.low[shown] - 1e-6) and np.all(first[shown] <= space.high[shown] + 1e-6)


def test_deterministic_keeps_one_state_per_construction_seed():
    first = envs.make("metaworld:push-v3", seed=1, randomization="deterministic")
    obs_a, _ = first.reset(seed=5)
    first.step(first.action_space.sample())
    np.testing.assert_array_equal(first.reset(seed=6)[0], obs_a)  # every episode starts the same
    again = envs.make("metaworld:push-v3", seed=1, randomization="deterministic")
    np.testing.assert_array_equal(again.reset()[0], obs_a)
    obs_b, _ = envs.make("metaworld:push-v3", seed=2, randomization="deterministic").reset()
    assert not np.array_equal(obs_a[-3:], obs_b[-3:])  # the goal (last 3 dims) differs
    with pytest.raises(ValueError, match="randomization must be one of"):
        envs.make("metaworld:push-v3", randomization="random_init_fixed20")
