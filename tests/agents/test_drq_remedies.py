"""DrQ's plasticity remedies: the policy options hidden_norm (LayerNorm), activation (CReLU) and init (orthogonal),
DrQ(l2_init=...) and DrQ(nap=True) in the update, injected heads in the networks (plain and fused), save/load of the
options and anchors, invalidate_graphs and reinit_layer. Each checked against a hand computation or a plain
re-implementation on the same batch, weights and RNG."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from plasticrl.agents import DrQ
from plasticrl.agents.accel import GraphedUpdate
from plasticrl.agents.drq import Actor, Critic, PixelBatch
from plasticrl.agents.drq.augment import random_shift
from plasticrl.agents.drq.networks import CReLU, mlp

TINY_POLICY = {"feature_dim": 8, "hidden_dim": 16}


def random_batch(model, seed, batch_size=8):
    """A batch of random frames and actions for ``model``'s spaces, rewards in [0, 1], discount 0.99**3."""
    g = torch.Generator().manual_seed(seed)
    shape, adim = model.observation_space.shape, model.action_space.shape[0]
    obs = torch.randint(0, 256, (batch_size, *shape), generator=g, dtype=torch.uint8)
    nxt = torch.randint(0, 256, (batch_size, *shape), generator=g, dtype=torch.uint8)
    act = torch.rand(batch_size, adim, generator=g) * 2 - 1
    return PixelBatch(obs, act, nxt, torch.rand(batch_size, 1, generator=g), torch.full((batch_size, 1), 0.99 ** 3))


def layer_types(seq):
    return [type(m) for m in seq]


# ---------------------------------------------------------------- architecture options


def test_hidden_norm_puts_a_layernorm_after_each_hidden_linear():
    actor = Actor(repr_dim=6, action_dim=2, feature_dim=4, hidden_dim=8, hidden_norm="layernorm")
    critic = Critic(repr_dim=6, action_dim=2, feature_dim=4, hidden_dim=8, hidden_norm="layernorm")
    expected = [nn.Linear, nn.LayerNorm, nn.ReLU, nn.Linear, nn.LayerNorm, nn.ReLU, nn.Linear]
    for head in (actor.policy, critic.q1, critic.q2):
        assert layer_types(head) == expected
        assert head[1].normalized_shape == head[4].normalized_shape == (8,)
    # the forward is Linear -> LayerNorm -> ReLU per hidden layer (hand-written here)
    torch.manual_seed(0)
    h, a = torch.randn(5, 6), torch.rand(5, 2)
    q = critic.q1
    y = critic._features(h, a)
    for lin in (q[0], q[3]):
        y = F.relu(F.layer_norm(lin(y), (8,)))  # LayerNorm's init: gain 1, offset 0
    torch.testing.assert_close(critic(h, a)[0], q[6](y))


def test_crelu_concatenates_the_positive_and_negative_parts():
    x = torch.tensor([[1.0, -2.0, 0.0], [-0.5, 3.0, 4.0]])
    assert torch.equal(CReLU()(x), torch.tensor([[1.0, 0.0, 0.0, 0.0, 2.0, 0.0], [0.0, 3.0, 4.0, 0.5, 0.0, 0.0]]))


def test_crelu_keeps_the_linear_width_and_doubles_the_next_layers_input():
    net = mlp(in_dim=5, hidden_dim=8, out_dim=3, activation="crelu")
    assert layer_types(net) == [nn.Linear, CReLU, nn.Linear, CReLU, nn.Linear]
    assert [(m.in_features, m.out_features) for m in net if isinstance(m, nn.Linear)] == [(5, 8), (16, 8), (16, 3)]
    both = mlp(in_dim=5, hidden_dim=8, out_dim=3, hidden_norm="layernorm", activation="crelu")
    assert layer_types(both) == [nn.Linear, nn.LayerNorm, CReLU, nn.Linear, nn.LayerNorm, CReLU, nn.Linear]
    assert both[3].in_features == 16 and both[1].normalized_shape == (8,)


def test_critic_fau_counts_every_crelu_output():
    """Of each CReLU pair exactly one output is > 0 (pre-activations are never exactly 0 here): FAU is 1/2 exactly,
    over 2 heads x 2 layers x B x 2 hidden outputs."""
    torch.manual_seed(0)
    critic = Critic(repr_dim=6, action_dim=2, feature_dim=4, hidden_dim=8, activation="crelu")
    h, a = torch.randn(7, 6), torch.rand(7, 2)
    q1, q2, fau = critic.forward_with_fau(h, a)
    assert float(fau) == 0.5
    plain_q1, plain_q2 = critic(h, a)
    assert torch.equal(q1, plain_q1) and torch.equal(q2, plain_q2)
    relu = Critic(repr_dim=6, action_dim=2, feature_dim=4, hidden_dim=8)
    assert float(relu.forward_with_fau(h, a)[2]) != 0.5  # a ReLU critic's FAU is not 1/2 by construction


def test_fused_heads_fall_back_for_layernorm_and_crelu_heads():
    torch.manual_seed(0)
    h, a = torch.randn(4, 6), torch.rand(4, 2)
    for options in ({"hidden_norm": "layernorm"}, {"activation": "crelu"}):
        critic = Critic(repr_dim=6, action_dim=2, feature_dim=4, hidden_dim=8, **options)
        plain = critic(h, a)
        critic.fused_heads = True
        assert not critic._fused()
        for got, ref in zip(critic.forward_with_fau(h, a), (*plain, None)):
            if ref is not None:
                assert torch.equal(got, ref)
    critic = Critic(repr_dim=6, action_dim=2, feature_dim=4, hidden_dim=8)
    critic.fused_heads = True
    assert critic._fused()  # the plain Linear/ReLU heads still fuse


def is_orthogonal(w, gain=1.0):
    """W W^T = gain^2 I (rows orthonormal) when out <= in, else W^T W = gain^2 I, for W of shape (out, in...)."""
    w = w.detach().reshape(w.shape[0], -1)
    gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    return torch.allclose(gram, gain ** 2 * torch.eye(gram.shape[0]), atol=1e-5)


def test_orthogonal_init_of_encoder_actor_and_critic(tiny_pixel_env, tiny_drq):
    env = tiny_pixel_env()
    model = tiny_drq(env, policy_kwargs={**TINY_POLICY, "init": "orthogonal"})
    policy = model.policy
    convs = [m for m in policy.encoder.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for part in (policy.actor, policy.critic) for m in part.modules() if isinstance(m, nn.Linear)]
    assert len(convs) == 4 and len(linears) == 2 * 1 + 3 * 3  # trunks, actor MLP, two Q heads
    assert all(is_orthogonal(c.weight, gain=2 ** 0.5) for c in convs)  # ReLU gain for the convolutions
    assert all(is_orthogonal(m.weight) for m in linears)
    assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in convs + linears)
    for norm in (policy.actor.trunk[1], policy.critic.trunk[1]):  # LayerNorms keep their own init
        assert torch.equal(norm.weight, torch.ones(8)) and torch.equal(norm.bias, torch.zeros(8))
    for p, t in zip(policy.critic.parameters(), policy.critic_target.parameters()):
        assert torch.equal(p, t)  # the target critic is a copy after init
    default = tiny_drq(env).policy
    assert not any(is_orthogonal(m.weight) for m in default.critic.modules() if isinstance(m, nn.Linear))
    assert not any(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in default.critic.q1 if isinstance(m, nn.Linear))
    env.close()


def test_defaults_keep_the_networks_and_weights(tiny_pixel_env, tiny_drq):
    """Explicit default options build the same policy, weight for weight, with no extra buffers."""
    env = tiny_pixel_env()
    plain = tiny_drq(env)
    explicit = tiny_drq(env, l2_init=0.0, nap=False, policy_kwargs={**TINY_POLICY, "hidden_norm": "none",
                                                                    "activation": "relu", "init": "default"})
    assert list(plain.policy.state_dict()) == list(explicit.policy.state_dict())
    for (name, v), w in zip(plain.policy.state_dict().items(), explicit.policy.state_dict().values()):
        assert torch.equal(v, w), name
    assert not hasattr(plain.policy, "l2_anchors") and not hasattr(plain.policy, "nap_norms")
    assert layer_types(plain.critic.q1) == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    env.close()


def test_bad_options_are_refused_naming_the_allowed_values(tiny_pixel_env, tiny_drq):
    env = tiny_pixel_env()
    cases = [({"policy_kwargs": {**TINY_POLICY, "hidden_norm": "batchnorm"}},
              "hidden_norm='batchnorm': allowed are 'none', 'layernorm'"),
             ({"policy_kwargs": {**TINY_POLICY, "activation": "gelu"}},
              "activation='gelu': allowed are 'relu', 'crelu'"),
             ({"policy_kwargs": {**TINY_POLICY, "init": "xavier"}},
              "init='xavier': allowed are 'default', 'orthogonal'"),
             ({"l2_init": -0.1}, r"l2_init=-0.1: give a coefficient >= 0"),
             ({"nap": True, "policy_kwargs": {**TINY_POLICY, "hidden_norm": "none"}},
              "nap=True puts a LayerNorm before each hidden activation.*hidden_norm='none'")]
    for options, message in cases:
        with pytest.raises(ValueError, match=message):
            tiny_drq(env, **options)
    with pytest.raises(TypeError, match="nap='yes': give True or False"):
        tiny_drq(env, nap="yes")
    env.close()


def test_reinit_layer_follows_the_agents_init(tiny_pixel_env, tiny_drq):
    env = tiny_pixel_env()
    orthogonal = tiny_drq(env, policy_kwargs={**TINY_POLICY, "init": "orthogonal"})
    layer = nn.Linear(5, 3)
    orthogonal.reinit_layer(layer)
    assert is_orthogonal(layer.weight) and torch.equal(layer.bias, torch.zeros(3))
    layer, default = nn.Linear(5, 3), tiny_drq(env)
    torch.manual_seed(0)
    default.reinit_layer(layer)
    torch.manual_seed(0)
    ref = nn.Linear(5, 3)  # PyTorch's init from the same RNG state: reset_parameters()
    assert torch.equal(layer.weight, ref.weight) and torch.equal(layer.bias, ref.bias)
    env.close()


# ---------------------------------------------------------------- injected heads


class StandInInjected(nn.Module):
    """A minimal plasticity-injected head: ``old`` and ``new_frozen`` frozen, ``new`` learning; forward
    ``old(x) + (new(x) - new_frozen(x))`` (the grouping of plasticrl.interventions.InjectedHead, exact at injection);
    ``terms()`` as the networks expect them."""

    def __init__(self, old, new, new_frozen=None):
        super().__init__()
        self.old = old.requires_grad_(False)
        self.new = new
        self.new_frozen = (new_frozen if new_frozen is not None else copy.deepcopy(new)).requires_grad_(False)

    def forward(self, x):
        return self.old(x) + (self.new(x) - self.new_frozen(x))

    def terms(self):
        return [(1.0, self.old), (1.0, self.new), (-1.0, self.new_frozen)]


def inject(head, **options):
    """``head`` wrapped with a fresh head of its shape whose learning copy has moved away from its frozen copy (as
    after some training), so that the new terms do not cancel."""
    dims = (head[0].in_features, head[0].out_features, head[-1].out_features)
    injected = StandInInjected(head, mlp(*dims, **options))
    with torch.no_grad():
        for p in injected.new.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return injected


def relu_counts(module):
    """Forward hooks on every ReLU in ``module``: a list that collects (active, total) per ReLU call."""
    seen = []
    handles = [m.register_forward_hook(lambda m, i, o: seen.append(((o > 0).sum().item(), o.numel())))
               for m in module.modules() if isinstance(m, nn.ReLU)]
    return seen, handles


def test_critic_runs_injected_heads_as_their_forward():
    torch.manual_seed(0)
    critic = Critic(repr_dim=6, action_dim=2, feature_dim=4, hidden_dim=8)
    critic.q1, critic.q2 = inject(critic.q1), inject(critic.q2)
    h, a = torch.randn(9, 6), torch.rand(9, 2) * 2 - 1
    x = critic._features(h, a)
    ref1, ref2 = critic.q1(x), critic.q2(x)
    seen, handles = relu_counts(critic)  # hand count of every term's hidden ReLU outputs, by hooks
    critic.q1(x), critic.q2(x)
    for handle in handles:
        handle.remove()
    assert len(seen) == 2 * 3 * 2  # heads x terms x hidden layers
    ref_fau = sum(active for active, _ in seen) / sum(n for _, n in seen)
    q1, q2 = critic(h, a)
    f1, f2, fau = critic.forward_with_fau(h, a)
    for got, ref in ((q1, ref1), (q2, ref2), (f1, ref1), (f2, ref2)):
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)
    assert 0 < ref_fau < 1 and float(fau) == pytest.approx(ref_fau, abs=1e-7)


def test_injected_head_output_is_exactly_the_old_head_at_injection():
    torch.manual_seed(0)
    critic = Critic(repr_dim=6, action_dim=2, feature_dim=4, hidden_dim=8)
    h, a = torch.randn(9, 6), torch.rand(9, 2)
    before = critic(h, a)
    new = mlp(6, 8, 1)
    with torch.no_grad():  # a large new head: (old + new) - new would lose old's low bits, old + (new - new) not
        new[-1].weight.mul_(1e3)
        new[-1].bias.add_(1e3)
    critic.q1 = StandInInjected(critic.q1, new)  # new and new_frozen equal: they cancel exactly
    after = critic(h, a)
    assert torch.equal(after[0], before[0]) and torch.equal(after[1], before[1])


def test_fused_path_on_injected_heads_equals_the_plain_path():
    torch.manual_seed(0)
    critic = Critic(repr_dim=6, action_dim=2, feature_dim=4, hidden_dim=8)
    critic.q1, critic.q2 = inject(critic.q1), inject(critic.q2)
    h, a = torch.randn(16, 6), torch.rand(16, 2) * 2 - 1

    def outputs_and_grads():
        critic.zero_grad(set_to_none=True)
        q1, q2, fau = critic.forward_with_fau(h, a)
        aq1, aq2 = critic(h, a)
        (q1 - 2 * q2 + (aq1 * aq2).pow(2)).sum().backward()
        return (q1, q2, aq1, aq2, fau), {n: p.grad for n, p in critic.named_parameters()}

    assert not critic._fused()
    ref, ref_grads = outputs_and_grads()
    critic.fused_heads = True
    assert critic._fused()  # every term a plain Linear/ReLU MLP of the same shapes: fused
    got, grads = outputs_and_grads()
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-6)
    for name, g in grads.items():
        if ref_grads[name] is None:
            assert g is None and ("old" in name or "new_frozen" in name), name  # frozen terms get no gradient
        else:
            torch.testing.assert_close(g, ref_grads[name], rtol=0, atol=1e-5, msg=name)
    assert ref_grads["q1.new.0.weight"].abs().sum() > 0
    critic.q2 = inject(critic.q2.old, hidden_norm="layernorm")  # terms of other shapes/types: plain path
    assert not critic._fused()


def test_actor_runs_an_injected_policy_head():
    torch.manual_seed(0)
    actor = Actor(repr_dim=6, action_dim=2, feature_dim=4, hidden_dim=8)
    actor.policy = inject(actor.policy)
    h = torch.randn(5, 6)
    mu, log_std = actor(h)
    ref_mu, raw = actor.policy(actor.trunk(h)).chunk(2, dim=-1)  # by hand: the head's own forward, then the squash
    lo, hi = actor.log_std_bounds
    torch.testing.assert_close(mu, ref_mu, rtol=0, atol=1e-6)
    torch.testing.assert_close(log_std, lo + 0.5 * (hi - lo) * (torch.tanh(raw) + 1), rtol=0, atol=1e-6)


def test_drq_update_with_injected_heads_fused_equals_plain(tiny_pixel_env, tiny_drq):
    env = tiny_pixel_env()
    a, b = tiny_drq(env), tiny_drq(env, fused_q_heads=True)
    for model in (a, b):
        torch.manual_seed(1)  # the same fresh heads in both
        critic, target = model.critic, model.critic_target
        for name in ("q1", "q2"):
            online = inject(getattr(critic, name))
            setattr(critic, name, online)
            target_head = StandInInjected(getattr(target, name), copy.deepcopy(online.new),
                                          copy.deepcopy(online.new_frozen))
            setattr(target, name, target_head.requires_grad_(False))
        model.invalidate_graphs()
    assert not a.critic._fused() and b.critic._fused() and b.critic_target._fused()
    batch = random_batch(a, 0)
    torch.manual_seed(3)
    sa = a.update(batch)
    torch.manual_seed(3)
    sb = b.update(batch)
    for key in sa:
        torch.testing.assert_close(sb[key], sa[key], rtol=0, atol=1e-5, msg=key)
    assert 0 < float(sa["critic_fau"]) < 1
    for (name, pa), pb in zip(a.policy.named_parameters(), b.policy.parameters()):
        torch.testing.assert_close(pb, pa, rtol=0, atol=1e-5, msg=name)
    env.close()


# ---------------------------------------------------------------- l2_init and NaP in the update


def reference_update(model, ref, batch, log_alpha, critic_extra=None, actor_extra=None, after_critic=None,
                     after_actor=None):
    """A plain SAC step of ``ref`` (a deep copy of ``model.policy`` before the update) on ``batch``, with the RNG as
    DrQ.update draws it; ``*_extra(ref)`` adds to a loss, ``after_*(ref)`` runs after an optimizer step. Returns the
    critic and actor losses."""
    obs, next_obs = random_shift(batch.observations, 4), random_shift(batch.next_observations, 4)
    alpha = log_alpha.detach().exp()
    with torch.no_grad():
        hn = ref.encoder(next_obs)
        a2, lp2 = ref.actor.action_log_prob(hn)
        target = batch.rewards + batch.discounts * (torch.min(*ref.critic_target(hn, a2)) - alpha * lp2)
    h = ref.encoder(obs)
    q1, q2 = ref.critic(h, batch.actions)
    critic_loss = F.mse_loss(q1, target) + F.mse_loss(q2, target)
    if critic_extra is not None:
        critic_loss = critic_loss + critic_extra(ref)
    ref.critic.optimizer.zero_grad()
    critic_loss.backward()
    ref.critic.optimizer.step()
    if after_critic is not None:
        after_critic(ref)
    a, lp = ref.actor.action_log_prob(h.detach())
    ref.critic.requires_grad_(False)
    actor_loss = (alpha * lp - torch.min(*ref.critic(h.detach(), a))).mean()
    ref.critic.requires_grad_(True)
    if actor_extra is not None:
        actor_loss = actor_loss + actor_extra(ref)
    ref.actor.optimizer.zero_grad()
    actor_loss.backward()
    ref.actor.optimizer.step()
    if after_actor is not None:
        after_actor(ref)
    with torch.no_grad():
        for t, p in zip(ref.critic_target.parameters(), ref.critic.parameters()):
            t.lerp_(p, model.tau)
    return critic_loss.detach(), actor_loss.detach()


def warm_up(model, n=4):
    """A few updates on random batches, so that the weights have moved away from their initial values."""
    for i in range(n):
        model.update(random_batch(model, 100 + i))


def assert_same_policy(model, ref):
    for (name, p), q in zip(model.policy.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def test_update_with_l2_init_adds_the_penalty_to_both_losses(tiny_pixel_env, tiny_drq):
    env = tiny_pixel_env()
    model = tiny_drq(env, l2_init=0.5, learning_rate=1e-3)
    initial = {name: p.detach().clone() for name, p in model.policy.named_parameters()}
    warm_up(model)
    for name, anchor in zip(model.policy.l2_anchors.names, model.policy.l2_anchors.tensors()):
        assert torch.equal(anchor, initial[name]), name  # the anchors are the initial weights, not the current ones
    assert len(model.policy.l2_anchors.names) == len([n for n in initial if not n.startswith("critic_target.")])

    def penalty(ref, prefixes):  # sum ||theta - theta_0||^2, by hand from the initial copy
        return sum(((p - initial[name]) ** 2).sum() for name, p in ref.named_parameters()
                   if name.split(".")[0] in prefixes)

    ref = copy.deepcopy(model.policy)
    with torch.no_grad():
        critic_penalty, actor_penalty = float(penalty(ref, ("encoder", "critic"))), float(penalty(ref, ("actor",)))
    assert critic_penalty > 1e-3 and actor_penalty > 1e-4  # the weights moved: the penalty matters here
    log_alpha = model.log_ent_coef.detach().clone()
    batch = random_batch(model, 0)
    torch.manual_seed(123)
    got = model.update(batch)
    torch.manual_seed(123)
    critic_loss, actor_loss = reference_update(model, ref, batch, log_alpha,
                                               critic_extra=lambda r: 0.5 * penalty(r, ("encoder", "critic")),
                                               actor_extra=lambda r: 0.5 * penalty(r, ("actor",)))
    torch.testing.assert_close(got["critic_loss"], critic_loss)
    torch.testing.assert_close(got["actor_loss"], actor_loss)
    assert_same_policy(model, ref)
    env.close()


def test_update_with_nap_is_adam_then_the_projection_to_the_initial_norms(tiny_pixel_env, tiny_drq):
    env = tiny_pixel_env()
    model = tiny_drq(env, nap=True, learning_rate=1e-3)
    assert model.policy_kwargs["hidden_norm"] == "layernorm"
    assert layer_types(model.critic.q1) == [nn.Linear, nn.LayerNorm, nn.ReLU, nn.Linear, nn.LayerNorm, nn.ReLU,
                                            nn.Linear]
    weights = {f"{part}.{name}": m.weight for part in ("encoder", "critic", "actor")
               for name, m in getattr(model.policy, part).named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    assert len(weights) == 4 + 1 + 3 + 3 + 1 + 3  # convs; critic trunk and two heads; actor trunk and MLP
    initial_norms = {name: float(w.detach().norm()) for name, w in weights.items()}
    warm_up(model)
    for name, w in weights.items():
        assert float(w.detach().norm()) == pytest.approx(initial_norms[name], rel=1e-5), name

    def project(prefixes):
        def run(ref):
            with torch.no_grad():
                for part in prefixes:
                    for name, m in getattr(ref, part).named_modules():
                        if isinstance(m, (nn.Linear, nn.Conv2d)):
                            m.weight.mul_(initial_norms[f"{part}.{name}"] / m.weight.norm())
        return run

    moved = []

    def record_then_project(prefixes):
        def run(ref):  # Adam alone moves the norms: the projection does something
            moved.extend(abs(float(m.weight.detach().norm()) - initial_norms[f"{part}.{name}"]) for part in prefixes
                         for name, m in getattr(ref, part).named_modules() if isinstance(m, (nn.Linear, nn.Conv2d)))
            project(prefixes)(ref)
        return run

    ref = copy.deepcopy(model.policy)
    log_alpha = model.log_ent_coef.detach().clone()
    batch = random_batch(model, 0)
    torch.manual_seed(123)
    got = model.update(batch)
    torch.manual_seed(123)
    critic_loss, actor_loss = reference_update(model, ref, batch, log_alpha,
                                               after_critic=record_then_project(("encoder", "critic")),
                                               after_actor=record_then_project(("actor",)))
    assert max(moved) > 1e-4
    torch.testing.assert_close(got["critic_loss"], critic_loss)
    torch.testing.assert_close(got["actor_loss"], actor_loss)
    assert_same_policy(model, ref)
    for name, w in weights.items():
        assert float(w.detach().norm()) == pytest.approx(initial_norms[name], rel=1e-5), name
    # biases and LayerNorm gains are left free: they moved
    assert not torch.equal(model.critic.q1[1].weight, torch.ones(16))
    env.close()


# ---------------------------------------------------------------- save/load, graphs


def test_save_load_keeps_the_options_and_the_anchors(tmp_path, tiny_pixel_env, tiny_drq):
    env = tiny_pixel_env()
    options = {"l2_init": 0.5, "nap": True, "learning_rate": 1e-3,
               "policy_kwargs": {**TINY_POLICY, "activation": "crelu", "init": "orthogonal"}}
    model = tiny_drq(env, **options)
    initial = {name: p.detach().clone() for name, p in model.policy.named_parameters()}
    initial_norms = {f"{part}.{name}.weight": m.weight.detach().norm() for part in ("encoder", "critic", "actor")
                     for name, m in getattr(model.policy, part).named_modules()
                     if isinstance(m, (nn.Linear, nn.Conv2d))}
    warm_up(model)
    model.save(tmp_path / "drq.zip")
    loaded = DrQ.load(tmp_path / "drq.zip", device="cpu", seed=1)  # another seed: another fresh init before loading
    fresh = tiny_drq(env, **{**options, "seed": 1})  # what the anchors would be without loading them
    assert loaded.l2_init == 0.5 and loaded.nap
    p = loaded.policy
    assert (p.hidden_norm, p.activation, p.init) == ("layernorm", "crelu", "orthogonal")
    assert layer_types(loaded.critic.q2) == [nn.Linear, nn.LayerNorm, CReLU, nn.Linear, nn.LayerNorm, CReLU, nn.Linear]
    fresh_params = dict(fresh.policy.named_parameters())
    for name, anchor in zip(p.l2_anchors.names, p.l2_anchors.tensors()):
        assert torch.equal(anchor, initial[name]), name
        if initial[name].unique().numel() > 1:  # not a constant init (zero biases, LayerNorm's ones): seed-dependent
            assert not torch.equal(anchor, fresh_params[name]), name
    assert p.nap_norms.names == list(initial_norms)
    for name, norm in zip(p.nap_norms.names, p.nap_norms.tensors()):
        assert torch.equal(norm, initial_norms[name]), name
    for (name, v), w in zip(model.policy.state_dict().items(), p.state_dict().values()):
        assert torch.equal(v, w), name
    stats = loaded.update(random_batch(loaded, 0))  # a loaded agent trains with its anchors
    assert all(torch.isfinite(v) for v in stats.values())
    env.close()


def test_invalidate_graphs_drops_update_step_and_acting_graphs(tiny_pixel_env, tiny_drq):
    env = tiny_pixel_env()
    model = tiny_drq(env)
    assert model.policy.act_graphs is None
    model.invalidate_graphs()  # on the CPU nothing was captured: a no-op
    assert model.policy.act_graphs is None and model._update_fn == model._update_vector
    # as a CUDA DrQ after its first updates and actions
    model._update_fn, model._step_graph = GraphedUpdate(model._update_vector), GraphedUpdate(model._update_vector)
    model._update_fn.graph = model._step_graph.graph = "captured"
    model.policy.act_graphs = {((1, 6, 32, 32), True): GraphedUpdate(lambda batch: batch[0])}
    model.invalidate_graphs()
    assert model._update_fn.graph is None and model._step_graph.graph is None
    assert model.policy.act_graphs == {}
    env.close()
