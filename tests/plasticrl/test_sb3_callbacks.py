"""The SB3 adapter: PlasticityCallback intervals and keys, ReplayRatioCallback update counts."""

import math

import pytest
from stable_baselines3 import SAC
from stable_baselines3.common.env_util import make_vec_env

from plasticrl import envs
from plasticrl.replay_ratio import AdaptiveReplayRatio, StaticReplayRatio
from plasticrl.sb3 import PlasticityCallback, ReplayRatioCallback

EPISODE = 125  # cartpole: 1000 frames at action repeat 8


# the tiny DrQ (tests/conftest.py) trained by ReplayRatioCallback: train() after every transition, gradient_steps set
# by the callback
RR_DRQ = {"buffer_size": 1000, "train_freq": 1, "gradient_steps": 0}


def test_plasticity_callback_logs_every_n_steps_with_all_keys(tiny_pixel_env, tiny_drq):
    env = tiny_pixel_env()
    model = tiny_drq(env, **RR_DRQ)
    cb = PlasticityCallback(every=50, batch_size=16, groups=["encoder", "actor", "critic", "critic_target"])
    model.learn(200, callback=cb)
    assert [step for step, _ in cb.history] == [50, 100, 150, 200]
    metrics = cb.history[-1][1]
    for group in ("encoder", "actor", "critic", "critic_target"):
        for name in ("dormant_ratio", "fau", "srank", "effective_rank", "feature_norm", "weight_norm"):
            key = f"plasticity/{group}/{name}"
            assert key in metrics and math.isfinite(metrics[key]), key
    layer_keys = [k for k in metrics if k.startswith("plasticity/encoder/") and k.count("/") == 3]
    assert len([k for k in layer_keys if k.endswith("/dormant_ratio")]) == 4  # the 4 conv ReLUs
    assert all(0 <= metrics[k] <= 1 for k in metrics if k.endswith(("/dormant_ratio", "/fau")))
    env.close()


def expected_updates(total, learning_starts, switch=None, low=0.5, high=2.0):
    """Updates SB3 performs when train() runs after every transition t > learning_starts (SB3's warm-up trains
    nothing) with the ratio accumulated over those transitions, floored: ``low`` up to env step ``switch``, ``high``
    after it (hand-derived, independent of the controller)."""
    switch = total if switch is None else switch
    return math.floor(low * (switch - learning_starts) + high * (total - switch))


@pytest.mark.parametrize("n_envs", [1, 2])
def test_static_ratio_sets_gradient_steps_and_update_count(n_envs, tiny_pixel_env, tiny_drq):
    env = tiny_pixel_env(n_envs)
    model = tiny_drq(env, **RR_DRQ)
    controller = StaticReplayRatio(0.5)
    callback = ReplayRatioCallback(controller)
    model.learn(200, callback=callback)
    assert model.num_timesteps == 200
    assert model._n_updates == expected_updates(200, 40) == 80
    # the 40 warm-up transitions are counted but owe no updates: the controller counts the updates SB3 performed
    assert controller.updates == 80 and controller.env_step == 200
    env.close()


def test_adaptive_switch_raises_gradient_steps(tiny_pixel_env, tiny_drq):
    env = tiny_pixel_env()
    model = tiny_drq(env, **RR_DRQ)
    # check after every episode; tolerance 1 means the first check (end of episode 1) switches
    controller = AdaptiveReplayRatio(low=0.5, high=2.0, check_every=1, tolerance=1.0)
    callback = ReplayRatioCallback(controller)
    model.learn(2 * EPISODE + 10, callback=callback)
    assert controller.switched_at == EPISODE  # the controller's clock is SB3's num_timesteps
    assert controller.ratio == 2.0 and model.gradient_steps == 2
    assert model._n_updates == expected_updates(2 * EPISODE + 10, 40, switch=EPISODE) == controller.updates
    # the FAU averages came from DrQ's training batches: one history entry per check, values in (0, 1]
    assert len(controller.history) == 2 and all(0 < fau <= 1 for _, fau, _ in controller.history)
    env.close()


def test_adaptive_does_not_switch_while_fau_moves(tiny_pixel_env, tiny_drq):
    env = tiny_pixel_env()
    model = tiny_drq(env, **RR_DRQ)
    controller = AdaptiveReplayRatio(check_every=1, tolerance=0.0)
    model.learn(2 * EPISODE + 10, callback=ReplayRatioCallback(controller))
    assert controller.switched_at is None and model.gradient_steps in (0, 1)
    assert model._n_updates == expected_updates(2 * EPISODE + 10, 40)
    env.close()


def test_stock_sb3_agent_gets_critic_fau_from_probe():
    env = make_vec_env(lambda: envs.make("dmc:cartpole-swingup", pixels=False, action_repeat=8), n_envs=1, seed=0)
    model = SAC("MlpPolicy", env, learning_starts=20, batch_size=16, train_freq=1, gradient_steps=0, seed=0,
                policy_kwargs={"net_arch": [32, 32]}, device="cpu")
    controller = AdaptiveReplayRatio(check_every=1, tolerance=1.0)
    model.learn(EPISODE + 5, callback=ReplayRatioCallback(controller, probe_batch_size=16))
    assert controller.switched_at == EPISODE and len(controller.history) == 1
    assert 0 < controller.history[0][1] <= 1
    assert model._n_updates == expected_updates(EPISODE + 5, 20, switch=EPISODE)
    env.close()


def test_replay_ratio_callback_rejects_multi_step_train_freq(tiny_pixel_env, tiny_drq):
    env = tiny_pixel_env()
    model = tiny_drq(env, buffer_size=100, learning_starts=10, batch_size=4, train_freq=2, seed=None)
    with pytest.raises(ValueError, match="train_freq=1"):
        model.learn(5, callback=ReplayRatioCallback(StaticReplayRatio(1.0)))
    env.close()


def test_adaptive_with_parallel_envs_checks_when_episodes_end_together(tiny_pixel_env, tiny_drq):
    env = tiny_pixel_env(n_envs=2)  # both envs end their 125-step episodes in the same vector step
    model = tiny_drq(env, **RR_DRQ)
    controller = AdaptiveReplayRatio(check_every=2, tolerance=1.0)
    model.learn(2 * EPISODE + 20, callback=ReplayRatioCallback(controller))
    assert controller.episodes == 2 and len(controller.history) == 1
    assert controller.switched_at == 2 * EPISODE
    assert model.gradient_steps == 4  # RR 2 x 2 transitions per step
    env.close()
