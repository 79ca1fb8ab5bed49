"""Tests for plasticrl.interventions: Reset, ShrinkPerturb, Inject and the seam's follow-ups, against hand
computations on a 3-4-4-2 MLP with set weights, and on DrQ's real Critic/Actor/Encoder."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from plasticrl.agents.drq.networks import Actor, Critic, Encoder
from plasticrl.agents.init import layer_init_fn
from plasticrl.interventions import (
    Inject,
    InjectedHead,
    Outcome,
    PlasticityInjection,
    Reset,
    ShrinkPerturb,
    Target,
    reset_optimizer_state,
    select_layers,
    sync_targets,
)

# ----------------------------------------------------------------------------------------------------- helpers


def mlp() -> nn.Sequential:
    """3-4-4-2, Linear-ReLU-Linear-ReLU-Linear, weights set to distinct values (tensor k: linspace * (k + 1)/8)."""
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        for k, p in enumerate(net.parameters()):
            p.copy_(torch.linspace(-1.0, 1.0, p.numel()).reshape(p.shape) * (k + 1) / 8)
    return net


def adam_step(net: nn.Module, optimizer: torch.optim.Optimizer, n: int = 1) -> None:
    """n real Adam steps on a fixed regression loss, so that every parameter has state."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, generator=g)
    for _ in range(n):
        optimizer.zero_grad(set_to_none=True)
        net(x).pow(2).sum().backward()
        optimizer.step()


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def changed(before: dict[str, torch.Tensor], module: nn.Module) -> set[str]:
    return {n for n, p in module.named_parameters() if not torch.equal(before[n], p)}


def adam_state(optimizer: torch.optim.Optimizer, p: nn.Parameter) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in optimizer.state[p].items()}


def constant_init(module: nn.Module) -> None:
    """A hand-checkable init: weights 1, biases -1."""
    if isinstance(module, nn.Linear):
        module.weight.data.fill_(1.0)
        module.bias.data.fill_(-1.0)


def tiny_critic() -> Critic:
    torch.manual_seed(0)
    return Critic(repr_dim=8, action_dim=2, feature_dim=4, hidden_dim=16)


# ------------------------------------------------------------------------------------------------------- Reset


def test_reset_last1_writes_a_seeded_fresh_draw_into_the_last_layer_only():
    net = mlp()
    before = snapshot(net)
    torch.manual_seed(7)
    expected = copy.deepcopy(net[4])
    expected.reset_parameters()  # the draw Reset makes from the global RNG
    ids = {n: (id(p), p.data_ptr()) for n, p in net.named_parameters()}
    torch.manual_seed(7)
    outcome = Reset("last1").apply(Target(net))
    assert torch.equal(net[4].weight, expected.weight) and torch.equal(net[4].bias, expected.bias)
    assert changed(before, net) == {"4.weight", "4.bias"}
    assert {n: (id(p), p.data_ptr()) for n, p in net.named_parameters()} == ids  # in place
    assert set(outcome.changes) == {net[4].weight, net[4].bias}
    assert all(mask is None for mask in outcome.changes.values())
    assert outcome.log == {"layers_reset": 1.0, "params_reset": 10.0}
    assert outcome.rebuilt is False


def test_reset_zeroes_optimizer_state_of_reset_tensors_and_leaves_the_rest():
    net = mlp()
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    adam_step(net, optimizer, n=3)
    kept = {n: adam_state(optimizer, p) for n, p in net.named_parameters()}
    assert float(kept["4.weight"]["step"]) == 3.0 and kept["4.weight"]["exp_avg"].abs().sum() > 0
    Reset("last1").apply(Target(net, optimizers=[optimizer]))
    for name, p in net.named_parameters():
        state = optimizer.state[p]
        if name.startswith("4."):
            assert torch.equal(state["exp_avg"], torch.zeros_like(p))
            assert torch.equal(state["exp_avg_sq"], torch.zeros_like(p))
            assert float(state["step"]) == 0.0  # bias correction starts again
        else:
            assert all(torch.equal(state[k], kept[name][k]) for k in ("exp_avg", "exp_avg_sq", "step"))


def test_reset_syncs_the_target_copies_of_reset_layers_only():
    net = mlp()
    target_net = copy.deepcopy(net)
    with torch.no_grad():
        for p in target_net.parameters():
            p.add_(0.5)  # a lagging target, different from the online weights
    target_before = snapshot(target_net)
    Reset("last1").apply(Target(net, target_pairs=[(net, target_net)]))
    assert torch.equal(target_net[4].weight, net[4].weight) and torch.equal(target_net[4].bias, net[4].bias)
    assert changed(target_before, target_net) == {"4.weight", "4.bias"}


def test_reset_with_init_fn_uses_the_agents_orthogonal_init():
    net = mlp()
    Reset("all").apply(Target(net, init_fn=layer_init_fn("orthogonal")))
    for i in (0, 2, 4):
        w = net[i].weight
        rows_orthonormal = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
        torch.testing.assert_close(rows_orthonormal, torch.eye(min(w.shape)), atol=1e-5, rtol=0)
        assert torch.equal(net[i].bias, torch.zeros_like(net[i].bias))


def test_reset_globs_and_list_groups():
    a, b = mlp(), mlp()
    assert [n for n, _ in select_layers([a, b], "last1")] == ["0.4", "1.4"]
    assert [n for n, _ in select_layers([a, b], ["1.4"])] == ["1.4"]  # qualified by the member
    assert [n for n, _ in select_layers({"x": a}, ["2", "4"])] == ["x.2", "x.4"]
    before_a, before_b = snapshot(a), snapshot(b)
    Reset(["1.4"]).apply(Target([a, b]))
    assert changed(before_a, a) == set() and changed(before_b, b) == {"4.weight", "4.bias"}
    shared = mlp()
    assert len(select_layers([shared, shared], "all")) == 3  # a layer shared by members counts once


def test_reset_on_drq_critic_last2_touches_exactly_q1_2_q1_4_q2_2_q2_4():
    critic = tiny_critic()
    target_critic = copy.deepcopy(critic).requires_grad_(False)
    optimizer = torch.optim.Adam(critic.parameters(), lr=1e-3)
    h, act = torch.randn(6, 8), torch.rand(6, 2) * 2 - 1
    q1, q2 = critic(h, act)
    (q1 + q2).pow(2).mean().backward()
    optimizer.step()
    before, target_before = snapshot(critic), snapshot(target_critic)  # the target lags one step behind
    outcome = Reset("last2").apply(Target(critic, [optimizer], [(critic, target_critic)],
                                          init_fn=layer_init_fn("orthogonal")))
    reset = {f"{m}.{i}.{k}" for m in ("q1", "q2") for i in (2, 4) for k in ("weight", "bias")}
    assert changed(before, critic) == reset
    assert outcome.log["layers_reset"] == 4.0
    assert outcome.log["params_reset"] == 2 * (16 * 16 + 16 + 16 + 1)
    online = dict(critic.named_parameters())
    assert changed(target_before, target_critic) == reset
    assert all(torch.equal(t, online[name]) for name, t in target_critic.named_parameters() if name in reset)
    for name, p in critic.named_parameters():
        assert (float(optimizer.state[p]["step"]) == 0.0) == (name in reset)


def test_reset_last2_on_drq_actor_and_encoder():
    torch.manual_seed(0)
    actor = Actor(repr_dim=8, action_dim=2, feature_dim=4, hidden_dim=16)
    assert [n for n, _ in select_layers(actor, "last2")] == ["policy.2", "policy.4"]
    encoder = Encoder((3, 16, 16), channels=4)  # no head Sequential: the member's last two weight layers
    assert [n for n, _ in select_layers(encoder, "last2")] == ["convnet.4", "convnet.6"]
    critic = tiny_critic()
    assert [n for n, _ in select_layers(critic, ["q1.4", "q2.*"])] == ["q1.4", "q2.0", "q2.2", "q2.4"]
    assert [n for n, _ in select_layers(critic, ["q2", "q1.4"])] == ["q1.4", "q2.0", "q2.2", "q2.4"]  # module order
    assert [n for n, _ in select_layers(critic, "all")][:2] == ["trunk.0", "trunk.1"]  # LayerNorm included


def test_reset_all_restores_layernorm_and_buffers():
    critic = tiny_critic()
    with torch.no_grad():
        critic.trunk[1].weight.fill_(3.0)
        critic.trunk[1].bias.fill_(2.0)
    Reset(["trunk.1"]).apply(Target(critic))
    assert torch.equal(critic.trunk[1].weight, torch.ones(4)) and torch.equal(critic.trunk[1].bias, torch.zeros(4))
    bn = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    bn.train()
    bn(torch.randn(8, 3) * 5 + 3)
    assert bn[1].running_mean.abs().sum() > 0
    Reset(["1"]).apply(Target(bn))
    assert torch.equal(bn[1].running_mean, torch.zeros(4)) and torch.equal(bn[1].running_var, torch.ones(4))


@pytest.mark.parametrize("layers", ["first2", "last0", "lastx", "", [], [""], [3]])
def test_reset_rejects_bad_layer_specs(layers):
    with pytest.raises(ValueError, match="layers"):
        Reset(layers)


def test_reset_names_the_available_layers_when_a_glob_matches_nothing():
    critic = tiny_critic()
    with pytest.raises(ValueError, match=r"'q3\.\*' matches no layer.*available: trunk\.0, trunk\.1, q1\.0"):
        Reset(["q1.4", "q3.*"]).apply(Target(critic))
    with pytest.raises(ValueError, match="matches no layer"):
        Reset(["q1.1"]).apply(Target(critic))  # a ReLU: no parameters
    with pytest.raises(ValueError, match="selects no layer"):
        Reset("last2").apply(Target(nn.Sequential(nn.ReLU())))


def test_reset_of_a_layer_without_reset_parameters_asks_for_init_fn():
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.gain = nn.Parameter(torch.ones(3))

    with pytest.raises(ValueError, match="no reset_parameters.*init_fn"):
        Reset("all").apply(Target(nn.Sequential(Scale())))


# ------------------------------------------------------------------------------------- the seam's follow-ups


def test_masked_changes_zero_only_their_entries_moments_and_sync_only_them():
    net = mlp()
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    adam_step(net, optimizer, n=2)
    target_net = copy.deepcopy(net)
    with torch.no_grad():
        target_net[2].weight.add_(1.0)
        net[2].weight[1].fill_(9.0)  # a mechanism rewrote unit 1's incoming weights
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[1] = True
    kept = adam_state(optimizer, net[2].weight)
    target_kept = target_net[2].weight.detach().clone()
    reset_optimizer_state([optimizer], {net[2].weight: mask})
    sync_targets([(net, target_net)], {net[2].weight: mask})
    state = optimizer.state[net[2].weight]
    for k in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(state[k][1], torch.zeros(4)) and torch.equal(state[k][~mask], kept[k][~mask])
    assert torch.equal(state["step"], kept["step"])  # a partial change keeps the step
    assert torch.equal(target_net[2].weight[1], torch.full((4,), 9.0))
    assert torch.equal(target_net[2].weight[~mask], target_kept[~mask])


# --------------------------------------------------------------------------------------------- ShrinkPerturb


def test_shrink_perturb_fresh_is_the_hand_formula_with_a_constant_init():
    net = mlp()
    before = snapshot(net)
    outcome = ShrinkPerturb(alpha=0.25).apply(Target(net, init_fn=constant_init))
    for name, p in net.named_parameters():
        fresh = 1.0 if name.endswith("weight") else -1.0
        assert torch.equal(p, 0.25 * before[name] + 0.75 * fresh), name  # 0.25 w is exact: one rounding each
    assert outcome.log == {"layers_shrunk": 3.0, "params_shrunk": 16.0 + 20.0 + 10.0, "alpha": 0.25}
    assert all(mask is None for mask in outcome.changes.values()) and len(outcome.changes) == 6


def test_shrink_perturb_fresh_matches_a_seeded_draw_recomputed_here():
    net = mlp()
    before = snapshot(net)
    torch.manual_seed(11)
    fresh = {}
    for i in (0, 2, 4):  # module order, one draw per layer, as ShrinkPerturb makes them
        layer = copy.deepcopy(net[i])
        layer.reset_parameters()
        fresh[f"{i}.weight"], fresh[f"{i}.bias"] = layer.weight.detach(), layer.bias.detach()
    torch.manual_seed(11)
    ShrinkPerturb(alpha=0.5).apply(Target(net))
    for name, p in net.named_parameters():
        torch.testing.assert_close(p, 0.5 * before[name] + 0.5 * fresh[name], rtol=0, atol=1e-7)


def test_shrink_perturb_layers_select_like_reset_and_writes_in_place():
    net = mlp()
    before = snapshot(net)
    ptrs = [p.data_ptr() for p in net.parameters()]
    ShrinkPerturb(alpha=0.5, layers="last1").apply(Target(net, init_fn=constant_init))
    assert changed(before, net) == {"4.weight", "4.bias"}
    assert [p.data_ptr() for p in net.parameters()] == ptrs


def test_shrink_perturb_towards_initial_uses_the_bound_snapshot_and_survives_a_resume():
    net = mlp()
    w0 = snapshot(net)
    sp = ShrinkPerturb(alpha=0.5, towards="initial").bind(Target(net))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    adam_step(net, optimizer, n=2)  # training moves the weights
    trained = snapshot(net)
    state = sp.state_dict()
    resumed_net = copy.deepcopy(net)
    resumed = ShrinkPerturb(alpha=0.5, towards="initial")
    resumed.load_state_dict(state)
    sp.apply(Target(net))
    resumed.apply(Target(resumed_net))
    for name, p in net.named_parameters():
        assert not torch.equal(trained[name], w0[name])
        assert torch.equal(p, 0.5 * trained[name] + 0.5 * w0[name])
        assert torch.equal(dict(resumed_net.named_parameters())[name], p)


def test_shrink_perturb_towards_initial_unbound_warns_and_changes_nothing():
    net = mlp()
    before = snapshot(net)
    sp = ShrinkPerturb(alpha=0.3, towards="initial")
    with pytest.warns(RuntimeWarning, match="not bound"):
        sp.apply(Target(net))
    for name, p in net.named_parameters():
        torch.testing.assert_close(p, before[name], rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="not in the snapshot"):
        sp.apply(Target(nn.Sequential(nn.Linear(2, 2))))  # another network than the bound one


def test_shrink_perturb_keeps_optimizer_state_by_default_and_resets_on_request():
    for option in ("keep", "reset"):
        net = mlp()
        optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
        adam_step(net, optimizer, n=2)
        kept = {n: adam_state(optimizer, p) for n, p in net.named_parameters()}
        sp = ShrinkPerturb(alpha=0.5, layers="last1", optimizer=option) if option == "reset" else \
            ShrinkPerturb(alpha=0.5, layers="last1")
        sp.apply(Target(net, optimizers=[optimizer], init_fn=constant_init))
        for name, p in net.named_parameters():
            state = optimizer.state[p]
            if option == "reset" and name.startswith("4."):
                assert torch.equal(state["exp_avg"], torch.zeros_like(p)) and float(state["step"]) == 0.0
            else:
                assert all(torch.equal(state[k], kept[name][k]) for k in ("exp_avg", "exp_avg_sq", "step"))


def test_shrink_perturb_targets_shrink_towards_the_same_draw_or_sync():
    for option in ("shrink", "sync"):
        net = mlp()
        target_net = copy.deepcopy(net)
        with torch.no_grad():
            for p in target_net.parameters():
                p.add_(0.5)
        t_before = snapshot(target_net)
        ShrinkPerturb(alpha=0.25, layers="last1", targets=option).apply(
            Target(net, target_pairs=[(net, target_net)], init_fn=constant_init))
        for name, t in target_net.named_parameters():
            if not name.startswith("4."):
                assert torch.equal(t, t_before[name])
            elif option == "sync":
                assert torch.equal(t, dict(net.named_parameters())[name])
            else:
                fresh = 1.0 if name.endswith("weight") else -1.0
                assert torch.equal(t, 0.25 * t_before[name] + 0.75 * fresh)


@pytest.mark.parametrize("kwargs, field", [({"alpha": 1.5}, "alpha"), ({"alpha": float("nan")}, "alpha"),
                                           ({"alpha": True}, "alpha"), ({"towards": "zero"}, "towards"),
                                           ({"optimizer": "drop"}, "optimizer"), ({"targets": "keep"}, "targets"),
                                           ({"layers": "last"}, "layers")])
def test_shrink_perturb_rejects_bad_options(kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}"):
        ShrinkPerturb(**kwargs)


# ------------------------------------------------------------------------------------------------------ Inject


class Net(nn.Module):
    """A body and a Sequential head: forward = head(relu(body(x)))."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(3, 4)
        self.head = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))

    def forward(self, x):
        return self.head(torch.relu(self.body(x)))


def injected_critic():
    """A tiny DrQ critic after one Adam step, its target, the optimizer and a head input; then Inject(q1, q2)."""
    critic = tiny_critic()
    target_critic = copy.deepcopy(critic).requires_grad_(False)
    optimizer = torch.optim.Adam(critic.parameters(), lr=1e-3)
    h, act = torch.randn(6, 8), torch.rand(6, 2) * 2 - 1
    sum(critic(h, act)).pow(2).mean().backward()
    optimizer.step()
    x = critic._features(h, act).detach()  # the heads' input
    return critic, target_critic, optimizer, x


def test_inject_keeps_online_and_target_outputs_and_builds_the_injected_heads():
    critic, target_critic, optimizer, x = injected_critic()
    old_q1, old_q2 = critic.q1, critic.q2
    online_before = [critic.q1(x), critic.q2(x)]
    target_before = [target_critic.q1(x), target_critic.q2(x)]
    outcome = Inject(["q1", "q2"]).apply(Target(critic, [optimizer], [(critic, target_critic)],
                                                init_fn=layer_init_fn("orthogonal")))
    assert outcome.rebuilt and outcome.changes == {}
    assert outcome.log == {"heads_injected": 2.0, "params_injected": 2.0 * sum(p.numel() for p in old_q1.parameters())}
    for i, name in enumerate(("q1", "q2")):
        head, t_head = getattr(critic, name), getattr(target_critic, name)
        assert isinstance(head, InjectedHead) and isinstance(t_head, InjectedHead)
        assert torch.equal(head(x), online_before[i]) and torch.equal(t_head(x), target_before[i])
        assert head.terms() == [(1.0, head.old), (1.0, head.new), (-1.0, head.new_frozen)]
        assert sum(c * m(x) for c, m in head.terms()).sub(online_before[i]).abs().max() < 1e-6
        assert not torch.equal(head.new[4].weight, head.old[4].weight)  # a fresh head
        assert all(torch.equal(a, b) for a, b in zip(head.new.parameters(), head.new_frozen.parameters()))
        assert all(not p.requires_grad for p in (*head.old.parameters(), *head.new_frozen.parameters()))
        assert all(p.requires_grad for p in head.new.parameters())
        assert all(torch.equal(a, b) and a is not b for a, b in zip(head.new.parameters(), t_head.new.parameters()))
        assert all(not p.requires_grad for p in t_head.parameters())  # DrQ's target has no gradients
    assert critic.q1.old is old_q1 and critic.q2.old is old_q2
    pairs = list(zip(critic.parameters(), target_critic.parameters(), strict=True))  # Polyak's zip still pairs them
    assert all(p.shape == t.shape for p, t in pairs)


def test_inject_keeps_the_whole_drq_critic_and_actor_outputs():
    critic, target_critic, optimizer, _ = injected_critic()
    h, act = torch.randn(6, 8), torch.rand(6, 2) * 2 - 1
    before, target_before = critic(h, act), target_critic(h, act)
    Inject(["q1", "q2"]).apply(Target(critic, [optimizer], [(critic, target_critic)]))
    assert all(torch.equal(a, b) for a, b in zip(critic(h, act), before))  # the networks run the terms
    assert all(torch.equal(a, b) for a, b in zip(target_critic(h, act), target_before))
    torch.manual_seed(1)
    actor = Actor(repr_dim=8, action_dim=2, feature_dim=4, hidden_dim=16)
    mu, log_std = actor(h)
    Inject("policy").apply(Target(actor, [torch.optim.Adam(actor.parameters())]))
    assert torch.equal(actor(h)[0], mu) and torch.equal(actor(h)[1], log_std)


def test_inject_adds_the_new_heads_to_the_optimizer_and_only_they_learn():
    critic, target_critic, optimizer, x = injected_critic()
    hyper = {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}
    Inject(["q1", "q2"]).apply(Target(critic, [optimizer], [(critic, target_critic)]))
    assert len(optimizer.param_groups) == 3  # one group added per injected head
    for added, head in zip(optimizer.param_groups[1:], (critic.q1, critic.q2)):
        assert added["params"] == list(head.new.parameters())
        assert {k: v for k, v in added.items() if k != "params"} == hyper
    x = x.clone().requires_grad_(True)
    loss = critic.q1(x).pow(2).sum()
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in critic.q1.new.parameters())
    assert all(p.grad is None for p in (*critic.q1.old.parameters(), *critic.q1.new_frozen.parameters()))
    old_grad = torch.autograd.grad(critic.q1.old(x).pow(2).sum(), x)[0]
    torch.testing.assert_close(x.grad, old_grad)  # the new and frozen terms cancel for the inputs too
    frozen = snapshot(critic.q1.old), snapshot(critic.q1.new_frozen)
    new_before = snapshot(critic.q1.new)
    optimizer.step()  # Plasticine never adds the new head: here a step moves it
    assert changed(new_before, critic.q1.new) == set(new_before)
    assert changed(frozen[0], critic.q1.old) == set() and changed(frozen[1], critic.q1.new_frozen) == set()
    assert float(optimizer.state[critic.q1.new[0].weight]["step"]) == 1.0  # fresh state


def test_inject_into_a_whole_module_keeps_its_output_and_supports_named_optimizers():
    torch.manual_seed(0)
    net = Net()
    optimizer = torch.optim.Adam(net.named_parameters(), lr=1e-3, weight_decay=0.1)
    x = torch.randn(5, 3)
    before = net(x)
    Inject("head").apply(Target(net, [optimizer]))
    assert torch.equal(net(x), before)
    assert optimizer.param_groups[1]["param_names"] == ["head.new.0.weight", "head.new.0.bias", "head.new.2.weight",
                                                        "head.new.2.bias"]
    assert optimizer.param_groups[1]["weight_decay"] == 0.1


def test_inject_into_list_members_and_a_later_reset_leaves_the_frozen_terms():
    torch.manual_seed(0)
    a, b = Net(), Net()
    PlasticityInjection(["head"]).apply(Target([a, b], [torch.optim.SGD([*a.parameters(), *b.parameters()], 0.1)]))
    assert isinstance(a.head, InjectedHead) and isinstance(b.head, InjectedHead)
    assert [n for n, _ in select_layers(a, "last1")] == ["head.new.2"]
    assert [n for n, _ in select_layers(a, "all")] == ["body", "head.new.0", "head.new.2"]
    assert "head.old.2" in [n for n, _ in select_layers(a, ["head.old.*"])]  # globs still reach them


def test_inject_refuses_a_second_injection_and_unknown_heads():
    critic, target_critic, optimizer, _ = injected_critic()
    target = Target(critic, [optimizer], [(critic, target_critic)])
    Inject(["q1"]).apply(target)
    with pytest.raises(ValueError, match="already injected"):
        Inject(["q1"]).apply(target)
    with pytest.raises(ValueError, match="already injected"):
        Inject(["q1.new"]).apply(target)
    with pytest.raises(ValueError, match=r"'q3' names no module.*available: trunk, trunk\.0"):
        Inject(["q3"]).apply(target)
    with pytest.raises(ValueError, match="member of the group itself"):
        Inject(["q"]).apply(Target({"q": nn.Sequential(nn.Linear(2, 2))}))
    with pytest.raises(ValueError, match="heads"):
        Inject([])


def test_inject_warns_when_no_optimizer_holds_the_head():
    torch.manual_seed(0)
    net = Net()
    with pytest.warns(RuntimeWarning, match="none of the target's optimizers"):
        Inject(["head"]).apply(Target(net))
    other = Net()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # held by an optimizer: no warning
        Inject(["head"]).apply(Target(other, [torch.optim.SGD(other.parameters(), 0.1)]))


def test_outcome_defaults():
    assert Outcome().changes == {} and Outcome().log == {} and Outcome().rebuilt is False


# ------------------------------------------------------------------------------------------------ CUDA graphs


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("make", [lambda: Reset("last1"),
                                  lambda: ShrinkPerturb(0.5, layers="last1", optimizer="reset")],
                         ids=["reset", "shrink_perturb"])
def test_a_captured_update_graph_reads_the_rewritten_weights_and_optimizer_state(make):
    """A whole update (forward, backward, capturable Adam step) captured in a CUDA graph keeps reading the
    parameters and optimizer state an intervention rewrote in place: the next replay's output is the eager forward
    on the new weights, and the reset tensors take Adam's first step (step 1, exp_avg = (1 - beta1) grad)."""
    torch.manual_seed(0)
    net = mlp().cuda()
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01, capturable=True)
    x = torch.randn(5, 3, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up: optimizer state exists before capture
        for _ in range(3):
            optimizer.zero_grad(set_to_none=False)
            net(x).pow(2).sum().backward()
            optimizer.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    optimizer.zero_grad(set_to_none=True)  # the backward in the graph allocates static gradients
    with torch.cuda.graph(graph):
        out = net(x)
        out.pow(2).sum().backward()
        optimizer.step()
    graph.replay()
    make().apply(Target(net, optimizers=[optimizer], init_fn=constant_init))
    with torch.no_grad():
        expected = net(x)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, expected)
    for name, p in net.named_parameters():
        state = optimizer.state[p]
        assert float(state["step"]) == (1.0 if name.startswith("4.") else 5.0)
        if name.startswith("4."):
            torch.testing.assert_close(state["exp_avg"], 0.1 * p.grad)
