"""Tests for the env registry, the dm_control wrapper and the sequences (real envs, small images)."""

import os
import subprocess
import sys

import numpy as np
import pytest

from plasticrl import envs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_episode(env):
    """Step with random actions until the episode ends; return (agent steps, last info, flags)."""
    env.reset(seed=0)
    env.action_space.seed(0)
    steps, terminated_seen = 0, False
    while True:
        _, _, terminated, truncated, info = env.step(env.action_space.sample())
        steps += 1
        terminated_seen |= terminated
        if truncated or terminated or steps > 2000:
            return steps, info, terminated_seen, truncated


def test_pixel_obs_shape_dtype_channel_first():
    env = envs.make("dmc:walker-walk", size=32, frame_stack=3, seed=0)
    assert env.observation_space.shape == (9, 32, 32)
    assert env.observation_space.dtype == np.uint8
    obs, _ = env.reset()
    assert obs.shape == (9, 32, 32) and obs.dtype == np.uint8
    # At reset the first frame is repeated; it equals the channel-first render.
    frame = env.render()
    assert frame.shape == (32, 32, 3) and frame.dtype == np.uint8
    for k in range(3):
        np.testing.assert_array_equal(obs[3 * k : 3 * k + 3], frame.transpose(2, 0, 1))
    obs2, *_ = env.step(env.action_space.sample())
    assert env.observation_space.contains(obs2)
    np.testing.assert_array_equal(obs2[:6], obs[3:])  # stack shifts oldest -> newest
    np.testing.assert_array_equal(obs2[6:], env.render().transpose(2, 0, 1))


def test_render_once_per_agent_step(monkeypatch):
    env = envs.make("dmc:cheetah-run", size=32, action_repeat=4, seed=0)
    env.reset()
    calls = []
    original = env.render
    monkeypatch.setattr(env, "render", lambda: calls.append(1) or original())
    for _ in range(3):
        _, _, _, _, info = env.step(env.action_space.sample())
    assert len(calls) == 3
    assert info["frames"] == 12


def test_state_obs_flat_float32():
    env = envs.make("dmc:walker-walk", pixels=False, seed=0)
    dim = sum(int(np.prod(s.shape)) for s in env.unwrapped.dm_env.observation_spec().values())
    assert env.observation_space.shape == (dim,) == (24,)
    assert env.observation_space.dtype == np.float32
    obs, _ = env.reset()
    assert obs.shape == (24,) and obs.dtype == np.float32
    # Flattened in dm_control's dict order: orientations (14), height (1), velocity (9).
    physics = env.unwrapped.dm_env.physics
    np.testing.assert_allclose(obs[14], physics.torso_height(), rtol=1e-6)
    np.testing.assert_allclose(obs[15:], physics.velocity(), rtol=1e-6)


def test_action_space_and_rescaling():
    # quadruped has asymmetric actuator bounds, e.g. [-1, 1.1] and [-0.8, 0.8]
    env = envs.make("dmc:quadruped-run", pixels=False, seed=0)
    space = env.action_space
    assert space.dtype == np.float32
    assert np.all(space.low == -1.0) and np.all(space.high == 1.0)
    spec = env.unwrapped.dm_env.action_spec()
    assert not np.all(spec.maximum == 1.0)  # the rescaling below is not the identity
    env.reset()
    for unit, expected in [(-1.0, spec.minimum), (1.0, spec.maximum),
                           (0.0, (spec.minimum + spec.maximum) / 2)]:
        env.step(np.full(space.shape, unit, dtype=np.float32))
        ctrl = env.unwrapped.dm_env.physics.data.ctrl
        np.testing.assert_allclose(ctrl, expected, atol=1e-12)


@pytest.mark.parametrize("action_repeat, agent_steps", [(2, 500), (3, 334)])
def test_state_truncation_at_1000_frames(action_repeat, agent_steps):
    env = envs.make("dmc:walker-walk", pixels=False, action_repeat=action_repeat, seed=0)
    steps, info, terminated_seen, truncated = _run_episode(env)
    assert truncated and not terminated_seen
    assert steps == agent_steps
    assert info["frames"] == 1000
    # A second episode after reset has the same length.
    assert _run_episode(env)[0] == agent_steps


def test_pixel_truncation_at_1000_frames():
    env = envs.make("dmc:cartpole-swingup", size=32, action_repeat=10, seed=0)
    steps, info, terminated_seen, truncated = _run_episode(env)
    assert (steps, info["frames"], truncated, terminated_seen) == (100, 1000, True, False)


def test_seeding_same_and_different():
    def first_obs(seed, **kw):
        return envs.make("dmc:walker-walk", **kw).reset(seed=seed)[0]

    np.testing.assert_array_equal(first_obs(3, pixels=False), first_obs(3, pixels=False))
    assert not np.array_equal(first_obs(3, pixels=False), first_obs(4, pixels=False))
    np.testing.assert_array_equal(first_obs(3, size=32), first_obs(3, size=32))
    assert not np.array_equal(first_obs(3, size=32), first_obs(4, size=32))
    # Constructor seed is used when reset has no seed.
    from_ctor = envs.make("dmc:walker-walk", pixels=False, seed=3).reset()[0]
    np.testing.assert_array_equal(from_ctor, first_obs(3, pixels=False))
    # reset(seed=s) re-seeds an env that has already run.
    env = envs.make("dmc:walker-walk", pixels=False, seed=9)
    env.reset()
    env.step(env.action_space.sample())
    np.testing.assert_array_equal(env.reset(seed=3)[0], first_obs(3, pixels=False))


def test_camera_default_quadruped_is_2():
    assert envs.make("dmc:quadruped-run", pixels=False).unwrapped.camera == 2
    assert envs.make("dmc:walker-walk", pixels=False).unwrapped.camera == 0
    assert envs.make("dmc:quadruped-run", pixels=False, camera=0).unwrapped.camera == 0
    env = envs.make("dmc:quadruped-run", size=32, frame_stack=1, seed=0)
    obs, _ = env.reset()
    physics = env.unwrapped.dm_env.physics
    np.testing.assert_array_equal(obs, physics.render(32, 32, camera_id=2).transpose(2, 0, 1))
    assert not np.array_equal(obs, physics.render(32, 32, camera_id=0).transpose(2, 0, 1))


def test_unknown_id_lists_close_matches():
    with pytest.raises(ValueError) as err:
        envs.make("dmc:walker-wlak")
    msg = str(err.value)
    assert "dmc:walker-wlak" in msg and "dmc:walker-walk" in msg and "list_ids" in msg
    with pytest.raises(ValueError, match="metaworld:push-v3"):
        envs.make("metaworld:psuh-v3")
    with pytest.raises(ValueError, match="list_ids"):
        envs.make("atari:pong")
    with pytest.raises(ValueError, match="dmc:walker"):
        envs.make("dmc:walker")


def test_unknown_option_names_allowed_ones():
    with pytest.raises(TypeError, match="pixels"):
        envs.make("dmc:walker-walk", pixel=False)
    with pytest.raises(TypeError, match="max_episode_steps"):
        envs.make("metaworld:push-v3", episode_len=10)


def test_list_ids():
    dmc_ids = envs.list_ids("dmc")
    mw_ids = envs.list_ids("metaworld")
    assert "dmc:finger-turn_easy" in dmc_ids and "dmc:ball_in_cup-catch" in dmc_ids
    assert "metaworld:push-v3" in mw_ids and len(mw_ids) == 50
    assert all(i.startswith("dmc:") for i in dmc_ids)
    assert sorted(envs.list_ids()) == sorted(dmc_ids + mw_ids)
    with pytest.raises(ValueError):
        envs.list_ids("gym")


def test_sequences():
    cw10 = [f"metaworld:{t}-v3" for t in [
        "hammer", "push-wall", "faucet-close", "push-back", "stick-pull",
        "handle-press-side", "push", "shelf-place", "window-close", "peg-unplug-side"]]
    assert envs.sequence("cw10") == cw10
    assert envs.sequence("cw20") == cw10 + cw10
    mt40 = envs.sequence("mt40")
    assert len(mt40) == len(set(mt40)) == 40 and not set(mt40) & set(cw10)
    assert set(mt40) | set(cw10) == set(envs.list_ids("metaworld"))
    assert envs.sequence("dmc10")[0] == "dmc:cartpole-balance"
    assert len(envs.sequence("dmc10")) == 10 and len(envs.sequence("dmc6")) == 6
    assert set(envs.SEQUENCES) == {"cw10", "cw20", "mt40", "dmc10", "dmc6"}
    with pytest.raises(ValueError, match="cw10"):
        envs.sequence("cw11")


def test_task_ids_mix_sequence_names_and_ids():
    """'mt40,dmc10' is the issue's pre-training set: MT40's 40 ids, then DMC10's 10, in that order."""
    assert envs.task_ids("mt40,dmc10") == envs.sequence("mt40") + envs.sequence("dmc10")
    assert len(envs.task_ids("mt40, dmc10")) == 50
    assert envs.task_ids(["cw10", "dmc:walker-walk"]) == envs.sequence("cw10") + ["dmc:walker-walk"]
    assert envs.task_ids("metaworld:push-v3,metaworld:push-v3") == ["metaworld:push-v3"] * 2  # duplicates kept
    assert envs.task_ids("cw20") == envs.sequence("cw10") * 2
    with pytest.raises(ValueError, match="metaworld:push-v3"):  # the close match is named
        envs.task_ids("mt40,metaworld:psh-v3")
    with pytest.raises(ValueError, match="no tasks"):
        envs.task_ids(" , ")
    with pytest.raises(ValueError, match="unknown sequence 'mt4O'; did you mean 'mt40'"):
        envs.task_ids("mt4O,dmc10")


@pytest.mark.parametrize("name", ["dmc10", "dmc6"])
def test_dmc_sequence_ids_make(name):
    for env_id in envs.sequence(name):
        env = envs.make(env_id, pixels=False, seed=0)
        obs, _ = env.reset()
        assert env.observation_space.contains(obs), env_id


def test_import_is_lazy_and_gl_backend_is_chosen():
    code = (
        "import os, sys\nfrom plasticrl import envs\n"
        "assert 'dm_control' not in sys.modules and 'metaworld' not in sys.modules\n"
        "envs.make('dmc:walker-walk', pixels=False)\n"  # state env first
        "env = envs.make('dmc:walker-walk', size=32)\n"
        "assert env.reset()[0].shape == (9, 32, 32)\n"
        "print(os.environ['MUJOCO_GL'])\n"
    )
    environ = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM")}
    environ["PYTHONPATH"] = ROOT
    out = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] in ("egl", "osmesa")


@pytest.mark.parametrize(("task", "pixels"), [
    ("cartpole-swingup", True), ("cartpole-swingup", False),
    # tasks that change the model when an episode starts: target position (reacher, fish-swim), target site
    # (finger-turn), colours (fish-upright: seen only in pixels), damping (finger-spin)
    ("reacher-easy", False), ("fish-swim", False), ("finger-turn_easy", True), ("fish-upright", True),
    ("finger-spin", False)])
@pytest.mark.parametrize("restored_env_was_reset", [True, False])
def test_saved_state_continues_the_episode_exactly(task, pixels, restored_env_was_reset):
    """get_state() mid-episode, set_state() on another env of the task (another seed, reset or never reset): both
    then give the same observations, rewards and episode ends through the episode's end and the next reset (the
    task's RandomState), bit-for-bit."""
    kw = {"size": 32, "frame_stack": 3} if pixels else {"pixels": False}
    a = envs.make(f"dmc:{task}", action_repeat=8, seed=0, **kw)  # 125 steps an episode
    b = envs.make(f"dmc:{task}", action_repeat=8, seed=5, **kw)
    a.reset(seed=0)
    rng = np.random.default_rng(0)
    shape = a.action_space.shape
    for _ in range(60):
        a.step(rng.uniform(-1, 1, shape))
    if restored_env_was_reset:
        b.reset(seed=5)
        b.step(rng.uniform(-1, 1, shape))
    b.unwrapped.set_state(a.unwrapped.get_state())
    ended = False
    for t in range(80):  # the episode ends at step 125, then both reset without a seed
        action = rng.uniform(-1, 1, shape)
        out_a, out_b = a.step(action), b.step(action)
        assert np.array_equal(out_a[0], out_b[0]) and out_a[1:4] == out_b[1:4], t
        if out_a[2] or out_a[3]:
            assert t == 64 and not ended
            ended = True
            assert np.array_equal(a.reset()[0], b.reset()[0])
    assert ended


def test_a_state_of_another_task_or_observation_kind_is_refused_naming_it():
    state = envs.make("dmc:walker-walk", pixels=False, seed=0).unwrapped.get_state()
    with pytest.raises(ValueError, match=r"'task': 'walker-walk'.*'task': 'walker-run'"):
        envs.make("dmc:walker-run", pixels=False, seed=0).unwrapped.set_state(state)
    with pytest.raises(ValueError, match=r"'pixels': False"):
        envs.make("dmc:walker-walk", size=32, seed=0).unwrapped.set_state(state)
