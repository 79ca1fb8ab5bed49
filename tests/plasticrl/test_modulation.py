"""Tests for plasticrl.modulation.ModulationPool (L2M)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from plasticrl.modulation import ModulatedLinear, ModulationPool

D, OBS = 16, 6


class Block(nn.Module):
    """A tiny single-head transformer block with explicitly named Linear layers."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(OBS, D)
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(D, D), nn.Linear(D, D), nn.Linear(D, D)
        self.out_proj = nn.Linear(D, D)
        self.fc1, self.fc2 = nn.Linear(D, 2 * D), nn.Linear(2 * D, D)
        self.head = nn.Linear(D, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, OBS) -> (B, T, 3)."""
        h = self.embed(x)
        att = torch.softmax(self.q_proj(h) @ self.k_proj(h).transpose(1, 2) / D**0.5, dim=-1)
        h = h + self.out_proj(att @ self.v_proj(h))
        h = h + self.fc2(torch.relu(self.fc1(h)))
        return self.head(h)


def make_block() -> tuple[Block, torch.Tensor]:
    torch.manual_seed(0)
    return Block(), torch.randn(4, 5, OBS)


@pytest.mark.parametrize(("kind", "wrapped", "perturbed"), [("lora", ["q_proj", "v_proj", "fc1"], "fc1"),
                                                           ("ia3", ["k_proj", "v_proj", "fc2"], "fc2")])
def test_fresh_entry_is_bit_identical_and_detach_restores(kind: str, wrapped: list[str], perturbed: str) -> None:
    """L2M's placement: LoRA on q, v and fc1, (IA)^3 on k, v and fc2 (its input, the activation); nothing else."""
    model, x = make_block()
    originals = {n: getattr(model, n) for n in ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]}
    ref = model(x)
    pool = ModulationPool(pool_size=5, key_dim=D, rank=4, kind=kind, top_k=2)
    assert pool.attach(model) == wrapped
    assert all(isinstance(getattr(model, n), ModulatedLinear) == (n in wrapped) for n in originals)
    idx = torch.tensor([[0, 1], [4, 2], [3, 3], [1, 0]])
    with pool.selected(idx):
        assert torch.equal(model(x), ref)
        # the wrappers really act: perturbing entry 4 changes only sample 1
        mod = pool.modulators[perturbed]
        with torch.no_grad():
            (mod.B if kind == "lora" else mod.scale)[4] += 0.5
        out = model(x)
    assert not torch.equal(out[1], ref[1])
    assert torch.equal(out[[0, 2, 3]], ref[[0, 2, 3]])
    assert torch.equal(model(x), ref)  # selection cleared after the context
    pool.detach()
    assert all(getattr(model, n) is m for n, m in originals.items())
    assert torch.equal(model(x), ref)


def test_only_pool_parameters_get_gradients() -> None:
    model, x = make_block()
    pool = ModulationPool(pool_size=5, key_dim=D, rank=4)
    pool.attach(model)
    n_frozen = pool.freeze_backbone(model)
    pool_ids = {id(p) for p in pool.parameters()}
    expected = [pool.keys] + [p for m in pool.modulators.values() for p in (m.A, m.B)]
    assert pool_ids == {id(p) for p in expected} and len(pool_ids) == 1 + 3 * 2  # q, v, fc1
    assert n_frozen == 8 * 2  # 8 Linear layers (weight, bias), base layers of the wrappers included

    query = model.embed(x).mean(dim=1)  # (B, D)
    idx = pool.select(query)
    with pool.selected(idx):
        loss = model(x).pow(2).mean() + pool.key_loss(query, idx)
    loss.backward()
    for name, p in model.named_parameters():
        if id(p) in pool_ids:
            assert p.grad is not None, name
        else:
            assert p.grad is None and not p.requires_grad, name
    assert pool.keys.grad is not None and pool.keys.grad[idx.unique()].abs().sum() > 0
    b_grad = pool.modulators["fc1"].B.grad  # B is zero, so only dL/dB is non-zero
    used = torch.zeros(5, dtype=torch.bool)
    used[idx.reshape(-1)] = True
    assert b_grad[used].abs().sum() > 0 and b_grad[~used].abs().sum() == 0


def test_key_loss_value() -> None:
    pool = ModulationPool(pool_size=3, key_dim=4, pull_coef=0.5)
    with torch.no_grad():
        pool.keys.copy_(torch.eye(4)[:3] * 3.0)
    query = torch.tensor([[2.0, 0, 0, 0], [0, 0, 0, 1.0]])
    idx = torch.tensor([[0], [1]])
    # 1 - cos: 0 for sample 0 (same direction), 1 for sample 1 (orthogonal) -> 0.5 * mean = 0.25
    assert pool.key_loss(query, idx).item() == pytest.approx(0.25)


def test_selection_learns_one_key_per_cluster_and_eval_ignores_task_id() -> None:
    torch.manual_seed(0)
    centers = torch.linalg.qr(torch.randn(8, 8)).Q[:3] * 2.0  # 3 orthogonal cluster centres
    pool = ModulationPool(pool_size=10, key_dim=8, count_penalty=True)
    opt = torch.optim.Adam(pool.parameters(), lr=0.05)
    trained, used = [], []
    for task, center in enumerate(centers):  # one task per cluster, as in continual training
        for _ in range(150):
            query = center + 0.1 * torch.randn(32, 8)
            idx = pool.select(query, task_id=task)
            loss = pool.key_loss(query, idx)
            opt.zero_grad()
            loss.backward()
            opt.step()
        trained.append(int(idx.mode(dim=0).values))
        used.append(set(pool.task_counts.nonzero().flatten().tolist()))
        pool.end_task()
    # with hard top-1 selection an early tie can pull two keys onto one cluster (seen for a few
    # seeds); the entries a task used never overlap another task's thanks to the usage penalty
    assert len(set(trained)) == 3 and not (used[0] & used[1] or used[0] & used[2] or used[1] & used[2])
    pool.eval()
    for task, center in enumerate(centers):
        query = center + 0.1 * torch.randn(64, 8)
        idx = pool.select(query)
        assert set(idx.flatten().tolist()) <= used[task]
        assert F.cosine_similarity(pool.keys[trained[task]], center, dim=0).item() > 0.95
        assert torch.equal(pool.select(query, task_id=task), idx)
        assert torch.equal(pool.select(query, task_id=(task + 1) % 3), idx)


@pytest.mark.parametrize("count_penalty", [True, False])
def test_usage_penalty_steers_new_task_to_unused_entry(count_penalty: bool) -> None:
    torch.manual_seed(0)
    pool = ModulationPool(pool_size=5, key_dim=4, count_penalty=count_penalty)
    keys = torch.cat([torch.eye(4), torch.tensor([[0.6, 0.0, 0.8, 0.0]])])  # entry 4: cos 0.8 to entry 2
    with torch.no_grad():
        pool.keys.copy_(keys)
    query = torch.tensor([0.0, 0.0, 1.0, 0.0]) + 0.05 * torch.randn(16, 4)  # most similar to entry 2
    for _ in range(5):  # task 0 uses entry 2; its own counts never push it away
        assert torch.all(pool.select(query) == 2)
    pool.end_task()
    assert pool.counts.tolist() == [0, 0, 80, 0, 0]

    idx = pool.select(query, task_id=1)  # task 1, same kind of queries
    if count_penalty:
        assert torch.all(idx == 4)  # most similar among the entries task 0 left unused
    else:
        assert torch.all(idx == 2)
    before = pool.task_counts.clone()
    pool.eval()
    assert torch.all(pool.select(query, task_id=1) == 2)  # evaluation: plain cosine
    assert torch.equal(pool.task_counts, before)  # nothing counted at evaluation
    assert torch.all(pool.select(query, evaluate=False) == (4 if count_penalty else 2))


@pytest.mark.parametrize("site", ["input", "output"])
@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("shape", [(4, 3, 5), (4, 5)])
def test_lora_math_per_sample(top_k: int, shape: tuple[int, ...], site: str) -> None:
    """input: W x + b + 2 x A^T B^T (standard LoRA); output: h = W x + b, h + 2 h A^T B^T (L2M's on fc1)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 2))
    pool = ModulationPool(pool_size=4, key_dim=3, rank=3, kind="lora", top_k=top_k)
    pool.attach(model, targets={"0": site})
    mod = pool.modulators["0"]
    assert mod.A.shape == (4, 3, 5 if site == "input" else 7) and mod.B.shape == (4, 7, 3)
    with torch.no_grad():
        mod.B.normal_()
    x = torch.randn(*shape)
    idx = torch.tensor([[0, 2], [3, 1], [1, 1], [3, 0]])[:, :top_k]
    with pool.selected(idx):
        out = model[0](x)
    base = model[0].base
    for b in range(shape[0]):
        h = base(x[b])
        source = x[b] if site == "input" else h
        delta = sum(source @ mod.A[e].T @ mod.B[e].T for e in idx[b].tolist()) / top_k
        torch.testing.assert_close(out[b], h + 2.0 * delta, rtol=1e-5, atol=1e-5)  # scale = alpha / rank = 2


@pytest.mark.parametrize("site", ["input", "output"])
def test_lora_gradients_in_float64_match_the_per_sample_formula(site: str) -> None:
    """A float64 model (the pool's weights take its dtype): output and gradients of x, A and B equal autograd
    through the per-sample sum over each row's entries, an entry picked twice counting twice."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7)).double()
    pool = ModulationPool(pool_size=4, key_dim=3, rank=3, kind="lora", top_k=3)
    pool.attach(model, targets={"0": site})
    mod = pool.modulators["0"]
    with torch.no_grad():
        mod.B.normal_()
    x = torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True)
    idx = torch.tensor([[0, 2, 3], [3, 1, 0], [1, 1, 2], [3, 0, 0]])  # 1/3 is not exact in float32
    with pool.selected(idx):
        out = model[0](x)
    out.pow(2).sum().backward()
    got = out.detach(), x.grad.clone(), mod.A.grad.clone(), mod.B.grad.clone()
    x.grad = mod.A.grad = mod.B.grad = None
    base, rows = model[0].base, []
    for b in range(4):
        h = base(x[b])
        source = x[b] if site == "input" else h
        rows.append(h + 2.0 * sum(source @ mod.A[e].T @ mod.B[e].T for e in idx[b].tolist()) / 3)
    want = torch.stack(rows)
    want.pow(2).sum().backward()
    for g, w in zip(got, (want.detach(), x.grad, mod.A.grad, mod.B.grad)):
        assert g.dtype == torch.float64
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


def test_feed_forward_lora_term_by_hand() -> None:
    """L2M's LoRA on the first feed-forward layer's output, on a 2 -> 3 layer with rank 1, numbers by hand:
    W = [[1, 0], [0, 1], [1, 1]], b = [0, 0, 1], x = [1, 2] -> h = W x + b = [1, 2, 4];
    A = [1, 0, 1] (h -> rank 1): h A = 5; B = [1, 2, 0] -> h + 2 * 5 * B = [11, 22, 4]."""
    layer = nn.Linear(2, 3)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        layer.bias.copy_(torch.tensor([0.0, 0.0, 1.0]))
    model = nn.Sequential(layer)
    pool = ModulationPool(pool_size=2, key_dim=2, rank=1, kind="lora")
    pool.attach(model, targets={"0": "output"})
    mod = pool.modulators["0"]
    with torch.no_grad():
        mod.A[1] = torch.tensor([[1.0, 0.0, 1.0]])
        mod.B[1] = torch.tensor([[1.0], [2.0], [0.0]])
    with pool.selected(torch.tensor([[1], [0]])):
        out = model(torch.tensor([[1.0, 2.0], [1.0, 2.0]]))
    assert out[0].tolist() == [11.0, 22.0, 4.0]
    assert out[1].tolist() == [1.0, 2.0, 4.0]  # entry 0: B = 0, the layer alone


def test_ia3_scaling_by_hand() -> None:
    """(IA)^3 as L2M: keys and values scaled at the projections' outputs, the feed-forward activation at fc2's input.
    k_proj = identity on 2 dims, l_k = [2, 3], x = [1, -1] -> k = [2, -3]; fc2 = [[1, 1]] (no bias) with
    l_ff = [0.5, 4] on its input [1, -1] -> 1 * 0.5 + (-1) * 4 = -3.5 (fc2's own output is 1 - 1 = 0, which no
    output scaling would move)."""
    k_proj, fc2 = nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        k_proj.weight.copy_(torch.eye(2))
        fc2.weight.copy_(torch.tensor([[1.0, 1.0]]))
    model = nn.ModuleDict({"k_proj": k_proj, "fc2": fc2})
    pool = ModulationPool(pool_size=2, key_dim=2, kind="ia3")
    assert pool.attach(model, targets={"k_proj": "output", "fc2": "input"}) == ["k_proj", "fc2"]
    with torch.no_grad():
        pool.modulators["k_proj"].scale[1] = torch.tensor([2.0, 3.0])
        pool.modulators["fc2"].scale[1] = torch.tensor([0.5, 4.0])
    x = torch.tensor([[1.0, -1.0]])
    with pool.selected(torch.tensor([[1]])):
        assert model["k_proj"](x).tolist() == [[2.0, -3.0]]
        assert model["fc2"](x).tolist() == [[-3.5]]
    with pool.selected(torch.tensor([[0]])):  # ones: the layers alone
        assert model["k_proj"](x).tolist() == [[1.0, -1.0]] and model["fc2"](x).tolist() == [[0.0]]


def test_ia3_math_per_sample() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7))
    pool = ModulationPool(pool_size=3, key_dim=3, kind="ia3", top_k=2)
    pool.attach(model, targets=["0"])  # a list: the kind's default site, the output
    mod = pool.modulators["0"]
    with torch.no_grad():
        mod.scale.uniform_(0.5, 1.5)
    x = torch.randn(2, 4, 5)
    idx = torch.tensor([[0, 2], [1, 1]])
    with pool.selected(idx):
        out = model(x)
    for b in range(2):
        expected = model[0].base(x[b]) * mod.scale[idx[b]].mean(0)
        torch.testing.assert_close(out[b], expected)


class TinyDT(nn.Module):
    """Two blocks named like the Decision Transformer's (blocks.<i>.attn.{q,k,v}_proj, blocks.<i>.ff.fc{1,2})."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.ModuleDict({
            "attn": nn.ModuleDict({n: nn.Linear(d, d) for n in ("q_proj", "k_proj", "v_proj", "out_proj")}),
            "ff": nn.ModuleDict({"fc1": nn.Linear(d, 4 * d), "fc2": nn.Linear(4 * d, d)})}) for _ in range(2))


def test_l2m_lora_init_is_one_kaiming_uniform_over_the_pool() -> None:
    """L2M: kaiming_uniform_(a=sqrt(5)) on lora_a of shape (pool, n_layer, 6, d, rank) (src/algos/prompt/l2m.py),
    whose fan-in torch takes as n_layer * 6 * d * rank: bound 1 / sqrt(2 * 6 * 16 * 4) = 1 / sqrt(768) = 0.0361 for
    2 blocks of width 16, rank 4. Here every A is U(-bound, bound) with that bound; the standard placement draws A
    per layer like nn.Linear, bound 1 / sqrt(width)."""
    torch.manual_seed(0)
    d, rank, pool_size = 16, 4, 30
    fan_in, _ = nn.init._calculate_fan_in_and_fan_out(torch.empty(pool_size, 2, 6, d, rank))
    bound = 1 / 768 ** 0.5
    assert fan_in == 768 and abs(bound - 0.036084) < 1e-6
    pool = ModulationPool(pool_size=pool_size, key_dim=d, rank=rank)
    names = pool.attach(TinyDT(d))
    assert names == [f"blocks.{b}.{n}" for b in range(2) for n in ("attn.q_proj", "attn.v_proj", "ff.fc1")]
    a = torch.cat([m.A.reshape(-1) for m in pool.modulators.values()])
    assert [m.A.shape[-1] for m in pool.modulators.values()] == [d, d, 4 * d] * 2  # fc1's A reads its output
    assert a.abs().max() <= bound and a.abs().max() > 0.99 * bound
    assert abs(a.std().item() - bound / 3 ** 0.5) < 0.02 * bound  # uniform: std = bound / sqrt(3)
    standard = ModulationPool(pool_size=pool_size, key_dim=d, rank=rank, placement="standard")
    names = standard.attach(TinyDT(d))
    assert [n.rsplit(".", 1)[1] for n in names] == ["q_proj", "v_proj", "fc1", "fc2"] * 2
    for name, mod in standard.modulators.items():
        width = 4 * d if name.endswith("fc2") else d
        assert mod.A.shape[-1] == width and 0.95 / width ** 0.5 < mod.A.abs().max() <= 1 / width ** 0.5


def test_oracle_picks_task_block() -> None:
    pool = ModulationPool(pool_size=6, key_dim=4, top_k=2)
    q1, q2 = torch.randn(3, 4), torch.randn(3, 4)
    assert pool.select(q1, task_id=0, oracle=True).tolist() == [[0, 1]] * 3
    assert pool.select(q2, task_id=2, oracle=True).tolist() == [[4, 5]] * 3
    assert pool.select(q1, task_id=4, oracle=True).tolist() == [[2, 3]] * 3  # wraps: 8 % 6, 9 % 6
    pool.eval()
    assert pool.select(q2, task_id=1, oracle=True).tolist() == [[2, 3]] * 3
    single = ModulationPool(pool_size=5, key_dim=4)
    assert single.select(q1, task_id=7, oracle=True).tolist() == [[2]] * 3
    with pytest.raises(ValueError):
        single.select(q1, oracle=True)


def test_attach_targets_and_errors() -> None:
    model, _ = make_block()
    pool = ModulationPool(pool_size=3, key_dim=D)
    assert pool.attach(model, targets=["k_proj"]) == ["k_proj"]
    assert isinstance(model.k_proj, ModulatedLinear) and isinstance(model.q_proj, nn.Linear)
    with pytest.raises(RuntimeError):
        pool.attach(model)
    pool.detach()
    with pytest.raises(ValueError):
        pool.attach(model, targets=["nope"])
    with pytest.raises(ValueError, match="no nn.Linear layer named or ending in 'fc3'"):
        pool.attach(model, targets={"fc1": "output", "fc3": "output"})
    with pytest.raises(ValueError, match="sites must be one of"):
        pool.attach(model, targets={"fc1": "middle"})
    with pytest.raises(ValueError):
        pool.set_selection(torch.tensor([[3]]))
    with pytest.raises(ValueError):
        ModulationPool(pool_size=3, key_dim=D, kind="adapter")
    with pytest.raises(ValueError, match="placement 'standard' does not exist for ia3"):
        ModulationPool(pool_size=3, key_dim=D, kind="ia3", placement="standard")
