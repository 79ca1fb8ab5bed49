"""Tests for plasticrl.metrics against hand computations."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from torch import nn

from plasticrl import metrics
from plasticrl.metrics import (
    dormant_mask,
    dormant_ratio,
    dormant_scores,
    effective_rank,
    effective_rank_from_singular_values,
    fau,
    feature_norm,
    grad_norm,
    singular_values,
    srank,
    srank_from_singular_values,
    weight_norm,
)


def _layer_with_unit_means(means: list[float]) -> torch.Tensor:
    """(2, units) activations whose per-unit mean |h| equals ``means``.

    Row 0 holds +2m, row 1 holds 0 for even units; for odd units both rows hold
    -m and +m (signs must not matter: |h| is averaged).
    """
    rows = [[], []]
    for i, m in enumerate(means):
        if i % 2 == 0:
            rows[0].append(2 * m)
            rows[1].append(0.0)
        else:
            rows[0].append(-m)
            rows[1].append(m)
    return torch.tensor(rows)


def test_dormant_scores_normalised_by_layer_mean() -> None:
    means = [0.0, 0.02, 2.0, 2.0, 4.0]
    h = _layer_with_unit_means(means)
    layer_mean = (0.0 + 0.02 + 2.0 + 2.0 + 4.0) / 5  # 1.604
    expected = [m / layer_mean for m in means]  # [0, 0.012469, 1.2469, 1.2469, 2.4938]
    scores = dormant_scores(h)
    assert scores.shape == (5,)
    assert scores.dtype == torch.float32
    torch.testing.assert_close(scores, torch.tensor(expected))


def test_dormant_only_because_of_normalisation() -> None:
    # Unit 1 has raw mean |h| 0.02 > tau = 0.015, but 0.02 / 1.604 = 0.0125 <= tau.
    h = _layer_with_unit_means([0.0, 0.02, 2.0, 2.0, 4.0])
    tau = 0.015
    assert dormant_mask(h, tau).tolist() == [True, True, False, False, False]
    assert dormant_ratio(h, tau).tolist() == pytest.approx(2 / 5)
    # Conversely, uniformly tiny units (raw 0.001 < tau) are not dormant: score 1.
    tiny = _layer_with_unit_means([0.001] * 4)
    torch.testing.assert_close(dormant_scores(tiny), torch.ones(4))
    assert dormant_ratio(tiny, tau).tolist() == 0.0


def test_dormant_default_tau() -> None:
    # scores: [0, 0.03/1.206 = 0.0249, 0.04/1.206 = 0.0332, 1.99, 3.98] (layer mean 6.03/5)
    h = _layer_with_unit_means([0.0, 0.03, 0.04, 2.0, 4.0])
    assert dormant_mask(h).tolist() == [True, True, False, False, False]


def test_score_equal_to_tau_is_dormant() -> None:
    h = _layer_with_unit_means([0.5, 1.5])  # layer mean 1 -> scores exactly [0.5, 1.5]
    assert dormant_mask(h, tau=0.5).tolist() == [True, False]
    assert dormant_mask(h, tau=0.49).tolist() == [False, False]


def test_all_zero_layer_is_fully_dormant_without_nan() -> None:
    h = torch.zeros(16, 7)
    scores = dormant_scores(h)
    assert not torch.isnan(scores).any()
    assert scores.tolist() == [0.0] * 7
    assert dormant_mask(h).all()
    assert dormant_ratio(h).tolist() == 1.0
    assert fau(h).tolist() == 0.0


def test_conv_activations_are_scored_per_channel() -> None:
    h = torch.zeros(4, 3, 5, 5)
    # channel 0: zero everywhere -> dormant
    h[:, 1, 2, 3] = 100.0  # channel 1: one spatial position only, but large
    h[:, 2] = 1.0  # channel 2: uniformly 1
    # per-channel mean |h| = [0, 100/25 = 4, 1]; layer mean 5/3
    expected = [0.0, 4.0 / (5 / 3), 1.0 / (5 / 3)]
    torch.testing.assert_close(dormant_scores(h), torch.tensor(expected))
    assert dormant_mask(h).tolist() == [True, False, False]
    assert dormant_ratio(h).tolist() == pytest.approx(1 / 3)
    # FAU over all 4*3*5*5 = 300 entries: 4 (ch 1) + 100 (ch 2) positive.
    assert fau(h).tolist() == pytest.approx(104 / 300)


def test_dormant_scores_reject_1d() -> None:
    with pytest.raises(ValueError):
        dormant_scores(torch.ones(5))


def test_fau_of_known_relu_output() -> None:
    pre = torch.tensor([[-1.0, 0.0, 2.0, 0.5], [3.0, -4.0, 0.0, 1e-3], [-2.0, -1.0, -0.1, 7.0]])
    post = torch.relu(pre)
    # positives: 2.0, 0.5 | 3.0, 1e-3 | 7.0 -> 5 of 12
    assert fau(post).tolist() == pytest.approx(5 / 12)
    # sign convention for non-ReLU activations: "> 0" as well
    assert fau(torch.tanh(pre)).tolist() == pytest.approx(5 / 12)


def _equal_sv_matrix(n: int, d: int, k: int, scale: float = 3.0) -> torch.Tensor:
    """(n, d) matrix with exactly k singular values, all equal to ``scale``."""
    g = torch.Generator().manual_seed(k)
    u, _ = torch.linalg.qr(torch.randn(n, k, generator=g))
    v, _ = torch.linalg.qr(torch.randn(d, k, generator=g))
    return scale * u @ v.T


@pytest.mark.parametrize("k", [1, 3, 10, 40])
def test_srank_and_effective_rank_of_rank_k_matrix(k: int) -> None:
    x = _equal_sv_matrix(256, 64, k)
    assert srank(x).tolist() == k
    assert srank(x, delta=0.0001).tolist() == k
    assert effective_rank(x).tolist() == pytest.approx(k, rel=1e-3)


def test_effective_rank_between_one_and_k_for_unequal_values() -> None:
    g = torch.Generator().manual_seed(0)
    x = (
        torch.randn(256, 5, generator=g)
        @ torch.diag(torch.tensor([10.0, 5, 2, 1, 0.5]))
        @ torch.randn(5, 64, generator=g)
    )
    er = effective_rank(x).tolist()
    assert 1.0 < er < 5.0
    assert 1 <= srank(x).tolist() <= 5


def test_srank_hand_example_with_known_singular_values() -> None:
    x = torch.diag(torch.tensor([4.0, 3.0, 2.0, 1.0]))  # total 10, cumsum 4, 7, 9, 10
    assert srank(x, delta=0.01).tolist() == 4  # threshold 9.9
    assert srank(x, delta=0.15).tolist() == 3  # threshold 8.5
    assert srank(x, delta=0.35).tolist() == 2  # threshold 6.5
    assert srank(x, delta=0.30).tolist() == 2  # threshold 7.0 reached exactly at k=2
    assert srank(x, delta=0.7).tolist() == 1  # threshold 3.0
    assert srank(x, delta=0.0).tolist() == 4
    assert srank(x).dtype == torch.int64
    p = [0.4, 0.3, 0.2, 0.1]
    expected = math.exp(-sum(q * math.log(q) for q in p))
    assert effective_rank(x).tolist() == pytest.approx(expected, rel=1e-5)


def test_ranks_from_given_singular_values() -> None:
    sigma = torch.tensor([4.0, 3.0, 2.0, 1.0])
    assert srank_from_singular_values(sigma, delta=0.15).tolist() == 3
    assert srank_from_singular_values(sigma, delta=0.01).tolist() == 4
    assert effective_rank_from_singular_values(torch.tensor([5.0, 5.0, 0.0])).tolist() == pytest.approx(2.0)
    assert srank_from_singular_values(torch.zeros(3)).tolist() == 0
    assert effective_rank_from_singular_values(torch.zeros(3)).tolist() == 0.0


def test_zero_singular_values_count_as_zero_log_zero() -> None:
    x = torch.diag(torch.tensor([2.0, 0.0, 0.0]))
    assert srank(x).tolist() == 1
    assert effective_rank(x).tolist() == pytest.approx(1.0)


def test_all_zero_features_give_rank_zero() -> None:
    x = torch.zeros(32, 8)
    assert srank(x).tolist() == 0
    er = effective_rank(x)
    assert not torch.isnan(er)
    assert er.tolist() == 0.0
    assert feature_norm(x).tolist() == 0.0


def test_features_with_extra_dims_are_flattened() -> None:
    x = _equal_sv_matrix(16, 6, 2).reshape(16, 2, 3)
    assert srank(x).tolist() == 2
    torch.testing.assert_close(singular_values(x), singular_values(x.reshape(16, 6)))


def test_low_precision_features_are_computed_in_float32() -> None:
    x = _equal_sv_matrix(64, 16, 4).to(torch.bfloat16)
    assert singular_values(x).dtype == torch.float32
    assert srank(x).tolist() == 4
    assert effective_rank(x).dtype == torch.float32


def test_feature_norm_by_hand() -> None:
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0], [6.0, 8.0]])
    assert feature_norm(x).tolist() == pytest.approx((5 + 0 + 10) / 3)
    # per-sample flattening: sample norms of (2, 2, 2) are sqrt(4 * 1) and sqrt(4 * 9)
    y = torch.stack([torch.ones(2, 2), 3 * torch.ones(2, 2)])
    assert feature_norm(y).tolist() == pytest.approx((2 + 6) / 2)


def test_weight_norm_by_hand() -> None:
    lin = nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        lin.bias.copy_(torch.tensor([-1.0, 5.0]))
    assert weight_norm(lin).tolist() == pytest.approx(math.sqrt(1 + 4 + 9 + 16 + 1 + 25))
    # shared parameters are counted once
    net = nn.Sequential(lin, lin)
    assert weight_norm(net).tolist() == pytest.approx(math.sqrt(56))
    assert weight_norm(nn.ReLU()).tolist() == 0.0


def test_grad_norm_by_hand() -> None:
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    assert grad_norm(net).tolist() == 0.0  # no grads yet
    x = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    net(x).sum().backward()
    expected = math.sqrt(sum(float((p.grad**2).sum()) for p in net.parameters()))
    assert grad_norm(net).tolist() == pytest.approx(expected, rel=1e-6)
    # only grads that exist count
    net[1].weight.grad = None
    net[1].bias.grad = None
    expected = math.sqrt(sum(float((p.grad**2).sum()) for p in net[0].parameters()))
    assert grad_norm(net).tolist() == pytest.approx(expected, rel=1e-6)


def test_all_functions_return_0dim_tensors() -> None:
    h = torch.relu(torch.randn(8, 5))
    lin = nn.Linear(3, 2)
    lin(torch.randn(4, 3)).sum().backward()
    scalars = [
        dormant_ratio(h),
        fau(h),
        srank(h),
        effective_rank(h),
        feature_norm(h),
        weight_norm(lin),
        grad_norm(lin),
    ]
    for value in scalars:
        assert isinstance(value, torch.Tensor)
        assert value.dim() == 0
    for value in scalars[:2] + scalars[3:]:
        assert value.dtype == torch.float32


_SYNC_METHODS = ["item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__index__"]


def test_no_host_sync_methods_are_called(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forbid every Tensor -> Python conversion while the metrics run."""
    h = torch.relu(torch.randn(8, 4, 3, 3))
    f = torch.randn(8, 6)
    lin = nn.Linear(3, 2)
    lin(torch.randn(4, 3)).sum().backward()

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("host sync")

    for name in _SYNC_METHODS:
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    with pytest.raises(AssertionError):  # the patch is effective
        float(torch.ones(()))
    outs = [
        dormant_scores(h),
        dormant_mask(h),
        dormant_ratio(h),
        fau(h),
        singular_values(f),
        srank(f),
        effective_rank(f),
        srank_from_singular_values(torch.tensor([2.0, 1.0])),
        effective_rank_from_singular_values(torch.tensor([2.0, 1.0])),
        feature_norm(f),
        weight_norm(lin),
        grad_norm(lin),
    ]
    monkeypatch.undo()
    assert all(isinstance(o, torch.Tensor) for o in outs)


def test_cpu_svd_errors_are_not_swallowed(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("svd failed")

    monkeypatch.setattr(torch.linalg, "svdvals", broken)
    with pytest.raises(RuntimeError, match="svd failed"):
        singular_values(torch.randn(4, 3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_svd_failure_falls_back_to_cpu_and_warns_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = torch.linalg.svdvals

    def cuda_broken(x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda:
            raise RuntimeError("cusolver error")
        return real(x)

    monkeypatch.setattr(torch.linalg, "svdvals", cuda_broken)
    monkeypatch.setattr(metrics, "_svd_fallback_warned", False)
    x = torch.diag(torch.tensor([4.0, 3.0, 2.0, 1.0])).cuda()
    with caplog.at_level(logging.WARNING, logger="plasticrl.metrics"):
        s1 = singular_values(x)
        s2 = srank(x, delta=0.15)
    assert s1.is_cuda and s2.is_cuda
    assert s1.tolist() == [4.0, 3.0, 2.0, 1.0]
    assert s2.tolist() == 3
    assert len([r for r in caplog.records if "falling back to CPU" in r.getMessage()]) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_metrics_stay_on_device_without_sync() -> None:
    h = torch.relu(torch.randn(64, 8, 4, 4, device="cuda"))
    f = torch.randn(64, 16, device="cuda")
    lin = nn.Linear(3, 2).cuda()
    lin(torch.randn(4, 3, device="cuda")).sum().backward()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        outs = [
            dormant_ratio(h),
            fau(h),
            feature_norm(f),
            weight_norm(lin),
            grad_norm(lin),
        ]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(o.is_cuda for o in outs)
    ranks = [srank(f), effective_rank(f)]  # svdvals itself may sync inside torch
    assert all(r.is_cuda for r in ranks)


def test_fau_of_a_list_pools_entries_over_layers() -> None:
    a = torch.tensor([[1.0, -1.0], [0.0, 2.0]])  # 2 of 4 entries > 0
    b = torch.tensor([[3.0, -2.0, 0.0]])  # 1 of 3
    assert fau([a, b]).tolist() == pytest.approx(3 / 7)  # not the mean of the layers' FAUs, (1/2 + 1/3) / 2
    assert fau((a, b)).tolist() == pytest.approx(3 / 7)
    assert fau([a]).tolist() == fau(a).tolist() == 0.5
    conv = torch.zeros(2, 2, 2, 2)
    conv[0, 0] = 1.0  # 4 of 16 entries
    assert fau([conv, b]).tolist() == pytest.approx(5 / 19)


def test_dormant_of_a_list_scores_each_layer_on_its_own_and_counts_units_together() -> None:
    a = _layer_with_unit_means([0.05, 2.0])  # layer mean 1.025: scores 0.0488, 1.951, none dormant
    b = _layer_with_unit_means([10.0, 10.0, 10.0])  # scores 1, 1, 1
    torch.testing.assert_close(dormant_scores([a, b]), torch.tensor([0.05 / 1.025, 2.0 / 1.025, 1.0, 1.0, 1.0]))
    assert dormant_mask([a, b]).tolist() == [False] * 5
    assert dormant_ratio([a, b]).tolist() == 0.0
    # as one layer of 5 units, unit 0 would be dormant: 0.05 / 6.41 <= 0.025
    assert dormant_ratio(torch.cat([a, b], dim=1)).tolist() == pytest.approx(1 / 5)
    dead = torch.zeros(4, 3)
    assert dormant_ratio([a, dead]).tolist() == pytest.approx(3 / 5)  # 0 of a's 2 units and all 3 of dead's


def test_list_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="empty"):
        fau([])
    with pytest.raises(TypeError):
        dormant_ratio([torch.ones(2, 2), [1.0]])


def test_list_metrics_do_not_sync(monkeypatch: pytest.MonkeyPatch) -> None:
    layers = [torch.relu(torch.randn(8, 4, 3, 3)), torch.relu(torch.randn(8, 5))]

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("host sync")

    for name in _SYNC_METHODS:
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    outs = [fau(layers), dormant_ratio(layers), dormant_scores(layers), dormant_mask(layers)]
    monkeypatch.undo()
    assert [o.shape for o in outs] == [(), (), (9,), (9,)]
