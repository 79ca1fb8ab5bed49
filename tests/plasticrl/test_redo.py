"""Tests for plasticrl.interventions.redo.ReDo and the wiring trace of plasticrl.capture it uses: tiny networks with
set weights and a batch on which known units are dormant, worked by hand (or re-implemented in plain torch)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from plasticrl.agents.drq.networks import Critic
from plasticrl.capture import capture
from plasticrl.interventions.base import Target
from plasticrl.interventions.redo import DEFAULT_TAU, ReDo

# The probe batch of the MLPs: two samples in R^2.
X = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
W1 = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, -1.0], [0.05, 0.0]]
W2 = [[1.0, 0.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 1.0, 0.0], [-1.0, -1.0, -1.0, 1.0, -1.0]]
W3 = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
B3 = [0.5, -0.5]
# By hand on X: layer 1 h1 = relu(X W1^T) = [[1, 2, 3, 0, 0.05], [3, 4, 7, 0, 0.15]], E|h1| = [2, 3, 5, 0, 0.1], mean
# 2.02, scores [0.990, 1.485, 2.475, 0, 0.0495]: dormant at tau 0.1 {3, 4} (3 dead, 4 alive but dormant), at tau
# 0.04 {3}. Layer 2 pre-activations [1.05, 3.15], [2, 4], [-6.05, -14.15]: h2 E|h2| = [2.1, 3, 0], mean 1.7, scores
# [1.235, 1.765, 0]: dormant {2} (dead).
DORMANT_1, DORMANT_2 = [3, 4], [2]
FRESH_W, FRESH_B = 0.25, -0.5


def fill(layer: nn.Module) -> None:
    """A layer init whose draw is known: every weight 0.25, every bias -0.5."""
    layer.weight.fill_(FRESH_W)
    layer.bias.fill_(FRESH_B)


def set_linear(layer: nn.Linear, weight: list[list[float]], bias: list[float] | None = None) -> None:
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
        layer.bias.copy_(torch.tensor(bias) if bias is not None else torch.zeros(layer.out_features))


def mlp() -> nn.Sequential:
    net = nn.Sequential(nn.Linear(2, 5), nn.ReLU(), nn.Linear(5, 3), nn.ReLU(), nn.Linear(3, 2))
    set_linear(net[0], W1)
    set_linear(net[2], W2)
    set_linear(net[4], W3, B3)
    return net


class FunctionalQ(nn.Module):
    """CleanRL's QNetwork shape (F.relu in forward), with the MLP's weights."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(2, 5), nn.Linear(5, 3), nn.Linear(3, 2)
        set_linear(self.fc1, W1)
        set_linear(self.fc2, W2)
        set_linear(self.fc3, W3, B3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def expected_mlp(before: dict[str, torch.Tensor], names: tuple[str, str, str], dormant_1: list[int],
                 dormant_2: list[int]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """By hand: the MLP's parameters after recycling (incoming rows and biases = the fill draw, outgoing columns 0,
    the zeros written last) and the masks of the recycled entries."""
    l1, l2, l3 = names
    after = {k: v.clone() for k, v in before.items()}
    masks = {k: torch.zeros_like(v, dtype=torch.bool) for k, v in before.items()}
    for layer, rows in ((l1, dormant_1), (l2, dormant_2)):
        after[f"{layer}.weight"][rows] = FRESH_W
        after[f"{layer}.bias"][rows] = FRESH_B
        masks[f"{layer}.weight"][rows] = True
        masks[f"{layer}.bias"][rows] = True
    for layer, cols in ((l2, dormant_1), (l3, dormant_2)):
        after[f"{layer}.weight"][:, cols] = 0.0
        masks[f"{layer}.weight"][:, cols] = True
    return after, {k: m for k, m in masks.items() if m.any()}


def assert_recycled(module: nn.Module, outcome, after: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> None:
    """Every parameter equals its expected value exactly; the changes hold exactly the expected masks."""
    params = dict(module.named_parameters())
    for name, p in params.items():
        assert torch.equal(p.detach(), after[name]), name
    changed = {name: outcome.changes[p] for name, p in params.items() if p in outcome.changes}
    assert set(changed) == set(masks)
    for name, mask in masks.items():
        assert torch.equal(changed[name], mask), name


def test_mlp_recycles_exactly_the_dormant_units_and_logs_them() -> None:
    net = mlp()
    before = snapshot(net)
    outcome = ReDo(tau=0.1).apply(Target(net, init_fn=fill), lambda: net(X))
    after, masks = expected_mlp(before, ("0", "2", "4"), DORMANT_1, DORMANT_2)
    assert_recycled(net, outcome, after, masks)
    assert outcome.log == {"units_recycled": 3.0, "units": 8.0, "dormant_ratio_before": 3 / 8,
                           "1/units_recycled": 2.0, "3/units_recycled": 1.0}
    assert not outcome.rebuilt


def test_output_is_the_network_with_the_recycled_units_removed() -> None:
    """tau 0.1 recycles unit 4 of layer 1, alive (0.05, 0.15): the output is that of the network without units 3, 4
    of layer 1 and unit 2 of layer 2, by hand: h1 = [[1, 2, 3, 0, 0], [3, 4, 7, 0, 0]], h2 = [[1, 2, 0], [3, 4, 0]],
    y = h2 W3^T + b3 = [[5.5, 13.5], [11.5, 31.5]] (the original gives [[5.55, 13.7], [11.65, 32.1]]). tau 0.04
    recycles the dead units only: the output is unchanged."""
    net = mlp()
    torch.testing.assert_close(net(X), torch.tensor([[5.55, 13.7], [11.65, 32.1]]))
    ReDo(tau=0.1).apply(Target(net, init_fn=fill), lambda: net(X))
    torch.testing.assert_close(net(X), torch.tensor([[5.5, 13.5], [11.5, 31.5]]))
    dead_only = mlp()
    outcome = ReDo(tau=0.04).apply(Target(dead_only), lambda: dead_only(X))  # its own reset_parameters() draw
    assert outcome.log["1/units_recycled"] == 1.0 and outcome.log["3/units_recycled"] == 1.0
    torch.testing.assert_close(dead_only(X), torch.tensor([[5.55, 13.7], [11.65, 32.1]]))


def test_incoming_rows_are_a_fresh_draw_of_the_layers_own_init() -> None:
    """No init_fn: a scratch copy's reset_parameters(). Seeded, the draws are those of a new nn.Linear(2, 5) and then
    a new nn.Linear(5, 3) (the order of the sites), whose construction makes the same draws."""
    net = mlp()
    before = snapshot(net)
    torch.manual_seed(123)
    ReDo(tau=0.1).apply(Target(net), lambda: net(X))
    torch.manual_seed(123)
    fresh_1, fresh_2 = nn.Linear(2, 5), nn.Linear(5, 3)
    assert torch.equal(net[0].weight[DORMANT_1], fresh_1.weight[DORMANT_1])
    assert torch.equal(net[0].bias[DORMANT_1], fresh_1.bias[DORMANT_1])
    expected_2 = fresh_2.weight[DORMANT_2].clone()
    expected_2[:, DORMANT_1] = 0.0  # the outgoing columns of layer 1's recycled units
    assert torch.equal(net[2].weight[DORMANT_2], expected_2)
    assert torch.equal(net[2].bias[DORMANT_2], fresh_2.bias[DORMANT_2])
    kept = [0, 1, 2]
    assert torch.equal(net[0].weight[kept], before["0.weight"][kept])  # the layer itself was not re-initialised


def test_adam_moments_of_recycled_entries_are_zeroed_and_the_rest_kept() -> None:
    """A real Adam step on a batch where every recycled unit is active ([-1, -1] lights unit 3 of layer 1 and unit 2
    of layer 2; [1, 2] unit 4), so that each recycled parameter has nonzero moments among its recycled entries
    before; after ReDo exactly those entries are 0."""
    net = mlp()
    adam = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(torch.tensor([[1.0, 2.0], [-1.0, -1.0]])).sum().backward()
    adam.step()
    _, masks = expected_mlp(snapshot(net), ("0", "2", "4"), DORMANT_1, DORMANT_2)
    params = dict(net.named_parameters())
    moments = {name: {k: v.clone() for k, v in adam.state[p].items()} for name, p in params.items()}
    for name, mask in masks.items():
        assert (moments[name]["exp_avg"][mask] != 0).any() and (moments[name]["exp_avg_sq"][mask] != 0).any(), name
    ReDo(tau=0.1).apply(Target(net, optimizers=[adam], init_fn=fill), lambda: net(X))
    for name, p in params.items():
        mask = masks.get(name, torch.zeros_like(p, dtype=torch.bool))
        for key in ("exp_avg", "exp_avg_sq"):
            state = adam.state[p][key]
            assert (state[mask] == 0).all(), (name, key)
            assert torch.equal(state[~mask], moments[name][key][~mask]), (name, key)
        assert torch.equal(adam.state[p]["step"], moments[name]["step"])  # bias correction goes on


def test_target_network_gets_exactly_the_recycled_entries() -> None:
    net = mlp()
    target_net = copy.deepcopy(net)
    with torch.no_grad():
        for p in target_net.parameters():
            p.add_(10.0)  # a lagging target: every entry differs from the online one
    old_target = snapshot(target_net)
    outcome = ReDo(tau=0.1).apply(Target(net, target_pairs=[(net, target_net)], init_fn=fill), lambda: net(X))
    _, masks = expected_mlp(snapshot(net), ("0", "2", "4"), DORMANT_1, DORMANT_2)
    online = dict(net.named_parameters())
    for name, t in target_net.named_parameters():
        mask = masks.get(name, torch.zeros_like(t, dtype=torch.bool))
        assert torch.equal(t[mask], online[name][mask]), name
        assert torch.equal(t[~mask], old_target[name][~mask]), name
    assert set(outcome.changes) == {online[name] for name in masks}


def test_conv_channels_are_units_and_a_flattened_channel_is_its_block_of_columns() -> None:
    """1x1 convs on positive images x: conv1 channels x, 0 (weight -1), 2x: E|h| = [4.5, 0, 9], scores [1, 0, 2],
    dormant {1}; conv2 channels x + 0 and -x - 2x (dead): scores [2, 0], dormant {1}. The Linear reads the flattened
    (2, 2, 2) map: channel 1 is columns 4..7."""
    net = nn.Sequential(nn.Conv2d(1, 3, 1), nn.ReLU(), nn.Conv2d(3, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(8, 1))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([1.0, -1.0, 2.0]).view(3, 1, 1, 1))
        net[0].bias.zero_()
        net[2].weight.copy_(torch.tensor([[1.0, 1.0, 0.0], [-1.0, 0.0, -1.0]]).view(2, 3, 1, 1))
        net[2].bias.zero_()
        net[5].weight.copy_(torch.arange(1.0, 9.0).view(1, 8))
    x = torch.arange(1.0, 9.0).view(2, 1, 2, 2)
    y_before = net(x)
    before = snapshot(net)
    outcome = ReDo(tau=0.1).apply(Target(net, init_fn=fill), lambda: net(x))
    after = {k: v.clone() for k, v in before.items()}
    after["0.weight"][1], after["0.bias"][1] = FRESH_W, FRESH_B
    after["2.weight"][1], after["2.bias"][1] = FRESH_W, FRESH_B
    after["2.weight"][:, 1] = 0.0
    after["5.weight"][:, 4:8] = 0.0
    masks = {k: torch.zeros_like(v, dtype=torch.bool) for k, v in before.items()}
    masks["0.weight"][1] = masks["0.bias"][1] = masks["2.weight"][1] = masks["2.bias"][1] = True
    masks["2.weight"][:, 1] = True
    masks["5.weight"][:, 4:8] = True
    del masks["5.bias"]
    assert_recycled(net, outcome, after, masks)
    assert outcome.log["1/units_recycled"] == 1.0 and outcome.log["3/units_recycled"] == 1.0
    assert outcome.log["units"] == 5.0
    torch.testing.assert_close(net(x), y_before)  # dead channels: the function is kept


def test_layernorm_between_incoming_layer_and_activation_is_reset_for_recycled_units() -> None:
    """Linear -> LayerNorm(weight [1, 1, 0.5], bias [0.5, 0.5, -5]) -> ReLU: unit 2 is 0.5 z - 5 < 0 (|z| <= sqrt(2)
    for 3 units), dead; units 0 and 1 are z + 0.5, active on one sample each (checked below in plain torch)."""
    net = nn.Sequential(nn.Linear(2, 3), nn.LayerNorm(3), nn.ReLU(), nn.Linear(3, 1))
    set_linear(net[0], [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([1.0, 1.0, 0.5]))
        net[1].bias.copy_(torch.tensor([0.5, 0.5, -5.0]))
    x = torch.tensor([[1.0, 2.0], [3.0, 1.0]])
    pre = x @ net[0].weight.T
    z = (pre - pre.mean(1, keepdim=True)) / (pre.var(1, unbiased=False, keepdim=True) + 1e-5).sqrt()
    h = torch.clamp(z * net[1].weight + net[1].bias, min=0).detach()
    score = h.abs().mean(0) / h.abs().mean(0).mean()
    assert (score <= 0.1).tolist() == [False, False, True]
    before = snapshot(net)
    outcome = ReDo(tau=0.1).apply(Target(net, init_fn=fill), lambda: net(x))
    after = {k: v.clone() for k, v in before.items()}
    after["0.weight"][2], after["0.bias"][2] = FRESH_W, FRESH_B
    after["1.weight"][2], after["1.bias"][2] = 1.0, 0.0
    after["3.weight"][:, 2] = 0.0
    masks = {k: torch.zeros_like(v, dtype=torch.bool) for k, v in before.items() if k != "3.bias"}
    for k in ("0.weight", "0.bias", "1.weight", "1.bias"):
        masks[k][2] = True
    masks["3.weight"][:, 2] = True
    assert_recycled(net, outcome, after, masks)


def set_second_configuration(net: nn.Sequential) -> None:
    """By hand on X: h1 = relu of rows [-1, -1] (dead), [0, 1], [1, 1], [-1, -1] (dead), [1, 0]: E|h1| = [0, 3, 5, 0,
    2], mean 2, dormant {0, 3}; h2 rows [0, 1, 0, 0, 0] ([2, 4]), all -1 (dead), [0, 0, 1, 0, 0] ([3, 7]): E|h2| =
    [3, 0, 5], dormant {1}."""
    set_linear(net[0], [[-1.0, -1.0], [0.0, 1.0], [1.0, 1.0], [-1.0, -1.0], [1.0, 0.0]])
    set_linear(net[2], [[0.0, 1.0, 0.0, 0.0, 0.0], [-1.0] * 5, [0.0, 0.0, 1.0, 0.0, 0.0]])


def test_dead_intersected_percent_on_a_second_application() -> None:
    """First application: dormant {3, 4} and {2}, no intersection logged. Second: {0, 3} and {1}: of {3, 4} one is
    dormant again (50 %), of {2} none (0 %); pooled (1 + 0) / (2 + 1) = 33.3 %."""
    net = mlp()
    redo = ReDo(tau=0.1)
    first = redo.apply(Target(net, init_fn=fill), lambda: net(X))
    assert not any("dead_intersected_percent" in k for k in first.log)
    set_second_configuration(net)
    second = redo.apply(Target(net, init_fn=fill), lambda: net(X))
    assert second.log["1/units_recycled"] == 2.0 and second.log["3/units_recycled"] == 1.0
    assert second.log["1/dead_intersected_percent"] == pytest.approx(50.0)
    assert second.log["3/dead_intersected_percent"] == pytest.approx(0.0)
    assert second.log["dead_intersected_percent"] == pytest.approx(100.0 / 3)
    other = ReDo(tau=0.1)  # the state is per ReDo object
    assert "dead_intersected_percent" not in other.apply(Target(net, init_fn=fill), lambda: net(X)).log


def test_site_without_outgoing_layer_is_skipped_with_one_warning() -> None:
    """An encoder ending in a ReLU: its last site feeds no layer of the group; the first site is recycled."""
    enc = nn.Sequential(nn.Linear(2, 5), nn.ReLU(), nn.Linear(5, 3), nn.ReLU())
    set_linear(enc[0], W1)
    set_linear(enc[2], W2)
    before = snapshot(enc)
    redo = ReDo(tau=0.1)
    with pytest.warns(RuntimeWarning, match=r"site '3': its output is read by no weight layer of the group"):
        outcome = redo.apply(Target(enc, init_fn=fill), lambda: enc(X))
    assert outcome.log["units"] == 5.0 and outcome.log["1/units_recycled"] == 2.0
    assert "3/units_recycled" not in outcome.log
    assert torch.equal(enc[2].weight[DORMANT_2][:, [0, 1, 2]], before["2.weight"][DORMANT_2][:, [0, 1, 2]])
    assert torch.equal(enc[2].bias, before["2.bias"])  # unit 2 of site 3 is dead, but not recycled
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        redo.apply(Target(enc, init_fn=fill), lambda: enc(X))  # reported once


def test_sites_read_outside_the_group_or_by_an_add_are_skipped() -> None:
    enc, head = nn.Sequential(nn.Linear(2, 5), nn.ReLU()), nn.Linear(5, 1)
    before = snapshot(enc)
    with pytest.warns(RuntimeWarning, match=r"site '1': its output is also read by linear outside the group"):
        outcome = ReDo(tau=0.1).apply(Target(enc), lambda: head(enc(X)))
    assert outcome.changes == {} and outcome.log["units"] == 0.0
    assert all(torch.equal(p, before[n]) for n, p in enc.named_parameters())

    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2, self.fc3 = nn.Linear(2, 4), nn.Linear(4, 4), nn.Linear(4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = F.relu(self.fc1(x))
            return self.fc3(F.relu(self.fc2(h) + h))

    res = Residual()
    with pytest.warns(RuntimeWarning) as record:
        ReDo(tau=0.1).apply(Target(res), lambda: res(X))
    text = str(record[0].message)
    assert "site 'relu_0': its output is also read by add" in text
    assert "site 'relu_1': its input is not the output of a weight layer" in text


def test_bad_arguments_fail_with_a_clear_error() -> None:
    with pytest.raises(ValueError, match="tau must be a finite number >= 0"):
        ReDo(tau=-0.1)
    with pytest.raises(ValueError, match="tau must be a finite number >= 0"):
        ReDo(tau=float("nan"))
    with pytest.raises(TypeError, match="tau must be a number"):
        ReDo(tau="0.1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="sites must be a list of globs"):
        ReDo(sites="q1.*")  # type: ignore[arg-type]
    net = mlp()
    with pytest.raises(ValueError, match="ReDo needs forward_fn"):
        ReDo().apply(Target(net))
    with pytest.raises(ValueError, match="forward_fn ran none of the group's modules"):
        ReDo().apply(Target(net), lambda: None)
    assert ReDo().tau == DEFAULT_TAU == 0.1


def test_probe_runs_in_eval_mode_without_grad_and_restores_train_flags() -> None:
    net = mlp()
    net.train()
    net[1].eval()  # a mixed state comes back as it was
    seen = []

    def forward() -> None:
        seen.append((net.training, net[0].training, torch.is_grad_enabled()))
        net(X)

    ReDo(tau=0.1).apply(Target(net, init_fn=fill), forward)
    assert seen == [(False, False, False)]
    assert net.training and net[0].training and not net[1].training


def test_cleanrl_functional_relu_network() -> None:
    q = FunctionalQ()
    before = snapshot(q)
    outcome = ReDo(tau=0.1).apply(Target(q, init_fn=fill), lambda: q(X))
    after, masks = expected_mlp(before, ("fc1", "fc2", "fc3"), DORMANT_1, DORMANT_2)
    assert_recycled(q, outcome, after, masks)
    assert outcome.log["relu_0/units_recycled"] == 2.0 and outcome.log["relu_1/units_recycled"] == 1.0


def test_list_group_of_two_q_networks() -> None:
    """Two FunctionalQ: the first as above, the second with layer 1's unit 4 made active (row [1, 0]: E|h1| = [2, 3,
    5, 0, 2], scores [0.83, 1.25, 2.08, 0, 0.83]): its dormant units are {3} and {2}."""
    q1, q2 = FunctionalQ(), FunctionalQ()
    with torch.no_grad():
        q2.fc1.weight[4] = torch.tensor([1.0, 0.0])
    before_1, before_2 = snapshot(q1), snapshot(q2)
    outcome = ReDo(tau=0.1).apply(Target([q1, q2], init_fn=fill), lambda: (q1(X), q2(X)))
    after_1, masks_1 = expected_mlp(before_1, ("fc1", "fc2", "fc3"), DORMANT_1, DORMANT_2)
    after_2, masks_2 = expected_mlp(before_2, ("fc1", "fc2", "fc3"), [3], DORMANT_2)
    assert_recycled(q1, outcome, after_1, masks_1)
    for name, p in q2.named_parameters():
        assert torch.equal(p.detach(), after_2[name]), name
        assert torch.equal(outcome.changes[p], masks_2[name]) if name in masks_2 else p not in outcome.changes
    assert {k: v for k, v in outcome.log.items() if k.endswith("/units_recycled")} == {
        "0.relu_0/units_recycled": 2.0, "0.relu_1/units_recycled": 1.0,
        "1.relu_0/units_recycled": 1.0, "1.relu_1/units_recycled": 1.0}
    assert outcome.log["units"] == 16.0 and outcome.log["dormant_ratio_before"] == 5 / 16


def critic_dormant(critic: Critic, h: torch.Tensor, a: torch.Tensor, tau: float) -> dict[str, torch.Tensor]:
    """Plain re-implementation of DrQ's critic and the dormant score: the hidden ReLU sites' dormant units."""
    lin0, ln = critic.trunk[0], critic.trunk[1]
    f = torch.tanh(F.layer_norm(h @ lin0.weight.T + lin0.bias, (ln.normalized_shape[0],), ln.weight, ln.bias))
    x = torch.cat([f, a], dim=1)
    out = {}
    for name, head in (("q1", critic.q1), ("q2", critic.q2)):
        a1 = torch.clamp(x @ head[0].weight.T + head[0].bias, min=0)
        a2 = torch.clamp(a1 @ head[2].weight.T + head[2].bias, min=0)
        for site, act in ((f"{name}.1", a1), (f"{name}.3", a2)):
            e = act.abs().mean(0)
            out[site] = (e / e.mean() <= tau).detach()
    return out


def test_drq_critic_recycles_the_q_heads_hidden_relus_and_leaves_the_trunk() -> None:
    torch.manual_seed(0)
    critic = Critic(repr_dim=8, action_dim=2, feature_dim=4, hidden_dim=16)
    with torch.no_grad():
        critic.q1[0].bias[[0, 5]] = -100.0  # dead units of q1.1
        critic.q2[2].bias[3] = -100.0  # a dead unit of q2.3
    h, a = torch.randn(64, 8), torch.rand(64, 2) * 2 - 1
    dormant = critic_dormant(critic, h, a, DEFAULT_TAU)
    assert dormant["q1.1"][[0, 5]].all() and dormant["q2.3"][3]
    before = snapshot(critic)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the trunk's Tanh is left alone without a warning
        outcome = ReDo().apply(Target(critic), lambda: critic(h, a))
    params = dict(critic.named_parameters())
    expected: dict[str, torch.Tensor] = {}
    for q in ("q1", "q2"):
        first, second = dormant[f"{q}.1"], dormant[f"{q}.3"]
        expected[f"{q}.0.weight"] = first[:, None].expand(16, 6)
        expected[f"{q}.0.bias"] = first
        expected[f"{q}.2.weight"] = second[:, None] | first[None, :]
        expected[f"{q}.2.bias"] = second
        expected[f"{q}.4.weight"] = second[None, :]
    for name, p in params.items():
        if name.startswith("trunk") or name.endswith("4.bias"):
            assert p not in outcome.changes and torch.equal(p.detach(), before[name]), name
            continue
        mask = expected[name].expand_as(p)
        assert torch.equal(outcome.changes[p], mask), name
        assert torch.equal(p.detach()[~mask], before[name][~mask]), name
    for q in ("q1", "q2"):
        assert (params[f"{q}.2.weight"].detach()[:, dormant[f"{q}.1"]] == 0).all()
        assert (params[f"{q}.4.weight"].detach()[:, dormant[f"{q}.3"]] == 0).all()
    counts = {site: float(m.sum()) for site, m in dormant.items()}
    assert {k[: -len("/units_recycled")]: v for k, v in outcome.log.items() if k.endswith("/units_recycled")} == counts
    assert outcome.log["units"] == 64.0 and outcome.log["units_recycled"] == sum(counts.values())
    with pytest.warns(RuntimeWarning, match=r"site 'trunk.2': its output is also read by cat"):
        ReDo(sites=["trunk.*", "q1.1"]).apply(Target(critic), lambda: critic(h, a))


def test_capture_trace_names_weight_calls_and_each_activations_layers() -> None:
    cnn = nn.Sequential(nn.Conv2d(1, 3, 1), nn.ReLU(), nn.Conv2d(3, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(8, 1))
    with capture(cnn, trace=True) as cap:
        cnn(torch.ones(2, 1, 2, 2))
    assert [(w.name, w.kind, w.module, w.own_weight) for w in cap.weight_calls] == [
        ("0", "conv", cnn[0], True), ("2", "conv", cnn[2], True), ("5", "linear", cnn[5], True)]
    flows = {s.name: s.flows for s in cap.sites()}
    assert [(f.source.name, f.source_reads, [(c.name, flat) for c, flat in f.consumers], f.reads)
            for f in flows["1"]] == [("0", ["relu"], [("2", False)], [])]
    assert [(f.source.name, [(c.name, flat) for c, flat in f.consumers]) for f in flows["3"]] == [("2", [("5", True)])]
    critic = Critic(repr_dim=8, action_dim=2, feature_dim=4, hidden_dim=16)
    with capture(critic, trace=True) as cap:
        critic(torch.randn(3, 8), torch.randn(3, 2))
        critic(torch.randn(3, 8), torch.randn(3, 2))
    sites = {s.name: s for s in cap.sites()}
    trunk = sites["trunk.2"].flows
    assert len(trunk) == 2 and all(f.source.name == "trunk.0" and [n.name for n in f.norms] == ["trunk.1"]
                                   and f.reads == ["cat"] and not f.consumers for f in trunk)
    assert [c.name for f in sites["q2.3"].flows for c, _ in f.consumers] == ["q2.4", "q2.4"]
    with capture(cnn) as plain:  # no trace: weight calls only
        cnn(torch.ones(2, 1, 2, 2))
    assert len(plain.weight_calls) == 3 and all(not s.flows for s in plain.sites())
