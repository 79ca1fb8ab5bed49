"""DrQ as SB3 classes: shapes, gradient routing, save/load, evaluate_policy."""

import numpy as np
import pytest
import torch
from stable_baselines3.common.evaluation import evaluate_policy

from plasticrl.agents import DrQ
from plasticrl.agents.drq import Encoder


def test_encoder_shape_matches_drqv2():
    enc = Encoder((9, 84, 84))
    assert enc.repr_dim == 32 * 35 * 35
    out = enc(torch.zeros(2, 9, 84, 84, dtype=torch.uint8))
    assert out.shape == (2, 32 * 35 * 35)
    convs = [m for m in enc.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.stride for c in convs] == [(2, 2), (1, 1), (1, 1), (1, 1)]
    assert all(c.out_channels == 32 and c.kernel_size == (3, 3) for c in convs)


def test_encoder_forward_is_the_convnet_on_pixels_scaled_to_half_range():
    """On the CPU (fp32) the features are exactly the conv stack on uint8 / 255 - 0.5, flattened."""
    torch.manual_seed(0)
    enc = Encoder((6, 32, 32))
    obs = torch.randint(0, 256, (3, 6, 32, 32), dtype=torch.uint8)
    assert torch.equal(enc(obs), enc.convnet(obs.float() / 255.0 - 0.5).flatten(1))


@pytest.fixture(scope="module")
def trained(tiny_pixel_env, tiny_drq):
    env = tiny_pixel_env()
    model = tiny_drq(env)
    model.learn(80)
    yield model, env
    env.close()


def test_encoder_trained_by_critic_loss_only(trained):
    model, _ = trained
    counts = []
    handles = [p.register_hook(lambda g: counts.append(1)) for p in model.policy.encoder.parameters()]
    n_params = len(handles)
    before = [p.detach().clone() for p in model.policy.encoder.parameters()]
    actor_before = [p.detach().clone() for p in model.policy.actor.parameters()]
    model.update(model.replay_buffer.sample(8))
    for h in handles:
        h.remove()
    # One backward pass reaches the encoder per update: the critic's. The actor loss sees detached features.
    assert len(counts) == n_params
    assert any(not torch.equal(a, p) for a, p in zip(before, model.policy.encoder.parameters()))
    assert any(not torch.equal(a, p) for a, p in zip(actor_before, model.policy.actor.parameters()))


def test_actor_loss_gives_encoder_no_gradient(trained):
    model, _ = trained
    batch = model.replay_buffer.sample(8)
    for p in model.policy.encoder.parameters():
        p.grad = None
    h = model.policy.encoder(batch.observations)
    action, log_prob = model.actor.action_log_prob(h.detach())
    q1, q2 = model.critic(h.detach(), action)
    (0.1 * log_prob - torch.min(q1, q2)).mean().backward()
    assert all(p.grad is None for p in model.policy.encoder.parameters())
    # ...whereas the critic loss does reach it.
    q1, _ = model.critic(h, batch.actions)
    q1.mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.policy.encoder.parameters())


def test_save_load_round_trip_gives_identical_actions(trained, tmp_path):
    model, env = trained
    obs = env.reset()
    a1, _ = model.predict(obs, deterministic=True)
    model.save(tmp_path / "drq.zip")
    loaded = DrQ.load(tmp_path / "drq.zip", device="cpu")
    a2, _ = loaded.predict(obs, deterministic=True)
    np.testing.assert_array_equal(a1, a2)
    for (k, v), (k2, v2) in zip(model.policy.state_dict().items(), loaded.policy.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert a1.shape == (1, 1) and np.all(np.abs(a1) <= 1)


def mark_captured(model):
    """Gives ``model`` (a CPU DrQ, which never captures) an update graph and a step graph marked as captured, as a
    CUDA DrQ has after its first updates; returns them (update graph, step graph)."""
    from plasticrl.agents.accel import GraphedUpdate

    model._update_fn, model._step_graph = GraphedUpdate(model._update_vector), GraphedUpdate(model._update_vector)
    model._step_graph_key = (8, 0)
    for graph in (model._update_fn, model._step_graph):
        graph.graph = "captured"
    return model._update_fn, model._step_graph


def test_set_parameters_keeps_this_agents_optimizer_flags(trained, tmp_path):
    """Optimizer states carry the saver's fused/capturable flags (True when saved on CUDA); DrQ.set_parameters
    (used by DrQ.load) keeps this agent's, so an agent saved on one device trains in (or without) CUDA graphs on
    another. Here CUDA-style states are loaded into a CPU agent: its flags stay False, its moments are restored."""
    from stable_baselines3.common.save_util import load_from_zip_file

    model, _ = trained
    model.save(tmp_path / "drq.zip")
    _, params, _ = load_from_zip_file(tmp_path / "drq.zip", device="cpu", load_data=False)
    for name in ("actor.optimizer", "critic.optimizer"):
        for group in params[name]["param_groups"]:
            group["fused"] = group["capturable"] = True
    loaded = DrQ.load(tmp_path / "drq.zip", device="cpu")
    graphs = mark_captured(loaded)
    loaded.set_parameters(params)
    assert all(g.graph is None for g in graphs)  # invalidated: a graph would step the old states
    for opt, ref in ((loaded.actor.optimizer, model.actor.optimizer),
                     (loaded.critic.optimizer, model.critic.optimizer)):
        assert all(not g.get("fused") and not g.get("capturable") for g in opt.param_groups)
        for p, q in zip(opt.param_groups[0]["params"], ref.param_groups[0]["params"]):
            assert torch.equal(opt.state[p]["exp_avg"], ref.state[q]["exp_avg"])
    stats = loaded.update(model.replay_buffer.sample(8))  # an update steps the restored optimizers
    assert all(torch.isfinite(v) for v in stats.values())


def test_stochastic_actions_differ_and_stay_in_bounds(trained):
    model, env = trained
    obs = env.reset()
    acts = np.stack([model.predict(obs, deterministic=False)[0] for _ in range(10)])
    assert np.all(np.abs(acts) <= 1) and np.unique(acts).size > 1


def test_evaluate_policy_works(trained, tiny_pixel_env):
    model, _ = trained
    eval_env = tiny_pixel_env(seed=5)
    mean, std = evaluate_policy(model, eval_env, n_eval_episodes=1, deterministic=True)
    assert np.isfinite(mean) and std == 0.0
    eval_env.close()


def test_update_count_follows_train_freq_and_gradient_steps(tiny_pixel_env, tiny_drq):
    env = tiny_pixel_env()
    model = tiny_drq(env, train_freq=2, gradient_steps=1, learning_starts=20)
    model.learn(60)
    # SB3 trains once every 2 transitions after learning_starts: (60 - 20) / 2 updates.
    assert model._n_updates == 20
    env.close()


def test_log_prob_matches_torch_distribution():
    from plasticrl.agents.drq import Actor

    torch.manual_seed(0)
    actor = Actor(repr_dim=6, action_dim=3, feature_dim=4, hidden_dim=8)
    h = torch.randn(5, 6)
    torch.manual_seed(1)
    action, log_prob = actor.action_log_prob(h)
    torch.manual_seed(1)
    mu, log_std = actor(h)
    u = mu + log_std.exp() * torch.randn_like(mu)
    base = torch.distributions.Normal(mu, log_std.exp())
    ref = (base.log_prob(u) - torch.log(1 - torch.tanh(u) ** 2)).sum(-1, keepdim=True)
    torch.testing.assert_close(action, torch.tanh(u))
    torch.testing.assert_close(log_prob, ref, rtol=1e-4, atol=1e-4)


def test_non_finite_loss_raises_a_clear_error(tiny_pixel_env, tiny_drq):
    from gymnasium.wrappers import TransformReward

    env = tiny_pixel_env(wrap=lambda e: TransformReward(e, lambda r: float("nan")))
    model = tiny_drq(env, learning_starts=20)
    model.learn(20)  # random actions only: fills replay with NaN rewards
    model.train(gradient_steps=2, batch_size=8)
    with pytest.raises(FloatingPointError, match="non-finite critic_loss.*learning_rate"):
        model.pop_train_stats()
    env.close()


def short_episodes(env):
    """Episodes of 20 agent steps, so that SB3's learn dumps its logs (at episode ends) within a few updates."""
    from gymnasium.wrappers import TimeLimit

    return TimeLimit(env, max_episode_steps=20)


def test_learn_records_update_stats_in_sb3_logger(tmp_path, tiny_pixel_env, tiny_drq):
    """A plain DrQ.learn writes DrQ's update statistics (train/critic_loss, ...) with SB3's logger at each dump."""
    import csv
    import math

    from stable_baselines3.common.logger import configure

    env = tiny_pixel_env(wrap=short_episodes)
    model = tiny_drq(env, learning_starts=10)
    model.set_logger(configure(str(tmp_path), ["csv"]))
    model.learn(60, log_interval=1)
    with open(tmp_path / "progress.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["time/total_timesteps"]) for r in rows] == [20, 40, 60]
    losses = [float(r["train/critic_loss"]) for r in rows]
    assert all(math.isfinite(x) for x in losses), losses
    assert [int(r["train/n_updates"]) for r in rows] == [4, 14, 24]  # dumped before the round of updates at 20k
    env.close()


def test_learn_raises_on_a_non_finite_loss(tiny_pixel_env, tiny_drq):
    """NaN rewards make the losses NaN: learn stops at its next log dump with FloatingPointError naming them. (The
    env maps the NaN actions of the diverged actor to 0, so that the physics runs on to that dump.)"""
    import gymnasium as gym
    from gymnasium.wrappers import TransformReward

    def diverging(env):
        env = gym.wrappers.TransformAction(TransformReward(env, lambda r: float("nan")), np.nan_to_num,
                                           env.action_space)
        return short_episodes(env)

    env = tiny_pixel_env(wrap=diverging)
    model = tiny_drq(env, learning_starts=10)
    with pytest.raises(FloatingPointError, match=r"non-finite critic_loss, actor_loss.* at update 4 \(env step 20\)"):
        model.learn(60, log_interval=1)
    env.close()


def test_update_matches_a_straightforward_sac_step(tiny_pixel_env, tiny_drq):
    """DrQ.update against an independent, plain implementation of the same SAC step on the same batch and RNG."""
    import copy

    import torch.nn.functional as F

    from plasticrl.agents.drq.augment import random_shift

    env = tiny_pixel_env()
    model = tiny_drq(env, learning_starts=10)
    model.learn(30)
    ref = copy.deepcopy(model.policy)
    log_alpha = model.log_ent_coef.detach().clone().requires_grad_(True)
    batch = model.replay_buffer.sample(8)
    torch.manual_seed(123)
    got = model.update(batch)

    torch.manual_seed(123)
    obs, next_obs = random_shift(batch.observations, 4), random_shift(batch.next_observations, 4)
    alpha = log_alpha.detach().exp()
    with torch.no_grad():
        hn = ref.encoder(next_obs)
        a2, lp2 = ref.actor.action_log_prob(hn)
        target = batch.rewards + batch.discounts * (torch.min(*ref.critic_target(hn, a2)) - alpha * lp2)
    h = ref.encoder(obs)
    q1, q2 = ref.critic(h, batch.actions)
    critic_loss = F.mse_loss(q1, target) + F.mse_loss(q2, target)
    ref.critic.optimizer.zero_grad()
    critic_loss.backward()
    ref.critic.optimizer.step()  # SAC order: the actor loss reads the freshly updated critic
    a, lp = ref.actor.action_log_prob(h.detach())
    actor_loss = (alpha * lp - torch.min(*ref.critic(h.detach(), a))).mean()
    torch.testing.assert_close(got["critic_loss"], critic_loss.detach())
    torch.testing.assert_close(got["actor_loss"], actor_loss.detach())
    torch.testing.assert_close(got["q"], q1.mean().detach())
    # the target critic moved toward the (updated) online critic by tau
    for t_new, t_old, online in zip(model.critic_target.parameters(), ref.critic_target.parameters(),
                                    model.critic.parameters()):
        torch.testing.assert_close(t_new, t_old + model.tau * (online - t_old))
    for p_model, p_ref in zip(model.critic.parameters(), ref.critic.parameters()):
        torch.testing.assert_close(p_model, p_ref)
    env.close()


def test_async_env_step_stores_the_actions_the_env_executed(tiny_pixel_env, tiny_drq):
    import gymnasium as gym

    from plasticrl.agents.drq.prefetch import PrefetchVecEnv
    from plasticrl.replay_ratio import StaticReplayRatio
    from plasticrl.sb3 import ReplayRatioCallback

    executed = []

    class Record(gym.Wrapper):
        def step(self, action):
            executed.append(np.array(action, dtype=np.float32).copy())
            return self.env.step(action)

    env = tiny_pixel_env(wrap=Record)
    model = tiny_drq(env, learning_starts=20, train_freq=1, gradient_steps=0, async_env_step=True)
    assert isinstance(model.env, PrefetchVecEnv)
    model.learn(60, callback=ReplayRatioCallback(StaticReplayRatio(1.0)))
    assert model._n_updates == 40
    stored = model.replay_buffer.actions[:60].numpy()
    # every transition's stored action is the one the env ran (DummyVecEnv runs a step only at step_wait, so the
    # step prefetched after the last update has not run)
    assert len(executed) == 60
    np.testing.assert_allclose(stored, np.stack(executed[:60]), atol=1e-6)
    env.close()


def test_actions_queued_for_old_episodes_are_dropped_when_learn_resets_the_envs(tiny_pixel_env, tiny_drq):
    """After learn() with the async env step, actions are queued for the envs' current observations: a learn()
    that continues keeps them; one that resets the envs (reset_num_timesteps) drops them."""
    from plasticrl.replay_ratio import StaticReplayRatio
    from plasticrl.sb3 import ReplayRatioCallback

    env = tiny_pixel_env()
    model = tiny_drq(env, learning_starts=20, train_freq=1, gradient_steps=0, async_env_step=True)
    model.learn(30, callback=ReplayRatioCallback(StaticReplayRatio(1.0)))
    queued = model.queued_actions
    assert queued is not None
    model._setup_learn(10, reset_num_timesteps=False)
    assert model.queued_actions is queued
    model._setup_learn(10, reset_num_timesteps=True)
    assert model.queued_actions is None
    env.close()


def test_queued_action_is_sb3_sample_action_from_the_weights_at_queue_time(tiny_pixel_env, tiny_drq):
    """DrQ._queue_action (async env stepping) gives SB3's _sample_action (same noise draws) for the weights at the
    time it was queued, even when the updates change the weights before its result is read."""
    from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

    env = tiny_pixel_env(n_envs=2)
    model = tiny_drq(env, learning_starts=10, async_env_step=True)
    model.learn(30)
    torch.manual_seed(3)
    expected = OffPolicyAlgorithm._sample_action(model, model.learning_starts, None, model.n_envs)
    torch.manual_seed(3)
    _, finish = model._queue_action()
    with torch.no_grad():
        for p in model.actor.parameters():
            p.add_(1.0)
    action, buffer_action = finish()
    np.testing.assert_allclose(action, expected[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(buffer_action, expected[1], rtol=1e-6, atol=1e-6)
    assert action.shape == (2, 1) and np.all(np.abs(action) <= 1)
    env.close()


def test_async_env_step_on_cpu_starts_the_env_before_the_updates(tiny_pixel_env, tiny_drq):
    """On the CPU the queued actions are ready at once: the next env step starts before the round of updates, so
    that subprocess envs step while the main process trains."""
    from plasticrl.replay_ratio import StaticReplayRatio
    from plasticrl.sb3 import ReplayRatioCallback

    env = tiny_pixel_env()
    model = tiny_drq(env, learning_starts=10, train_freq=1, gradient_steps=0, async_env_step=True)
    started_at = []
    prefetch = model.env.prefetch

    def record(actions):
        started_at.append(model._train_count)
        prefetch(actions)

    model.env.prefetch = record
    model.learn(20, callback=ReplayRatioCallback(StaticReplayRatio(2.0)))
    assert model._n_updates == 20 and len(started_at) == 10
    assert started_at == [2 * k for k in range(10)]  # before each round of 2 updates, none after
    env.close()


def test_replay_buffer_save_load_round_trip(tmp_path, tiny_pixel_env, tiny_drq):
    """DrQ.save_replay_buffer / load_replay_buffer (SB3 names) keep the frames, counts and device-side bounds;
    the loaded buffer samples the same n-step batch for the same seed; a foreign buffer is refused by name."""
    env = tiny_pixel_env()
    model = tiny_drq(env, learning_starts=10)
    model.learn(60)
    model.save_replay_buffer(tmp_path / "replay.pkl")
    other = tiny_drq(tiny_pixel_env())
    update_graph, step_graph = mark_captured(other)
    other.load_replay_buffer(tmp_path / "replay.pkl")
    assert step_graph.graph is None and update_graph.graph == "captured"  # only the step graph reads the buffer
    a, b = model.replay_buffer, other.replay_buffer
    assert b is not a and b.size() == a.size() == 60
    assert torch.equal(b.frames, a.frames) and torch.equal(b.bounds, a.bounds)
    torch.manual_seed(5)
    batch_a = a.sample(16)
    torch.manual_seed(5)
    batch_b = b.sample(16)
    for x, y in zip(batch_a, batch_b):
        assert torch.equal(x, y)
    from stable_baselines3.common.save_util import save_to_pkl

    save_to_pkl(tmp_path / "other.pkl", {"not": "a buffer"})
    with pytest.raises(TypeError, match="FrameReplayBuffer"):
        other.load_replay_buffer(tmp_path / "other.pkl")
    env.close()


def test_gpu_speed_options_are_checked_and_left_off_on_cpu(tiny_pixel_env, tiny_drq):
    """compile_update takes only the listed modes (a typo names them); compilation is a CUDA option: on the CPU
    the agent has no compiled update and trains as usual."""
    env = tiny_pixel_env()
    with pytest.raises(ValueError, match="compile_update='fast'.*'max-autotune-no-cudagraphs'"):
        tiny_drq(env, compile_update="fast")
    model = tiny_drq(env, compile_update="max-autotune-no-cudagraphs", learning_starts=10)
    assert model.compile_update == "max-autotune-no-cudagraphs" and model._update == model.update  # not compiled
    model.learn(20)
    assert model._n_updates == 5  # 10 steps after learning_starts, one update every second step
    env.close()


def test_compile_update_wraps_the_function_in_each_mode():
    """plasticrl.agents.accel.compile_update: the function itself when off, a (lazily) compiled wrapper in the other
    modes; a mode that is not in COMPILE_MODES is refused, naming them."""
    from plasticrl.agents.accel import COMPILE_MODES, compile_update

    def fn(x):
        return x + 1

    assert compile_update(fn, False) is fn
    for mode in COMPILE_MODES[1:]:
        wrapped = compile_update(fn, mode)
        assert wrapped is not fn and callable(wrapped)
    for bad in ("max-autotune", 1, None):
        with pytest.raises(ValueError, match="allowed are False, True, 'default', 'max-autotune-no-cudagraphs'"):
            compile_update(fn, bad)


def torch_flags():
    """The process-wide torch flags that plasticrl.lab.runtime.configure_torch sets (and building an agent must
    not): cuDNN autotuning, TF32 matmuls and convolutions, dynamo's recompile limit."""
    return (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
            torch._dynamo.config.recompile_limit)


@pytest.mark.parametrize("options", [{}, {"compile_update": True, "cuda_graph": True},
                                     {"compile_update": "max-autotune-no-cudagraphs", "cuda_graph": "auto"}])
def test_building_a_drq_changes_no_process_wide_state(options, tiny_pixel_env, tiny_drq):
    """Building a DrQ with seed=None leaves torch's flags and its global RNG as they were; its initial weights come
    from fresh entropy (two such agents differ)."""
    env = tiny_pixel_env()
    flags, rng = torch_flags(), torch.get_rng_state()
    a = tiny_drq(env, seed=None, **options)
    b = tiny_drq(env, seed=None, **options)
    assert torch_flags() == flags
    assert torch.equal(torch.get_rng_state(), rng)
    assert not all(torch.equal(p, q) for p, q in zip(a.policy.parameters(), b.policy.parameters()))
    env.close()


def test_config_key_agent_compile_takes_a_mode(tiny_pixel_env):
    from plasticrl.lab.config import train as cfgmod
    from plasticrl.lab.train import build_agent

    cfg = cfgmod.validate({"run": {"total_steps": 1000},
                           "agent": {"compile": "max-autotune-no-cudagraphs"}})
    env = tiny_pixel_env()
    model = build_agent(cfg, env, "cpu")
    assert model.compile_update == "max-autotune-no-cudagraphs"
    plain = build_agent(cfgmod.validate({"run": {"total_steps": 1000}}), env, "cpu")
    assert plain.compile_update is False
    with pytest.raises(cfgmod.ConfigError, match="agent.compile"):
        cfgmod.validate({"agent": {"compile": "max-autotune"}})
    with pytest.raises(cfgmod.ConfigError, match="agent.compile: 'max-autotune-no-cudagraphs' is a DrQ option"):
        cfgmod.validate({"env": {"pixels": False}, "agent": {"kind": "sac", "compile": "max-autotune-no-cudagraphs"}})
    env.close()


def test_bench_quick_on_cpu_writes_the_update_times_and_their_ratio(tmp_path):
    """`plasticrl bench --quick` on the CPU: DrQ and SB3 SAC ms per update, their ratio (recomputed here), the
    options it ran with; --compile is a CUDA option: refused on the CPU with one line, before anything runs."""
    import json

    from plasticrl.lab.cli import main

    out = tmp_path / "bench.json"
    assert main(["bench", "--device", "cpu", "--quick", "--train-steps", "0", "--compile",
                 "max-autotune-no-cudagraphs", "--json", str(out)]) == 2 and not out.exists()
    assert main(["bench", "--device", "cpu", "--quick", "--train-steps", "0", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["drq_update_ms_eager"] > 0 and r["sb3_sac_update_ms"] > 0 and r["batch_size"] == 32
    assert r["speedup_vs_sb3_sac"] == pytest.approx(r["sb3_sac_update_ms"] / r["drq_sample_update_ms_eager"])
    assert r["compile_update"] is False and r["fused_q_heads"] is False


def test_networks_module_imports_torch_only():
    """plasticrl/agents/drq/networks.py is plain torch (plus the standard library): no SB3, no gymnasium."""
    import ast
    import sys

    import plasticrl.agents.drq.networks as networks

    tree = ast.parse(open(networks.__file__).read())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            roots.add(node.module.split(".")[0])
    assert roots - {"torch"} <= set(sys.stdlib_module_names), roots
