"""Tests for plasticrl.capture: activations by call site, functional and module, against hand computations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from plasticrl import metrics
from plasticrl.capture import ACTIVATION_KINDS, ACTIVATION_TYPES, FAU_KINDS, capture, capture_groups


class FunctionalQ(nn.Module):
    """CleanRL's QNetwork shape: Linear layers, F.relu between them."""

    def __init__(self, i: int = 4, h: int = 8) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(i, h), nn.Linear(h, h), nn.Linear(h, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def lin(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """An independent affine map: x W^T + b."""
    return x @ layer.weight.T + layer.bias


def obs(n: int = 64, d: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def no_hooks_or_modes(*roots: nn.Module) -> bool:
    hooks = any(m._forward_hooks or m._forward_pre_hooks for r in roots for m in r.modules())
    return not hooks and torch._C._len_torch_function_stack() == 0


def test_functional_relu_calls_recorded_in_order_with_outputs_and_features() -> None:
    torch.manual_seed(0)
    q, x = FunctionalQ(), obs()
    with capture(q, features=True) as acts:
        q(x)
    with torch.no_grad():
        h1 = torch.clamp(lin(q.fc1, x), min=0)
        h2 = torch.clamp(lin(q.fc2, h1), min=0)
    assert [(c.name, c.kind, c.member, c.is_output) for c in acts.calls] == [
        ("relu_0", "relu", "", False),
        ("relu_1", "relu", "", False),
    ]
    torch.testing.assert_close(acts.calls[0].output, h1)
    torch.testing.assert_close(acts.calls[1].output, h2)
    torch.testing.assert_close(acts.features[""], h2)  # the input of fc3, the last Linear that ran
    expected_fau = (int((h1 > 0).sum()) + int((h2 > 0).sum())) / (h1.numel() + h2.numel())
    assert metrics.fau(acts.outputs(fau_only=True)).tolist() == pytest.approx(expected_fau)
    assert no_hooks_or_modes(q)


def test_capture_leaves_values_and_gradients_unchanged() -> None:
    torch.manual_seed(1)
    q, x = FunctionalQ(), obs()
    q(x).pow(2).sum().backward()
    grads = [p.grad.clone() for p in q.parameters()]
    q.zero_grad()
    with capture(q) as acts:
        y = q(x)
    y.pow(2).sum().backward()
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, q.parameters()))
    assert all(not c.output.requires_grad for c in acts.calls)


def test_reused_module_and_functional_calls_are_one_site_per_call() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l1, self.l2, self.out = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 1)
            self.act = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(torch.tanh(self.act(self.l2(self.act(self.l1(x))))))

    torch.manual_seed(2)
    net, x = Net(), obs()
    with capture(net) as acts:
        net(x)
    assert [(c.name, c.kind) for c in acts.calls] == [("act#0", "relu"), ("act#1", "relu"), ("tanh_0", "tanh")]
    with torch.no_grad():
        h1 = torch.clamp(lin(net.l1, x), min=0)
        h2 = torch.clamp(lin(net.l2, h1), min=0)
    layers = acts.layers()
    torch.testing.assert_close(layers["act#0"], h1)
    torch.testing.assert_close(layers["act#1"], h2)
    assert list(acts.layers(fau_only=True)) == ["act#0", "act#1"]


def test_calls_of_one_site_in_several_forwards_are_concatenated() -> None:
    torch.manual_seed(3)
    q = FunctionalQ()
    x1, x2 = obs(seed=1), obs(seed=2)
    with capture(q, features=True) as acts:
        q(x1)
        q(x2)
    layers = acts.layers()
    assert list(layers) == ["relu_0", "relu_1"]
    with torch.no_grad():
        expected = torch.clamp(lin(q.fc1, torch.cat([x1, x2])), min=0)
    torch.testing.assert_close(layers["relu_0"], expected)
    assert acts.features[""].shape == (128, 8)


def test_every_functional_spelling_is_seen_with_its_kind() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.l(x)
            outs = [F.relu(h), torch.relu(h), h.relu(), F.leaky_relu(h, 0.1), F.gelu(h), F.silu(h), F.elu(h),
                    torch.tanh(h), F.tanh(h), h.sigmoid(), torch.sigmoid(h), F.softplus(h), F.relu(h.clone(), True),
                    F.hardtanh(h), F.mish(h)]
            return torch.stack(outs).sum(0)

    net = Net()
    with capture(net) as acts:
        net(obs())
    kinds = [c.kind for c in acts.calls]
    assert kinds == ["relu", "relu", "relu", "leaky_relu", "gelu", "silu", "elu", "tanh", "tanh", "sigmoid",
                     "sigmoid", "softplus", "relu", "hardtanh", "mish"]
    assert [c.name for c in acts.calls][:4] == ["relu_0", "relu_1", "relu_2", "leaky_relu_0"]
    assert set(kinds) <= ACTIVATION_KINDS
    with torch.no_grad():
        h = lin(net.l, obs())
    torch.testing.assert_close(acts.calls[3].output, torch.where(h > 0, h, 0.1 * h))


def test_activation_modules_of_every_type_have_their_kind() -> None:
    net = nn.Sequential(*[m for t in ACTIVATION_TYPES for m in (nn.Linear(4, 4), t())])
    with capture(net) as acts:
        net(obs())
    expected = ["relu", "relu6", "leaky_relu", "prelu", "rrelu", "elu", "selu", "celu", "gelu", "silu", "mish",
                "hardswish", "hardtanh", "tanh", "sigmoid", "hardsigmoid", "softplus", "softsign"]
    # the last one (Softsign) follows the last Linear: a squash of a head's output, not a layer
    assert [c.kind for c in acts.calls] == expected
    assert [c.is_output for c in acts.calls] == [False] * 17 + [True]
    assert [c.name for c in acts.calls][:2] == ["1", "3"]
    assert FAU_KINDS <= set(expected) and not FAU_KINDS & {"tanh", "sigmoid", "softplus", "hardsigmoid"}


def test_tanh_squash_after_last_linear_is_an_output_and_features_are_its_input() -> None:
    torch.manual_seed(4)
    actor = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2), nn.Tanh())
    x = obs()
    with capture(actor, features=True) as acts:
        actor(x)
    assert [(c.name, c.is_output) for c in acts.calls] == [("1", False), ("3", False), ("5", True)]
    assert list(acts.layers()) == ["1", "3"] and len(acts.outputs()) == 2
    with torch.no_grad():
        h2 = actor[:4](x)
    torch.testing.assert_close(acts.features[""], h2)
    assert metrics.srank(acts.features[""]).tolist() > 2  # not the 2 action dims


def test_one_layer_projection_and_relu_ended_encoder_keep_their_activations_and_output() -> None:
    torch.manual_seed(5)
    proj = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Tanh())  # one weight layer: its output is the feature
    enc = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU())  # ends in a ReLU: an encoder
    x = obs()
    with capture_groups({"proj": proj, "enc": enc}, features=True) as acts:
        proj(x)
        enc(x)
    assert [(c.name, c.is_output) for c in acts["proj"].calls] == [("2", False)]
    assert [(c.name, c.is_output) for c in acts["enc"].calls] == [("1", False), ("3", False)]
    with torch.no_grad():
        torch.testing.assert_close(acts["proj"].features[""], proj(x))
        torch.testing.assert_close(acts["enc"].features[""], enc(x))


def test_only_calls_inside_the_captured_forward_count() -> None:
    torch.manual_seed(6)
    q, other = FunctionalQ(), nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    x = obs()
    with capture(q) as acts:
        torch.relu(x)  # in the block but outside any forward of q
        other(x)  # another module's activation
        F.relu(q(x))  # applied to q's output, outside q's forward
    assert [c.name for c in acts.calls] == ["relu_0", "relu_1"]


def test_data_dependent_control_flow_needs_no_tracing() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.l(x)
            for _ in range(int(x.shape[0] > 10) + 1):  # a Python loop whose length depends on the data
                h = torch.relu(h) if h.sum() > -1e9 else torch.tanh(h)
            return h

    net = Branchy()
    with capture(net) as acts:
        net(obs(n=16))
    assert [c.name for c in acts.calls] == ["relu_0", "relu_1"]


def test_twin_critics_as_a_list_give_the_pooled_fau_of_both_heads() -> None:
    torch.manual_seed(7)
    q1 = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))
    q2 = FunctionalQ(4, 6)
    x = obs()
    with torch.no_grad():
        q2.fc1.bias.fill_(-10.0)  # head 2's first layer is dead
    with capture([q1, q2], features=True) as acts:
        q1(x)
        q2(x)
    assert [(c.name, c.member) for c in acts.calls] == [("0.1", "0"), ("0.3", "0"), ("1.relu_0", "1"),
                                                        ("1.relu_1", "1")]
    with torch.no_grad():
        hidden = [q1[:2](x), q1[:4](x)]
        g1 = torch.clamp(lin(q2.fc1, x), min=0)
        hidden += [g1, torch.clamp(lin(q2.fc2, g1), min=0)]
    active = sum(int((h > 0).sum()) for h in hidden)
    entries = sum(h.numel() for h in hidden)
    assert metrics.fau(acts.outputs(fau_only=True)).tolist() == pytest.approx(active / entries)
    assert int((hidden[2] > 0).sum()) == 0
    assert sorted(acts.features) == ["0", "1"]
    torch.testing.assert_close(acts.features["0"], hidden[1])
    torch.testing.assert_close(acts.features["1"], hidden[3])


def test_small_functional_conv_net_per_channel_sites() -> None:
    class Conv(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3)
            self.fc, self.out = nn.Linear(4 * 4 * 4, 8), nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = F.relu(self.c2(F.relu(self.c1(x))))
            return self.out(F.relu(self.fc(h.flatten(1))))

    torch.manual_seed(8)
    net = Conv()
    img = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        net.c2.bias[1] = -100.0  # channel 1 of the second conv never fires
    with capture(net, features=True) as acts:
        net(img)
    layers = acts.layers()
    assert {k: tuple(v.shape) for k, v in layers.items()} == {"relu_0": (16, 4, 6, 6), "relu_1": (16, 4, 4, 4),
                                                               "relu_2": (16, 8)}
    with torch.no_grad():
        h2 = torch.clamp(F.conv2d(torch.clamp(F.conv2d(img, net.c1.weight, net.c1.bias), min=0), net.c2.weight,
                                  net.c2.bias), min=0)
    per_channel = h2.abs().mean(dim=(0, 2, 3))
    scores = per_channel / per_channel.mean()
    assert scores[1].tolist() == 0.0
    assert metrics.dormant_ratio(layers["relu_1"]).tolist() == pytest.approx(float((scores <= 0.025).float().mean()))
    assert acts.features[""].shape == (16, 8)  # the input of `out`


def test_clone_false_keeps_references() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = F.relu(self.l(x))
            h.mul_(0)  # an in-place change after the activation
            return h

    net, x = Net(), obs()
    with capture(net) as cloned:
        net(x)
    with capture(net, clone=False) as shared:
        net(x)
    assert cloned.calls[0].output.abs().sum().tolist() > 0
    assert shared.calls[0].output.abs().sum().tolist() == 0.0


def test_hooks_and_mode_removed_after_an_exception() -> None:
    q = FunctionalQ()
    with pytest.raises(ValueError, match="boom"):
        with capture(q):
            q(obs())
            raise ValueError("boom")
    assert no_hooks_or_modes(q)


def test_group_types() -> None:
    q1, q2 = FunctionalQ(), FunctionalQ()
    with capture({"a": q1, "b": q2}) as acts:
        q2(obs())
    assert {c.member for c in acts.calls} == {"b"} and acts.calls[0].name == "b.relu_0"
    with pytest.raises(TypeError):
        with capture("critic"):  # type: ignore[arg-type]
            pass
