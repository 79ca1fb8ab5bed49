"""DrQ-v2 (plasticrl.agents.drqv2): the update against a plain re-implementation, the noise schedule, the truncated
normal, orthogonal init, uniform exploration, learn and logs, save/load, the training batch's critic FAU."""

import copy
import csv
import math

import numpy as np
import pytest
import torch

from plasticrl.agents.drq.augment import random_shift
from plasticrl.agents.drqv2 import DrQV2, DrQV2Policy, parse_std_schedule, truncated_normal_sample

# the tiny agent: as tests/conftest.py's TINY_DRQ, with 8-channel convolutions
TINY = {"buffer_size": 500, "learning_starts": 40, "batch_size": 8, "seed": 0, "device": "cpu",
        "policy_kwargs": {"feature_dim": 8, "hidden_dim": 16, "encoder_channels": 8}}
EPS = 1e-6  # DrQ-v2's TruncatedNormal clamps samples to [-1 + eps, 1 - eps]


def tiny_drqv2(env, **overrides):
    return DrQV2("CnnPolicy", env, **{**TINY, **overrides})


def short_episodes(env):
    """Episodes of 20 agent steps, so that SB3's learn dumps its logs (at episode ends) every 20 steps."""
    from gymnasium.wrappers import TimeLimit

    return TimeLimit(env, max_episode_steps=20)


# ---------------------------------------------------------------- the noise schedule and the truncated normal
@pytest.mark.parametrize(("spec", "step", "expected"), [
    ("linear(1.0,0.1,500000)", 0, 1.0),
    ("linear(1.0,0.1,500000)", 100_000, 0.82),  # 1 - 0.9 * 0.2
    ("linear(1.0,0.1,500000)", 250_000, 0.55),
    ("linear(1.0,0.1,500000)", 500_000, 0.1),
    ("linear(1.0,0.1,500000)", 2_000_000, 0.1),  # constant after the duration
    (" linear( 1.0 , 0.1 , 5e5 ) ", 250_000, 0.55),
    (0.2, 0, 0.2), (0.2, 10**7, 0.2), ("0.2", 123, 0.2), (1, 5, 1.0),
    ("step_linear(1.0,0.5,100,0.1,200)", 50, 0.75),
    ("step_linear(1.0,0.5,100,0.1,200)", 100, 0.5),  # the first piece includes its last step
    ("step_linear(1.0,0.5,100,0.1,200)", 200, 0.3),  # 0.5 - 0.4 * 100/200
    ("step_linear(1.0,0.5,100,0.1,200)", 400, 0.1),
])
def test_std_schedule_values(spec, step, expected):
    assert parse_std_schedule(spec)(step) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("spec", "error", "match"), [
    ("cosine(1.0,0.1,100)", ValueError, "not DrQ-v2's syntax.*linear\\(init,final,duration\\)"),
    ("linear(1.0,0.1)", ValueError, "not DrQ-v2's syntax"),
    ("linear(1.0,0.1,0)", ValueError, "duration .* must be > 0"),
    ("-0.1", ValueError, "std must be >= 0"),
    ("nan", ValueError, "finite"),
    (True, TypeError, "give a number"),
    (None, TypeError, "give a number"),
])
def test_std_schedule_rejects_bad_input(spec, error, match):
    with pytest.raises(error, match=match):
        parse_std_schedule(spec)


def test_truncated_normal_clips_the_noise_then_the_sample_with_a_straight_through_gradient():
    """DrQ-v2's TruncatedNormal.sample: with std 100 every noise entry is clipped to +-0.3 (sign of the normal
    draw), then the sample to [-1 + 1e-6, 1 - 1e-6]; the gradient reaches the mean as if nothing were clamped."""
    mean = torch.tensor([[0.0, 0.95, -0.95, 0.5, 0.99]], requires_grad=True)
    torch.manual_seed(0)
    sign = torch.randn(1, 5).sign()
    torch.manual_seed(0)
    x = truncated_normal_sample(mean, torch.tensor(100.0), clip=0.3)
    expected = (mean.detach() + 0.3 * sign).clamp(-1 + EPS, 1 - EPS)
    torch.testing.assert_close(x.detach(), expected, rtol=0, atol=1e-7)
    x.sum().backward()
    torch.testing.assert_close(mean.grad, torch.ones(1, 5))
    # unclipped noise (acting): std 100 pushes every entry to the clamp, on the side of its draw
    torch.manual_seed(0)
    x = truncated_normal_sample(mean.detach(), 100.0)
    torch.testing.assert_close(x, sign * (1 - EPS), rtol=0, atol=0)
    # small std: mean + std * z exactly
    torch.manual_seed(1)
    z = torch.randn(1, 5)
    torch.manual_seed(1)
    x = truncated_normal_sample(torch.zeros(1, 5), torch.tensor(0.01), clip=0.3)
    torch.testing.assert_close(x, 0.01 * z)


# ---------------------------------------------------------------- init
def orthonormal(w, gain=1.0):
    """W W^T = gain^2 I on the smaller side of W (out, in) (rows orthonormal if out <= in, else columns)."""
    w = w.reshape(w.shape[0], -1)
    gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    return torch.allclose(gram, gain**2 * torch.eye(gram.shape[0]), atol=1e-5)


def test_orthogonal_init_and_zero_biases(tiny_pixel_env):
    """Encoder, actor and critic: orthogonal weights (gain sqrt(2) for convolutions), zero biases; the target critic
    a copy; reinit_layer draws the same init; init="default" keeps PyTorch's own."""
    env = tiny_pixel_env()
    model = tiny_drqv2(env)
    layers = 0
    for net in (model.policy.encoder, model.policy.actor, model.policy.critic):
        for m in net.modules():
            if isinstance(m, torch.nn.Linear):
                assert orthonormal(m.weight), m
            elif isinstance(m, torch.nn.Conv2d):
                assert orthonormal(m.weight, math.sqrt(2)), m
            else:
                continue
            layers += 1
            assert torch.count_nonzero(m.bias) == 0
    # encoder 4 convs; actor trunk + 3 Linear; critic trunk + 2 x 3 Linear. Both sides of W W^T occur: the first
    # critic Linear is (16, 8 + 1), the actor's last (1, 16).
    assert layers == 4 + 4 + 7
    assert model.policy.critic.q1[0].weight.shape == (16, 9) and model.policy.actor.policy[4].weight.shape == (1, 16)
    for p, t in zip(model.policy.critic.parameters(), model.policy.critic_target.parameters()):
        assert torch.equal(p, t)
    layer = model.policy.critic.q1[2]  # an intervention's reset of one layer draws DrQ-v2's init again
    with torch.no_grad():
        layer.weight.mul_(3.0)
        layer.bias.fill_(0.5)
    model.reinit_layer(layer)
    assert orthonormal(layer.weight) and torch.count_nonzero(layer.bias) == 0
    default = tiny_drqv2(env, policy_kwargs={**TINY["policy_kwargs"], "init": "default"})
    assert torch.count_nonzero(default.policy.critic.q1[0].bias) > 0  # PyTorch's own init: non-zero biases
    assert not orthonormal(default.policy.critic.q1[0].weight)
    env.close()


# ---------------------------------------------------------------- the update
def plain_drqv2_update(nets, optimizers, batch, std, clip, tau, l2_init=0.0, initial=None, nap=False):
    """One DrQ-v2 update as facebookresearch/drqv2 writes it (``DrQV2Agent.update``), in plain torch on the given
    modules: ``nets`` (encoder, actor, critic, target critic), ``optimizers`` (encoder, critic, actor Adams).
    DrQ's remedies: ``l2_init`` adds l2_init * sum ||p - p_0||^2 to the critic loss (encoder and critic parameters)
    and to the actor loss (actor parameters), p_0 from ``initial`` (name -> initial tensor, names as
    ``encoder.<param>``); ``nap`` rescales every Linear/Conv2d weight of the stepped networks to its initial
    Frobenius norm after each step. Returns the critic loss, the actor loss, the mean Q1 and, for the actor loss's
    batch, the share of samples with Q1 < Q2 and the share of action entries the clamp changed."""
    encoder, actor, critic, target = nets
    named = {"encoder": encoder, "actor": actor, "critic": critic}

    def penalty(*prefixes):
        return sum(((p - initial[f"{k}.{n}"]) ** 2).sum() for k in prefixes for n, p in named[k].named_parameters())

    def project(*prefixes):
        with torch.no_grad():
            for k in prefixes:
                for n, m in named[k].named_modules():
                    if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
                        m.weight.mul_(initial[f"{k}.{n}.weight"].norm() / m.weight.norm())
    encoder_opt, critic_opt, actor_opt = optimizers
    clamped: list[float] = []  # share of clamped entries of each noisy action batch (target, actor loss)

    def mean_action(h):
        return torch.tanh(actor.policy(actor.trunk(h)))

    def noisy(mean):
        noise = (torch.randn_like(mean) * std).clamp(-clip, clip)
        x = mean + noise
        clamped.append(float((x.abs() > 1 - EPS).float().mean()))
        return x - x.detach() + x.clamp(-1 + EPS, 1 - EPS).detach()

    def twin_q(net, h, a):
        x = torch.cat([net.trunk(h), a], dim=-1)
        return net.q1(x), net.q2(x)

    obs = random_shift(batch.observations, 4)
    next_obs = random_shift(batch.next_observations, 4)
    h = encoder(obs)
    with torch.no_grad():
        h_next = encoder(next_obs)
        tq1, tq2 = twin_q(target, h_next, noisy(mean_action(h_next)))
        target_q = batch.rewards + batch.discounts * torch.min(tq1, tq2)
    q1, q2 = twin_q(critic, h, batch.actions)
    critic_loss = ((q1 - target_q) ** 2).mean() + ((q2 - target_q) ** 2).mean()
    if l2_init:
        critic_loss = critic_loss + l2_init * penalty("encoder", "critic")
    encoder_opt.zero_grad(set_to_none=True)
    critic_opt.zero_grad(set_to_none=True)
    critic_loss.backward()
    critic_opt.step()
    encoder_opt.step()
    if nap:
        project("encoder", "critic")
    aq1, aq2 = twin_q(critic, h.detach(), noisy(mean_action(h.detach())))
    actor_loss = -torch.min(aq1, aq2).mean()
    if l2_init:
        actor_loss = actor_loss + l2_init * penalty("actor")
    actor_opt.zero_grad(set_to_none=True)
    actor_loss.backward()
    actor_opt.step()
    if nap:
        project("actor")
    with torch.no_grad():
        for p, t in zip(critic.parameters(), target.parameters()):
            t.copy_(tau * p + (1 - tau) * t)
    branches = {"q1_below_q2": float((aq1 < aq2).float().mean()), "clamped": clamped[1]}
    return critic_loss.detach(), actor_loss.detach(), q1.detach().mean(), branches


REMEDIES = {"drqv2": {}, "l2_init": {"l2_init": 0.1}, "nap": {"nap": True},
            "crelu": {"policy_kwargs": {**TINY["policy_kwargs"], "activation": "crelu"}}}


@pytest.mark.parametrize("remedy", list(REMEDIES))
def test_two_updates_equal_a_plain_drqv2_implementation(remedy, tiny_pixel_env):
    """DrQV2.update and the plain update above, from the same weights on the same batches and RNG, with the std
    given as a tensor (0.6, then 0.25): the same losses, mean Q and std; every parameter (encoder, actor, critic,
    target critic) equal after each update, the target moved by tau toward the updated critic. The weights are set
    so that both Q heads give the minimum on some samples and the clamp of noisy actions is active. Also with DrQ's
    remedies (L2 to init, NaP with its LayerNorms, CReLU), whose references are the weights at construction."""
    env = tiny_pixel_env()
    model = tiny_drqv2(env, learning_starts=1000, **REMEDIES[remedy])
    p = model.policy
    initial = {f"{k}.{n}": t.detach().clone() for k in ("encoder", "actor", "critic")
               for n, t in getattr(p, k).named_parameters()}
    model.learn(40)  # fills replay, no update yet
    assert model._n_updates == 0
    with torch.no_grad():  # at init Q1 < Q2 everywhere and |tanh(mu)| < 0.3: make min and clamp matter
        p.actor.policy[-1].weight.mul_(8.0)
        batch = model.replay_buffer.sample(8)
        h = p.encoder(batch.observations)
        q1, q2 = p.critic(h, p.actor(h))
        for critic in (p.critic, p.critic_target):
            critic.q2[-1].bias.add_((q1 - q2).median())
    ref = copy.deepcopy(model.policy)
    nets = (ref.encoder, ref.actor, ref.critic, ref.critic_target)
    optimizers = [torch.optim.Adam(net.parameters(), lr=1e-4) for net in (ref.encoder, ref.critic, ref.actor)]
    seen = []  # the branches the actor losses took
    for k, std in enumerate((0.6, 0.25)):
        batch = model.replay_buffer.sample(8)
        torch.manual_seed(100 + k)
        got = model.update(batch, torch.tensor(std))
        torch.manual_seed(100 + k)
        critic_loss, actor_loss, q, branches = plain_drqv2_update(
            nets, optimizers, batch, std, clip=0.3, tau=0.01, l2_init=model.l2_init, initial=initial, nap=model.nap)
        seen.append(branches)
        torch.testing.assert_close(got["critic_loss"], critic_loss)
        torch.testing.assert_close(got["actor_loss"], actor_loss)
        torch.testing.assert_close(got["q"], q)
        torch.testing.assert_close(got["actor_std"], torch.tensor(std))
        for name, mine, theirs in (("encoder", model.policy.encoder, ref.encoder),
                                   ("actor", model.policy.actor, ref.actor),
                                   ("critic", model.policy.critic, ref.critic),
                                   ("critic_target", model.policy.critic_target, ref.critic_target)):
            for (pname, p), r in zip(mine.named_parameters(), theirs.parameters()):
                torch.testing.assert_close(p, r, msg=f"update {k}: {name}.{pname}")
    assert any(0 < b["q1_below_q2"] < 1 for b in seen) and any(b["clamped"] > 0 for b in seen), seen  # both tested
    env.close()


def test_critic_fau_of_the_training_batch_is_pooled_over_both_heads_hidden_relus(tiny_pixel_env):
    """The critic FAU that train() appends to critic_fau_log (and pop_train_stats averages) equals a hand count on
    the same training batch: active (> 0) entries of both Q heads' two hidden ReLU outputs over all of their
    entries, with the online critic before the step on the augmented observations and the replay actions."""
    env = tiny_pixel_env()
    model = tiny_drqv2(env, learning_starts=1000)
    model.learn(40)
    ref = copy.deepcopy(model.policy)
    torch.manual_seed(7)
    batch = model.replay_buffer.sample(8)  # train() draws the same batch, then the same shifts
    obs = random_shift(batch.observations, 4)
    with torch.no_grad():
        x = torch.cat([ref.critic.trunk(ref.encoder(obs)), batch.actions], dim=-1)
        active, total = 0, 0
        for head in (ref.critic.q1, ref.critic.q2):
            y1 = torch.relu(head[0](x))
            y2 = torch.relu(head[2](y1))
            active += int((y1 > 0).sum() + (y2 > 0).sum())
            total += y1.numel() + y2.numel()
    assert total == 2 * 2 * 8 * 16
    torch.manual_seed(7)
    model.train(gradient_steps=1, batch_size=8)
    assert len(model.critic_fau_log) == 1
    assert model.critic_fau_log[0].item() == pytest.approx(active / total, abs=1e-7)
    assert 0 < active < total
    assert model.pop_train_stats()["critic_fau"] == pytest.approx(active / total, abs=1e-7)
    env.close()


# ---------------------------------------------------------------- acting
def test_first_num_expl_steps_actions_are_uniform_then_the_policy_acts(tiny_pixel_env):
    """Steps 0..29 (num_expl_steps 30) take the action space's uniform draws, in order; steps 30..39 the policy's
    (std 0: tanh(mu), clamped to 1 - 1e-6), although learning_starts (1000) is not reached: DrQ-v2 ties uniform
    actions to num_expl_steps alone."""
    import gymnasium as gym

    seen = []

    class Record(gym.Wrapper):
        def reset(self, **kwargs):
            self.last, info = self.env.reset(**kwargs)
            return self.last, info

        def step(self, action):
            seen.append((self.last.copy(), np.array(action, dtype=np.float32).copy()))
            self.last, *rest = self.env.step(action)
            return (self.last, *rest)

    env = tiny_pixel_env(wrap=Record)
    model = tiny_drqv2(env, learning_starts=1000, num_expl_steps=30, std_schedule=0.0)
    space = copy.deepcopy(model.action_space)  # seeded by the constructor; learn draws from the model's
    model.learn(40)
    assert len(seen) == 40
    uniform = np.stack([space.sample() for _ in range(30)])
    np.testing.assert_allclose(np.stack([a for _, a in seen[:30]]), uniform, atol=1e-6)  # rescaling rounds
    obs = np.stack([o for o, _ in seen[30:]])
    greedy = np.clip(model.predict(obs, deterministic=True)[0], -1 + EPS, 1 - EPS)
    np.testing.assert_allclose(np.stack([a for _, a in seen[30:]]), greedy, atol=1e-6)
    np.testing.assert_allclose(model.replay_buffer.actions[:40].numpy(), np.stack([a for _, a in seen]), atol=1e-6)
    env.close()


def test_actor_std_follows_the_schedule_in_agent_steps(tiny_pixel_env):
    """policy.actor_std is the schedule at the agent step of the last action (59 after learn(60)), then at the step
    of the next round of updates (60): linear(1,0,100) gives 0.41, then 0.40."""
    env = tiny_pixel_env()
    model = tiny_drqv2(env, learning_starts=1000, num_expl_steps=0, std_schedule="linear(1.0,0.0,100)")
    assert model.policy.actor_std.item() == 1.0  # step 0, before any action
    model.learn(60)
    assert model.num_timesteps == 60
    assert model.policy.actor_std.item() == pytest.approx(0.41)
    model.train(gradient_steps=0, batch_size=8)
    assert model.policy.actor_std.item() == pytest.approx(0.40)
    env.close()


# ---------------------------------------------------------------- learn, logs, save/load
@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_pixel_env):
    """DrQV2.learn(300) on 20-step episodes, updates from step 10 (one every 2nd step), std linear(1,0,200), the
    SB3 logger writing progress.csv at each episode end; yields (model, env, rows of progress.csv)."""
    from stable_baselines3.common.logger import configure

    folder = tmp_path_factory.mktemp("drqv2_learn")
    env = tiny_pixel_env(wrap=short_episodes)
    model = tiny_drqv2(env, learning_starts=10, num_expl_steps=10, std_schedule="linear(1.0,0.0,200)")
    model.set_logger(configure(str(folder), ["csv"]))
    model.learn(300, log_interval=1)
    with open(folder / "progress.csv") as f:
        rows = list(csv.DictReader(f))
    yield model, env, rows
    env.close()


def test_learn_runs_and_logs_the_update_statistics(trained):
    """Dumps at every episode end (20, 40, ..., 300) are made before that step's round of updates: the first holds
    the updates at steps 12..18, the k-th those at steps 20(k-1)..20k-2. actor_std is their mean scheduled std."""
    model, _, rows = trained
    assert [int(r["time/total_timesteps"]) for r in rows] == list(range(20, 301, 20))
    assert [int(r["train/n_updates"]) for r in rows] == [4 + 10 * k for k in range(15)]
    assert model._n_updates == 145 and len(model.critic_fau_log) == 145  # at steps 12, 14, ..., 300
    windows = [range(12, 20, 2)] + [range(20 * k - 20, 20 * k, 2) for k in range(2, 16)]
    for row, steps in zip(rows, windows):
        expected = np.mean([max(0.0, 1.0 - t / 200) for t in steps])
        assert float(row["train/actor_std"]) == pytest.approx(expected, abs=1e-6)
    assert float(rows[0]["train/actor_std"]) == pytest.approx(0.925)  # 1 - 15/200
    for key in ("critic_loss", "actor_loss", "q", "critic_fau"):
        assert all(math.isfinite(float(r[f"train/{key}"])) for r in rows), key
    assert all(0 < float(r["train/critic_fau"]) < 1 for r in rows)
    assert "train/ent_coef" not in rows[0]


def test_acting_adds_scheduled_noise_on_tanh_mu(trained):
    """predict(deterministic=True) = tanh(mu(encoder(obs))); predict(deterministic=False) = that + std * N(0, 1),
    clamped to [-1 + 1e-6, 1 - 1e-6], with the scheduled std (0.5 here)."""
    model, env, _ = trained
    obs = env.reset()
    p = model.policy
    with torch.no_grad():
        mu = torch.tanh(p.actor.policy(p.actor.trunk(p.encoder(torch.as_tensor(obs)))))
    np.testing.assert_allclose(model.predict(obs, deterministic=True)[0], mu.numpy(), rtol=1e-6, atol=1e-7)
    p.actor_std.fill_(0.5)
    torch.manual_seed(4)
    z = torch.randn_like(mu)
    torch.manual_seed(4)
    noisy = model.predict(obs, deterministic=False)[0]
    np.testing.assert_allclose(noisy, (mu + 0.5 * z).clamp(-1 + EPS, 1 - EPS).numpy(), rtol=1e-6, atol=1e-7)
    model.set_actor_std()  # back to the schedule


def test_save_load_round_trip_keeps_predictions_and_the_schedule(trained, tmp_path):
    model, env, _ = trained
    obs = env.reset()
    model.save(tmp_path / "drqv2.zip")
    loaded = DrQV2.load(tmp_path / "drqv2.zip", device="cpu")
    assert isinstance(loaded.policy, DrQV2Policy) and loaded.policy.init == "orthogonal"
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], model.predict(obs, deterministic=True)[0])
    torch.manual_seed(9)
    a = model.predict(obs, deterministic=False)[0]
    torch.manual_seed(9)
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=False)[0], a)
    for (k, v), (k2, v2) in zip(model.policy.state_dict().items(), loaded.policy.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    assert loaded.num_timesteps == model.num_timesteps == 300
    assert loaded.std_schedule == "linear(1.0,0.0,200)" and loaded.std_at == model.std_at
    assert (loaded.stddev_clip, loaded.num_expl_steps) == (0.3, 10)
    assert loaded.policy.actor_std.item() == model.policy.actor_std.item() == 0.0  # step 300 > 200: final value
    assert loaded.set_actor_std() == 0.0


def test_invalidate_graphs_drops_update_step_and_acting_graphs(trained):
    """invalidate_graphs (called by interventions that rebuild modules) drops every captured graph. A CPU agent
    never captures: graphs marked as captured stand in for those of a CUDA agent."""
    from plasticrl.agents.accel import GraphedUpdate

    model, _, _ = trained
    saved = model._update_fn, model._step_graph, model.policy.act_graphs
    model._update_fn, model._step_graph = GraphedUpdate(model._update_vector), GraphedUpdate(model._update_vector)
    act = GraphedUpdate(lambda batch: batch[0])
    for graph in (model._update_fn, model._step_graph, act):
        graph.graph = "captured"
    model.policy.act_graphs = {((1, 6, 32, 32), True): act}
    model.invalidate_graphs()
    assert model._update_fn.graph is None and model._step_graph.graph is None and model.policy.act_graphs == {}
    model._update_fn, model._step_graph, model.policy.act_graphs = saved


def test_bad_arguments_are_refused_with_the_fix(tiny_pixel_env):
    env = tiny_pixel_env()
    with pytest.raises(ValueError, match="std_schedule='cos' is not DrQ-v2's syntax"):
        tiny_drqv2(env, std_schedule="cos")
    with pytest.raises(ValueError, match="stddev_clip=-0.3: give a number >= 0"):
        tiny_drqv2(env, stddev_clip=-0.3)
    with pytest.raises(ValueError, match="num_expl_steps=-1: give an int >= 0"):
        tiny_drqv2(env, num_expl_steps=-1)
    with pytest.raises(TypeError, match="no entropy term"):
        tiny_drqv2(env, ent_coef="auto")
    with pytest.raises(ValueError, match="init='xavier': allowed are 'default', 'orthogonal'"):
        tiny_drqv2(env, policy_kwargs={"init": "xavier"})
    env.close()
