"""Tests for plasticrl.monitor.PlasticityMonitor."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from plasticrl import metrics
from plasticrl.monitor import ACTIVATION_TYPES, PlasticityMonitor

GROUP_KEYS = ["dormant_ratio", "fau", "srank", "effective_rank", "feature_norm", "weight_norm"]


def make_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))


def make_cnn() -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 16),
        nn.ReLU(),
        nn.Linear(16, 3),
    )


def obs() -> torch.Tensor:
    return torch.randn(64, 4, generator=torch.Generator().manual_seed(2))


def images() -> torch.Tensor:
    return torch.randn(32, 3, 8, 8, generator=torch.Generator().manual_seed(3))


def record(modules: dict[str, nn.Module], forward_fn, use_input: bool = False) -> dict[str, torch.Tensor]:
    """Independent hook-based recording (outputs, or inputs[0]) concatenated over calls."""
    store: dict[str, list[torch.Tensor]] = {}
    handles = []
    for name, module in modules.items():

        def hook(m, inputs, output, name=name):
            store.setdefault(name, []).append((inputs[0] if use_input else output).detach().clone())

        handles.append(module.register_forward_hook(hook))
    with torch.no_grad():
        forward_fn()
    for h in handles:
        h.remove()
    return {name: torch.cat(ts) for name, ts in store.items()}


def assert_no_hooks(*roots: nn.Module) -> None:
    for root in roots:
        for name, m in root.named_modules():
            assert not m._forward_hooks, name
            assert not m._forward_pre_hooks, name
            assert not getattr(m, "_forward_hooks_with_kwargs", {}), name


def test_keys_present_and_finite_for_mlp_and_cnn() -> None:
    mlp, cnn = make_mlp(), make_cnn()
    x, img = obs(), images()
    monitor = PlasticityMonitor({"mlp": mlp, "cnn": cnn})
    out = monitor.probe(lambda: (mlp(x), cnn(img)))
    expected = (
        [f"plasticity/mlp/{k}" for k in GROUP_KEYS]
        + [f"plasticity/mlp/{layer}/{k}" for layer in ("1", "3") for k in ("dormant_ratio", "fau")]
        + [f"plasticity/cnn/{k}" for k in GROUP_KEYS]
        + [f"plasticity/cnn/{layer}/{k}" for layer in ("1", "3", "6") for k in ("dormant_ratio", "fau")]
    )
    assert sorted(out) == sorted(expected)  # no grads yet -> no grad_norm
    assert all(isinstance(v, float) and math.isfinite(v) for v in out.values())
    assert monitor.last_histograms == {}


def test_group_values_match_independent_computation() -> None:
    cnn = make_cnn()
    img = images()
    acts_by_name = {n: m for n, m in cnn.named_modules() if isinstance(m, ACTIVATION_TYPES)}
    acts = record(acts_by_name, lambda: cnn(img))
    feats = record({"last": cnn[7]}, lambda: cnn(img), use_input=True)["last"]
    out = PlasticityMonitor({"cnn": cnn}, tau=0.1).probe(lambda: cnn(img))

    masks = {n: metrics.dormant_mask(a, tau=0.1) for n, a in acts.items()}
    total_dormant = sum(int(m.sum()) for m in masks.values())
    total_units = sum(m.numel() for m in masks.values())
    assert total_units == 4 + 4 + 16
    assert out["plasticity/cnn/dormant_ratio"] == pytest.approx(total_dormant / total_units)
    active = sum(int((a > 0).sum()) for a in acts.values())
    entries = sum(a.numel() for a in acts.values())
    assert out["plasticity/cnn/fau"] == pytest.approx(active / entries)
    for n, a in acts.items():
        assert out[f"plasticity/cnn/{n}/dormant_ratio"] == pytest.approx(float(metrics.dormant_ratio(a, 0.1)))
        assert out[f"plasticity/cnn/{n}/fau"] == pytest.approx(float(metrics.fau(a)))
    # group features = input of the final Linear (16-dim penultimate features)
    assert feats.shape == (32, 16)
    assert out["plasticity/cnn/srank"] == float(metrics.srank(feats))
    assert out["plasticity/cnn/effective_rank"] == pytest.approx(float(metrics.effective_rank(feats)))
    assert out["plasticity/cnn/feature_norm"] == pytest.approx(float(metrics.feature_norm(feats)))
    assert out["plasticity/cnn/weight_norm"] == pytest.approx(float(metrics.weight_norm(cnn)))


def test_group_features_are_output_when_module_does_not_end_in_linear() -> None:
    torch.manual_seed(4)
    encoder = nn.Sequential(nn.Linear(4, 6), nn.Tanh())
    x = obs()
    out = PlasticityMonitor({"enc": encoder}).probe(lambda: encoder(x))
    with torch.no_grad():
        feats = encoder(x)
    assert out["plasticity/enc/feature_norm"] == pytest.approx(float(metrics.feature_norm(feats)))
    assert out["plasticity/enc/srank"] == float(metrics.srank(feats))


def test_dead_unit_is_dormant() -> None:
    mlp = make_mlp()
    x = obs()
    before = record({"3": mlp[3]}, lambda: mlp(x))["3"]
    alive_mask = ~metrics.dormant_mask(before)
    unit = int(alive_mask.nonzero()[0])  # a unit that is alive at init
    n_dormant_before = int((~alive_mask).sum())
    with torch.no_grad():
        mlp[2].bias[unit] = -100.0  # pre-activation always < 0: unit never fires
    monitor = PlasticityMonitor({"mlp": mlp}, histograms=True)
    out = monitor.probe(lambda: mlp(x))
    assert out["plasticity/mlp/3/dormant_ratio"] == pytest.approx((n_dormant_before + 1) / 8)
    hist = monitor.last_histograms["plasticity/mlp/3/dormant_score"]
    assert hist.device.type == "cpu" and hist.shape == (8,)
    assert hist[unit].tolist() == 0.0
    acts = record({"3": mlp[3]}, lambda: mlp(x))["3"]
    torch.testing.assert_close(hist, metrics.dormant_scores(acts))


def test_hooks_removed_after_probe_and_after_exception() -> None:
    mlp, cnn = make_mlp(), make_cnn()
    x = obs()
    monitor = PlasticityMonitor({"mlp": mlp, "cnn": cnn, "list": [mlp, cnn]})
    monitor.probe(lambda: mlp(x))
    assert_no_hooks(mlp, cnn)

    def failing() -> None:
        mlp(x)
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        monitor.probe(failing)
    assert_no_hooks(mlp, cnn)


def test_training_forward_unchanged_and_no_side_effects() -> None:
    torch.manual_seed(5)
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 2))
    net.train()
    x = obs()
    running_mean = net[1].running_mean.clone()
    torch.manual_seed(6)
    before = net(x)
    running_after_first = net[1].running_mean.clone()
    net[1].running_mean.copy_(running_mean)
    net[1].num_batches_tracked.zero_()

    PlasticityMonitor({"net": net}).probe(lambda: net(x))
    # probe ran in eval mode: BatchNorm statistics untouched
    torch.testing.assert_close(net[1].running_mean, running_mean, rtol=0, atol=0)
    assert int(net[1].num_batches_tracked) == 0
    torch.manual_seed(6)
    after = net(x)
    assert torch.equal(before, after)
    torch.testing.assert_close(net[1].running_mean, running_after_first, rtol=0, atol=0)
    assert after.requires_grad  # grad mode not left disabled


def test_module_modes_restored_even_after_exception() -> None:
    mlp = make_mlp()
    mlp.train()
    mlp[2].eval()  # mixed modes
    modes = {n: m.training for n, m in mlp.named_modules()}
    monitor = PlasticityMonitor({"mlp": mlp})
    seen: list[bool] = []
    monitor.probe(lambda: seen.append(mlp.training))
    assert seen == [False]  # forward ran in eval mode
    assert {n: m.training for n, m in mlp.named_modules()} == modes

    def failing() -> None:
        raise RuntimeError("fail")

    with pytest.raises(RuntimeError):
        monitor.probe(failing)
    assert {n: m.training for n, m in mlp.named_modules()} == modes


def test_list_group_names_and_features_per_member_and_pooled() -> None:
    torch.manual_seed(7)
    q0 = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    q1 = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 1))
    x = obs()
    out = PlasticityMonitor({"critic": [q0, q1]}).probe(lambda: (q0(x), q1(x)))
    assert "plasticity/critic/0.1/dormant_ratio" in out
    assert "plasticity/critic/1.1/fau" in out
    acts = record({"0.1": q0[1], "1.1": q1[1]}, lambda: (q0(x), q1(x)))
    masks = [metrics.dormant_mask(a) for a in acts.values()]
    assert out["plasticity/critic/dormant_ratio"] == pytest.approx(sum(int(m.sum()) for m in masks) / 14)
    # features per member (the input of each one's last Linear) and pooled: per sample [f_0(x), f_1(x)], 14 wide
    f0 = record({"f": q0[2]}, lambda: q0(x), use_input=True)["f"]
    f1 = record({"f": q1[2]}, lambda: q1(x), use_input=True)["f"]
    assert out["plasticity/critic/0/feature_norm"] == pytest.approx(float(f0.norm(dim=1).mean()))
    assert out["plasticity/critic/1/feature_norm"] == pytest.approx(float(f1.norm(dim=1).mean()))
    assert out["plasticity/critic/1/srank"] == float(metrics.srank(f1))
    pooled = torch.cat([f0, f1], dim=1)
    pooled_norm = (f0.pow(2).sum(1) + f1.pow(2).sum(1)).sqrt().mean()
    assert out["plasticity/critic/feature_norm"] == pytest.approx(float(pooled_norm))
    assert out["plasticity/critic/srank"] == float(metrics.srank(pooled))
    assert out["plasticity/critic/srank"] > out["plasticity/critic/1/srank"]
    expected_w = math.sqrt(float(metrics.weight_norm(q0)) ** 2 + float(metrics.weight_norm(q1)) ** 2)
    assert out["plasticity/critic/weight_norm"] == pytest.approx(expected_w, rel=1e-6)


def test_reused_module_calls_are_concatenated() -> None:
    encoder = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU())
    with torch.no_grad():
        encoder[0].weight.copy_(torch.eye(2))
    x1 = torch.tensor([[1.0, -1.0]]).repeat(4, 1)  # only unit 0 fires
    x2 = torch.tensor([[-1.0, 1.0]]).repeat(4, 1)  # only unit 1 fires
    monitor = PlasticityMonitor({"enc": encoder})
    out = monitor.probe(lambda: (encoder(x1), encoder(x2)))
    # each call alone has one dormant unit; concatenated, none is dormant
    assert out["plasticity/enc/1/dormant_ratio"] == 0.0
    assert out["plasticity/enc/1/fau"] == pytest.approx(0.5)
    assert out["plasticity/enc/feature_norm"] == pytest.approx(1.0)
    assert PlasticityMonitor({"enc": encoder}).probe(lambda: encoder(x1))["plasticity/enc/1/dormant_ratio"] == 0.5


def test_shared_activation_instance_with_different_widths() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l1, self.l2, self.out = nn.Linear(4, 8), nn.Linear(8, 5), nn.Linear(5, 1)
            self.act = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(self.act(self.l2(self.act(self.l1(x)))))

    torch.manual_seed(8)
    net = Net()
    with torch.no_grad():
        net.l2.bias[0] = -100.0
    out = PlasticityMonitor({"net": net}).probe(lambda: net(obs()))
    assert "plasticity/net/act#0/dormant_ratio" in out and "plasticity/net/act#1/fau" in out
    assert out["plasticity/net/act#1/dormant_ratio"] >= 1 / 5
    assert out["plasticity/net/srank"] <= 5


def test_recorded_activations_survive_later_inplace_ops() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l = nn.Linear(4, 6)
            self.act = nn.ReLU(inplace=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.act(self.l(x))
            h.zero_()  # e.g. a residual "h += skip" also mutates the ReLU output
            return h

    torch.manual_seed(9)
    net = Net()
    x = obs()
    out = PlasticityMonitor({"net": net}).probe(lambda: net(x))
    with torch.no_grad():
        expected = torch.relu(net.l(x))
    assert out["plasticity/net/act/fau"] == pytest.approx(float(metrics.fau(expected)))
    assert out["plasticity/net/act/fau"] > 0.2


def test_grad_norm_present_only_with_grads() -> None:
    mlp = make_mlp()
    x = obs()
    monitor = PlasticityMonitor({"mlp": mlp})
    assert "plasticity/mlp/grad_norm" not in monitor.probe(lambda: mlp(x))
    mlp(x).pow(2).sum().backward()
    grads = [p.grad.clone() for p in mlp.parameters()]
    out = monitor.probe(lambda: mlp(x))
    assert out["plasticity/mlp/grad_norm"] == pytest.approx(float(metrics.grad_norm(mlp)), rel=1e-6)
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, mlp.parameters()))  # grads untouched


def test_single_host_transfer(monkeypatch: pytest.MonkeyPatch) -> None:
    mlp, cnn = make_mlp(), make_cnn()
    x, img = obs(), images()
    mlp(x).sum().backward()
    monitor = PlasticityMonitor({"mlp": mlp, "cnn": cnn}, histograms=True)
    calls = {"cpu": 0}
    real_cpu = torch.Tensor.cpu

    def counting_cpu(self: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        calls["cpu"] += 1
        return real_cpu(self, *args, **kwargs)

    def forbidden(*args, **kwargs):
        raise AssertionError("host sync")

    real_svd = metrics.singular_values

    def counting_svd(x: torch.Tensor) -> torch.Tensor:
        calls["svd"] += 1
        return real_svd(x)

    calls["svd"] = 0
    monkeypatch.setattr(metrics, "singular_values", counting_svd)
    monkeypatch.setattr(torch.Tensor, "cpu", counting_cpu)
    for name in ["item", "numpy", "__float__", "__int__", "__bool__"]:
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    out = monitor.probe(lambda: (mlp(x), cnn(img)))
    monkeypatch.undo()
    assert calls["cpu"] == 1
    assert calls["svd"] == 2  # one SVD per group (srank and effective rank share it)
    assert len(out) == (7 + 2 * 2) + (6 + 3 * 2)  # mlp has grads, cnn not
    assert len(monitor.last_histograms) == 10  # 5 layers x (dormant_score, activation_magnitude)


def test_histograms_cover_every_layer() -> None:
    mlp = make_mlp()
    x = obs()
    monitor = PlasticityMonitor({"mlp": mlp}, histograms=True)
    monitor.probe(lambda: mlp(x))
    assert sorted(monitor.last_histograms) == [
        "plasticity/mlp/1/activation_magnitude",
        "plasticity/mlp/1/dormant_score",
        "plasticity/mlp/3/activation_magnitude",
        "plasticity/mlp/3/dormant_score",
    ]
    acts = record({"1": mlp[1]}, lambda: mlp(x))["1"]
    torch.testing.assert_close(monitor.last_histograms["plasticity/mlp/1/dormant_score"], metrics.dormant_scores(acts))
    torch.testing.assert_close(monitor.last_histograms["plasticity/mlp/1/activation_magnitude"], acts.abs().mean(0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_probe_on_cuda() -> None:
    mlp, cnn = make_mlp().cuda(), make_cnn().cuda()
    x, img = obs().cuda(), images().cuda()
    out = PlasticityMonitor({"mlp": mlp, "cnn": cnn}, histograms=True).probe(lambda: (mlp(x), cnn(img)))
    cpu_out = PlasticityMonitor({"mlp": mlp.cpu(), "cnn": cnn.cpu()}).probe(lambda: (mlp(x.cpu()), cnn(img.cpu())))
    assert out.keys() == cpu_out.keys()
    for k in out:
        assert out[k] == pytest.approx(cpu_out[k], rel=1e-3, abs=1e-4), k


# ---- networks plasticrl did not write: functional activations, reused modules, odd declaration orders ----------


class CleanRLQ(nn.Module):
    """CleanRL's DQN/SAC Q-network shape: F.relu between Linear layers."""

    def __init__(self, i: int = 4, h: int = 8) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(i, h), nn.Linear(h, h), nn.Linear(h, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


def relu_layers(q: CleanRLQ, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two hidden ReLU outputs, computed without the network's forward."""
    h1 = torch.clamp(x @ q.fc1.weight.T + q.fc1.bias, min=0)
    return h1, torch.clamp(h1 @ q.fc2.weight.T + q.fc2.bias, min=0)


def dormant_by_hand(h: torch.Tensor, tau: float = 0.025) -> float:
    per_unit = h.abs().mean(dim=[d for d in range(h.dim()) if d != 1])
    return float((per_unit / per_unit.mean() <= tau).float().mean())


def test_functional_relu_network_gets_every_key_against_hand_computation() -> None:
    torch.manual_seed(10)
    q, x = CleanRLQ(), obs()
    with torch.no_grad():
        q.fc2.bias[:3] = -50.0  # three dead units in layer 2
        h1, h2 = relu_layers(q, x)
    out = PlasticityMonitor({"q": q}).probe(lambda: q(x))
    assert out["plasticity/q/relu_0/dormant_ratio"] == pytest.approx(dormant_by_hand(h1))
    assert out["plasticity/q/relu_1/dormant_ratio"] == pytest.approx(dormant_by_hand(h2))
    assert out["plasticity/q/relu_1/dormant_ratio"] >= 3 / 8
    units = 16
    dormant = dormant_by_hand(h1) * 8 + dormant_by_hand(h2) * 8
    assert out["plasticity/q/dormant_ratio"] == pytest.approx(dormant / units)
    assert out["plasticity/q/relu_0/fau"] == pytest.approx(float((h1 > 0).float().mean()))
    assert out["plasticity/q/fau"] == pytest.approx(float(((h1 > 0).sum() + (h2 > 0).sum()) / (2 * h1.numel())))
    assert out["plasticity/q/feature_norm"] == pytest.approx(float(h2.norm(dim=1).mean()))
    assert out["plasticity/q/srank"] == float(metrics.srank(h2))


def test_reused_activation_module_after_two_same_width_layers_is_measured_per_call() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l1, self.l2, self.out = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 1)
            self.act = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(self.act(self.l2(self.act(self.l1(x)))))

    torch.manual_seed(11)
    net, x = Net(), obs()
    with torch.no_grad():
        net.l1.bias[:4] = -50.0  # half of layer 1 is dead, layer 2 is not
        h1 = torch.clamp(x @ net.l1.weight.T + net.l1.bias, min=0)
        h2 = torch.clamp(h1 @ net.l2.weight.T + net.l2.bias, min=0)
    out = PlasticityMonitor({"net": net}).probe(lambda: net(x))
    assert out["plasticity/net/act#0/dormant_ratio"] == pytest.approx(dormant_by_hand(h1))
    assert dormant_by_hand(h1) >= 0.5
    assert out["plasticity/net/act#1/dormant_ratio"] == pytest.approx(dormant_by_hand(h2))
    assert out["plasticity/net/act#1/dormant_ratio"] < 0.5
    assert "plasticity/net/act/dormant_ratio" not in out  # not the two layers merged along the batch
    assert out["plasticity/net/act#1/fau"] == pytest.approx(float((h2 > 0).float().mean()))


def test_activation_modules_declared_after_the_last_linear() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2, self.fc3 = nn.Linear(4, 16), nn.Linear(16, 16), nn.Linear(16, 1)
            self.relu = nn.ReLU()  # registered last: the old monitor took the network's output as its features

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc3(self.relu(self.fc2(self.relu(self.fc1(x)))))

    torch.manual_seed(12)
    net, x = Net(), obs()
    out = PlasticityMonitor({"net": net}).probe(lambda: net(x))
    with torch.no_grad():
        h2 = net.relu(net.fc2(net.relu(net.fc1(x))))
        q = net(x)
    assert out["plasticity/net/srank"] == float(metrics.srank(h2)) > 1
    assert out["plasticity/net/feature_norm"] == pytest.approx(float(h2.norm(dim=1).mean()))
    assert out["plasticity/net/feature_norm"] != pytest.approx(float(q.abs().mean()))


def test_tanh_ended_actor_features_are_the_input_of_its_last_linear() -> None:
    torch.manual_seed(13)
    actor = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 1), nn.Tanh())
    x = obs()
    out = PlasticityMonitor({"actor": actor}).probe(lambda: actor(x))
    with torch.no_grad():
        h2 = actor[:4](x)
        h1 = actor[:2](x)
    assert out["plasticity/actor/srank"] == float(metrics.srank(h2)) > 1  # not 1, the rank of the actions
    assert "plasticity/actor/5/dormant_ratio" not in out  # the action squash is an output, not a layer
    units_dormant = dormant_by_hand(h1) * 16 + dormant_by_hand(h2) * 16
    assert out["plasticity/actor/dormant_ratio"] == pytest.approx(units_dormant / 32)


def test_layernorm_gelu_sigmoid_tanh_network_fau_only_where_defined() -> None:
    torch.manual_seed(14)
    net = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.GELU(), nn.Linear(8, 8), nn.Sigmoid(),
                        nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8), nn.Softplus(), nn.Linear(8, 1))
    x = obs()
    out = PlasticityMonitor({"net": net}).probe(lambda: net(x))
    with torch.no_grad():
        g, s, t, p = net[:3](x), net[:5](x), net[:7](x), net[:9](x)
    assert out["plasticity/net/2/fau"] == pytest.approx(float((g > 0).float().mean()))
    for layer in ("4", "6", "8"):  # Sigmoid, Tanh, Softplus: no FAU, not in the group's
        assert f"plasticity/net/{layer}/fau" not in out
        assert f"plasticity/net/{layer}/dormant_ratio" in out
    assert float((s > 0).float().mean()) == 1.0  # what a sigmoid would have reported
    assert out["plasticity/net/fau"] == pytest.approx(float((g > 0).float().mean()))
    dormant = sum(dormant_by_hand(h) * 8 for h in (g, s, t, p))
    assert out["plasticity/net/dormant_ratio"] == pytest.approx(dormant / 32)
    assert out["plasticity/net/feature_norm"] == pytest.approx(float(p.norm(dim=1).mean()))


def test_twin_functional_critics_as_a_list() -> None:
    torch.manual_seed(15)
    q1, q2 = CleanRLQ(4, 8), CleanRLQ(4, 8)
    x = obs()
    with torch.no_grad():
        q2.fc1.bias.fill_(-50.0)  # q2's first layer is dead, its second sees only biases
    out = PlasticityMonitor({"critic": [q1, q2]}).probe(lambda: (q1(x), q2(x)))
    with torch.no_grad():
        a1, a2 = relu_layers(q1, x)
        b1, b2 = relu_layers(q2, x)
    assert out["plasticity/critic/1.relu_0/dormant_ratio"] == 1.0
    assert out["plasticity/critic/0/fau"] == pytest.approx(float(((a1 > 0).sum() + (a2 > 0).sum()) / 1024))
    assert out["plasticity/critic/1/fau"] == pytest.approx(float((b2 > 0).sum() / 1024))
    all_active = sum(int((h > 0).sum()) for h in (a1, a2, b1, b2))
    assert out["plasticity/critic/fau"] == pytest.approx(all_active / 2048)
    assert out["plasticity/critic/0/srank"] == float(metrics.srank(a2))
    assert out["plasticity/critic/1/srank"] == float(metrics.srank(b2)) == 1  # bias only: one direction
    assert out["plasticity/critic/srank"] == float(metrics.srank(torch.cat([a2, b2], dim=1)))
    assert out["plasticity/critic/1/weight_norm"] == pytest.approx(float(metrics.weight_norm(q2)))


def test_dict_group_members_are_named_by_key() -> None:
    torch.manual_seed(16)
    q1, q2 = CleanRLQ(), CleanRLQ()
    x = obs()
    out = PlasticityMonitor({"critic": {"q1": q1, "q2": q2}}).probe(lambda: (q1(x), q2(x)))
    with torch.no_grad():
        h1, _ = relu_layers(q2, x)
    assert out["plasticity/critic/q2.relu_0/fau"] == pytest.approx(float((h1 > 0).float().mean()))
    assert "plasticity/critic/q1/srank" in out and "plasticity/critic/q2/feature_norm" in out


def test_small_conv_net_with_functional_relus() -> None:
    class Conv(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.relu(self.c2(F.relu(self.c1(x)))).flatten(1)  # an encoder: its output is the feature

    torch.manual_seed(17)
    enc, img = Conv(), images()
    with torch.no_grad():
        enc.c1.bias[2] = -100.0
        h1 = torch.clamp(F.conv2d(img, enc.c1.weight, enc.c1.bias), min=0)
        h2 = torch.clamp(F.conv2d(h1, enc.c2.weight, enc.c2.bias), min=0)
    out = PlasticityMonitor({"enc": enc}).probe(lambda: enc(img))
    assert out["plasticity/enc/relu_0/dormant_ratio"] == pytest.approx(dormant_by_hand(h1))
    assert dormant_by_hand(h1) >= 0.25  # channel 2 of 4
    assert out["plasticity/enc/relu_1/dormant_ratio"] == pytest.approx(dormant_by_hand(h2))
    active = int((h1 > 0).sum()) + int((h2 > 0).sum())
    assert out["plasticity/enc/fau"] == pytest.approx(active / (h1.numel() + h2.numel()))
    assert out["plasticity/enc/feature_norm"] == pytest.approx(float(h2.flatten(1).norm(dim=1).mean()))


def test_group_without_measurable_activation_warns_once() -> None:
    class Clamped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l1, self.l2 = nn.Linear(4, 8), nn.Linear(8, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.l2(self.l1(x).clamp(min=0))  # a ReLU the monitor cannot see

    net, other, x = Clamped(), make_mlp(), obs()
    monitor = PlasticityMonitor({"clamped": net, "idle": other})
    with pytest.warns(RuntimeWarning) as record:
        out = monitor.probe(lambda: net(x))
    messages = sorted(str(w.message) for w in record)
    assert len(messages) == 2
    assert "'clamped'" in messages[0] and "x.clamp(min=0)" in messages[0]
    assert "'idle'" in messages[1] and "none of its modules ran" in messages[1]
    assert "plasticity/clamped/fau" not in out and "plasticity/clamped/srank" in out
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        monitor.probe(lambda: net(x))  # warned once per group


def test_linear_groups_are_measured_without_a_warning() -> None:
    """A group with no nonlinearity by design (linear modulators) gets its weight and feature metrics, no warning;
    the same group not named linear is warned about."""
    lin = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 3))
    x = obs()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = PlasticityMonitor({"lin": lin}, linear_groups=["lin"]).probe(lambda: lin(x))
    assert "plasticity/lin/fau" not in out and "plasticity/lin/dormant_ratio" not in out
    assert any(k.startswith("plasticity/lin/") for k in out)
    with pytest.warns(RuntimeWarning, match="'lin'"):
        PlasticityMonitor({"lin": lin}).probe(lambda: lin(x))
