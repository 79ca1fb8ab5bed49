"""The Decision Transformer's optimisation as L2M's code sets it up: linear warmup then a single cosine cycle
(``learning_rate_at``), weight decay on Linear weights only (``weight_decay_groups``), and an ``L2MAgent`` whose
optimizer follows both in a real training run."""

import math

import numpy as np
import pytest
import torch

from plasticrl.agents.l2m import DTConfig, L2MAgent
from plasticrl.agents.l2m.optim import learning_rate_at, weight_decay_groups
from plasticrl.modulation import ModulationPool

SMALL = DTConfig(state_dim=7, max_action_dim=3, context=4, d_model=32, n_layers=2, n_heads=2, dropout=0.0,
                 max_timestep=50)


def episodes(n=2, steps=10, seed=0):
    rng = np.random.default_rng(seed)
    return [{"observations": rng.normal(size=(steps + 1, 5)), "actions": rng.uniform(-1, 1, (steps, 2)),
             "rewards": np.ones(steps)} for _ in range(n)]


def test_schedule_at_chosen_steps_matches_a_hand_computation():
    """base 1e-3, 4 warmup steps, cosine over 20 steps to 1e-5: the warmup's first step has base/4, the cosine
    starts at base on step 4, is half-way (cos(pi/2) = 0) on step 4 + 10 and stays at the floor from step 4 + 20."""
    def lr(step, schedule="cosine"):
        return learning_rate_at(step, 1e-3, schedule, warmup_steps=4, total_steps=20, final=1e-5)

    assert lr(0) == pytest.approx(2.5e-4) and lr(2) == pytest.approx(7.5e-4) and lr(3) == pytest.approx(1e-3)
    assert lr(4) == pytest.approx(1e-3)
    assert lr(9) == pytest.approx(1e-5 + (1e-3 - 1e-5) * (1 + math.cos(math.pi / 4)) / 2)  # c = 5 of 20
    assert lr(14) == pytest.approx((1e-3 + 1e-5) / 2)
    assert lr(23) == pytest.approx(1e-5 + (1e-3 - 1e-5) * (1 + math.cos(math.pi * 19 / 20)) / 2)
    assert lr(24) == lr(100) == 1e-5
    assert lr(0, "constant") == pytest.approx(2.5e-4) and lr(4, "constant") == lr(1000, "constant") == 1e-3
    assert learning_rate_at(0, 1e-3) == 1e-3  # no warmup, constant
    with pytest.raises(ValueError, match="total_steps"):
        learning_rate_at(5, 1e-3, "cosine", warmup_steps=2)
    with pytest.raises(ValueError, match="lr schedule"):
        learning_rate_at(0, 1e-3, "linear")


def test_schedule_equals_torchs_schedulers_chained_as_l2m_chains_them():
    """Independent computation: torch's LambdaLR warmup, then its CosineAnnealingLR (T_max = the run's steps,
    eta_min), joined by SequentialLR at the warmup's end and stepped once per update, as L2M's _setup_policy
    builds them; the learning rate of every update agrees with ``learning_rate_at`` over the whole run."""
    base, warmup, total, final = 1e-3, 5, 30, 1e-6
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=base)
    warm = torch.optim.lr_scheduler.LambdaLR(opt, lambda n: min((n + 1) / warmup, 1))
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total, eta_min=final)
    chained = torch.optim.lr_scheduler.SequentialLR(opt, [warm, cosine], milestones=[warmup])
    for step in range(total):
        assert opt.param_groups[0]["lr"] == pytest.approx(
            learning_rate_at(step, base, "cosine", warmup, total, final), rel=1e-9), step
        opt.step()
        chained.step()


def test_only_linear_weights_get_weight_decay():
    agent = L2MAgent(SMALL, device="cpu")
    names = {id(p): n for n, p in agent.model.named_parameters()}
    decay, no_decay = agent.optimizer.param_groups
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.01, 0.0)
    linear = {"embed_rtg.weight", "embed_state.weight", "head.weight"} | {
        f"blocks.{i}.{layer}.weight" for i in range(2)
        for layer in ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj", "ff.fc1", "ff.fc2")}
    assert {names[id(p)] for p in decay["params"]} == linear
    rest = {names[id(p)] for p in no_decay["params"]}
    assert rest == set(names.values()) - linear
    assert {"embed_action.weight", "embed_timestep.weight", "embed_type.weight", "embed_ln.weight", "ln_f.bias",
            "blocks.0.ln1.weight", "head.bias", "blocks.1.ff.fc1.bias"} <= rest
    # a pool's parameters (raw LoRA factors and keys) fall in the undecayed group, as in L2M's get_optim_groups
    pool = ModulationPool(pool_size=3, key_dim=32, rank=2)
    agent.attach_pool(pool)
    groups = weight_decay_groups(agent.model, pool.parameters(), 0.01)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.0
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in pool.parameters()}


def test_weight_decay_acts_on_linear_weights_only_in_a_step():
    """With zero gradients an AdamW step changes only decayed parameters, each by the factor 1 - lr * wd."""
    agent = L2MAgent(SMALL, device="cpu", learning_rate=0.1, weight_decay=0.5)
    before = {n: p.detach().clone() for n, p in agent.model.named_parameters()}
    for p in agent.model.parameters():
        p.grad = torch.zeros_like(p)
    agent.optimizer.step()
    decayed = {id(p) for p in agent.optimizer.param_groups[0]["params"]}
    for n, p in agent.model.named_parameters():
        expected = before[n] * (1 - 0.1 * 0.5) if id(p) in decayed else before[n]
        assert torch.allclose(p.detach(), expected, atol=1e-7), n


def test_a_training_run_follows_the_schedule():
    """A tiny real run (3 warmup steps, cosine over 8 steps): at each step the optimizer holds the hand-computed
    learning rate, and the first AdamW step moves every undecayed parameter with a non-zero gradient by that rate
    (Adam's first update is lr * g / (|g| + eps))."""
    base, warmup, total, final = 1e-2, 3, 8, 1e-4

    def hand(step):
        if step < warmup:
            return base * (step + 1) / warmup
        return final + (base - final) * (1 + math.cos(math.pi * (step - warmup) / total)) / 2

    agent = L2MAgent(SMALL, device="cpu", learning_rate=base, batch_size=4, lr_schedule="cosine",
                     warmup_steps=warmup, schedule_steps=total, min_learning_rate=final)
    seen = []
    agent.learn(episodes(), steps=total,
                callback=lambda step, loss: seen.append([g["lr"] for g in agent.optimizer.param_groups]))
    assert len(seen) == total
    for step, rates in enumerate(seen):
        assert rates == pytest.approx([hand(step)] * 2, rel=1e-12), step

    fresh = L2MAgent(SMALL, device="cpu", learning_rate=base, batch_size=4, lr_schedule="cosine",
                     warmup_steps=warmup, schedule_steps=total, min_learning_rate=final)
    head_bias = fresh.model.head.bias
    before = head_bias.detach().clone()
    data = fresh.prepare_episodes(episodes())
    fresh.train_step(fresh.sample_batch(data))
    moved = (head_bias.detach() - before).abs()
    grad = head_bias.grad.abs()
    assert (grad > 1e-4).sum() > 5
    assert torch.allclose(moved[grad > 1e-4], torch.full_like(moved[grad > 1e-4], base / warmup), rtol=1e-3)


def test_checkpoint_keeps_the_schedule_and_lr_stays_a_float_in_the_file(tmp_path):
    agent = L2MAgent(SMALL, device="cpu", learning_rate=1e-3, batch_size=4, lr_schedule="cosine",
                     warmup_steps=2, schedule_steps=6, min_learning_rate=1e-5)
    agent.learn(episodes(), steps=4)
    agent.save(tmp_path / "a.pt")
    saved = torch.load(tmp_path / "a.pt", weights_only=False)
    assert all(type(g["lr"]) is float for g in saved["optimizer"]["param_groups"])
    loaded = L2MAgent.load(tmp_path / "a.pt", device="cpu")
    assert (loaded.lr_schedule, loaded.warmup_steps, loaded.schedule_steps, loaded.min_learning_rate) == \
        ("cosine", 2, 6, 1e-5)
    assert loaded.num_steps == 4 and loaded.lr_at(4) == agent.lr_at(4) != agent.lr_at(3)
    loaded.learn(episodes(), steps=1)  # step 4 of the schedule
    assert loaded.optimizer.param_groups[0]["lr"] == pytest.approx(agent.lr_at(4))
    # a file from before the two groups: the weights load, the AdamW state does not (with a warning)
    saved["optimizer"]["param_groups"] = saved["optimizer"]["param_groups"][:1]
    torch.save(saved, tmp_path / "old.pt")
    with pytest.warns(UserWarning, match="parameter groups"):
        old = L2MAgent.load(tmp_path / "old.pt", device="cpu")
    assert not old.optimizer.state
    assert all(torch.equal(a, b) for a, b in zip(old.model.parameters(), agent.model.parameters()))
    with pytest.raises(ValueError, match="total_steps"):
        L2MAgent(SMALL, device="cpu", lr_schedule="cosine")  # a cosine needs the run's length
