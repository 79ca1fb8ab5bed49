"""Critic.fused_heads / DrQ(fused_q_heads=True): the twin Q heads as batched matmuls give the two MLPs' values,
FAU, gradients and updates, keep the flag through save/load, and leave the plasticity monitor's numbers unchanged."""

import pytest
import torch

from plasticrl.agents import DrQ
from plasticrl.agents.drq import Critic
from plasticrl.lab.bench import synthetic_batch
from plasticrl.monitor import PlasticityMonitor
from plasticrl.sb3 import default_groups, probe_forward


def count_fused_calls(monkeypatch):
    """Counts calls of Critic.twin_heads (the fused path), so a test can tell which path ran."""
    calls = []
    original = Critic.twin_heads

    def counted(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Critic, "twin_heads", counted)
    return calls


def critic_outputs(critic, h, action):
    """q1, q2 of forward and forward_with_fau, FAU, and the gradients of a fixed function of them w.r.t. every
    critic parameter and both inputs."""
    h, action = h.clone().requires_grad_(True), action.clone().requires_grad_(True)
    critic.zero_grad(set_to_none=True)
    q1, q2 = critic(h, action)
    f1, f2, fau = critic.forward_with_fau(h, action)
    w = torch.linspace(-1.0, 2.0, q1.shape[0]).unsqueeze(1)  # different weights per sample and head
    (w * q1 - 0.5 * w * q2 + (f1 - 3 * f2).pow(2)).sum().backward()
    grads = {name: p.grad.clone() for name, p in critic.named_parameters()}
    return (q1, q2, f1, f2, fau), grads, (h.grad, action.grad)


def test_fused_forward_and_gradients_equal_the_two_mlps(monkeypatch):
    torch.manual_seed(0)
    critic = Critic(repr_dim=20, action_dim=3, feature_dim=8, hidden_dim=16)
    h, action = torch.randn(32, 20), torch.rand(32, 3) * 2 - 1
    calls = count_fused_calls(monkeypatch)
    ref_out, ref_grads, ref_in = critic_outputs(critic, h, action)
    assert calls == []
    critic.fused_heads = True
    out, grads, inputs = critic_outputs(critic, h, action)
    assert len(calls) == 2  # forward and forward_with_fau both took the fused path
    assert out[0].shape == out[1].shape == (32, 1) and out[4].shape == ()
    assert 0 < float(ref_out[4]) < 1  # some units active, some not: the FAU comparison means something
    for got, ref in zip(out, ref_out):
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)
    assert float(out[4]) == float(ref_out[4])  # same count over the same units
    assert set(grads) == set(ref_grads)
    for name, g in grads.items():
        torch.testing.assert_close(g, ref_grads[name], rtol=0, atol=1e-5, msg=name)
        assert ref_grads[name].abs().sum() > 0 or name.startswith("trunk"), name
    for got, ref in zip(inputs, ref_in):
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)


def test_fused_heads_are_not_swapped():
    """q1 and q2 come from their own head (equal heads would hide a swap)."""
    torch.manual_seed(0)
    critic = Critic(repr_dim=20, action_dim=3, feature_dim=8, hidden_dim=16)
    with torch.no_grad():
        critic.q2[-1].bias += 5.0
    h, action = torch.randn(4, 20), torch.rand(4, 3)
    critic.fused_heads = True
    q1, q2 = critic(h, action)
    torch.testing.assert_close(q1, critic.q1(critic._features(h, action)), rtol=0, atol=1e-6)
    torch.testing.assert_close(q2, critic.q2(critic._features(h, action)), rtol=0, atol=1e-6)


def test_hooks_on_a_head_turn_the_fused_path_off(monkeypatch):
    torch.manual_seed(0)
    critic = Critic(repr_dim=20, action_dim=3, feature_dim=8, hidden_dim=16)
    critic.fused_heads = True
    calls = count_fused_calls(monkeypatch)
    seen = []
    handle = critic.q2[3].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    critic(torch.randn(5, 20), torch.rand(5, 3))
    assert calls == [] and seen == [(5, 16)]
    handle.remove()
    critic(torch.randn(5, 20), torch.rand(5, 3))
    assert calls == [1] and len(seen) == 1


def test_drq_update_with_fused_heads_equals_unfused(monkeypatch, tiny_pixel_env, tiny_drq):
    env = tiny_pixel_env()
    a, b = tiny_drq(env), tiny_drq(env, fused_q_heads=True)
    assert not a.critic.fused_heads and not a.critic_target.fused_heads
    assert b.critic.fused_heads and b.critic_target.fused_heads
    for (name, pa), pb in zip(a.policy.named_parameters(), b.policy.parameters()):
        assert torch.equal(pa, pb), name  # same seed, same init
    shape, adim = a.observation_space.shape, a.action_space.shape[0]
    batches = [synthetic_batch(8, shape, adim, torch.device("cpu"), s) for s in range(2)]
    calls = count_fused_calls(monkeypatch)
    for i, batch in enumerate(batches):
        torch.manual_seed(100 + i)
        sa = a.update(batch)
        assert calls == []
        torch.manual_seed(100 + i)
        sb = b.update(batch)
        assert len(calls) == 3  # target critic, online critic with FAU, critic for the actor loss
        calls.clear()
        for key in sa:
            torch.testing.assert_close(sb[key], sa[key], rtol=0, atol=1e-5, msg=key)
    assert 0 < float(sa["critic_fau"]) < 1
    for (name, pa), pb in zip(a.policy.named_parameters(), b.policy.parameters()):
        torch.testing.assert_close(pb, pa, rtol=0, atol=1e-5, msg=name)
    for (name, pa), pb in zip(a.critic_target.named_parameters(), b.critic_target.parameters()):
        torch.testing.assert_close(pb, pa, rtol=0, atol=1e-5, msg=name)
    env.close()


def test_save_load_keeps_the_flag(tmp_path, tiny_pixel_env, tiny_drq):
    env = tiny_pixel_env()
    fused, plain = tiny_drq(env, fused_q_heads=True), tiny_drq(env)
    fused.save(tmp_path / "fused.zip")
    plain.save(tmp_path / "plain.zip")
    loaded = DrQ.load(tmp_path / "fused.zip", device="cpu")
    assert loaded.fused_q_heads and loaded.critic.fused_heads and loaded.critic_target.fused_heads
    loaded_plain = DrQ.load(tmp_path / "plain.zip", device="cpu")
    assert not loaded_plain.fused_q_heads and not loaded_plain.critic.fused_heads
    assert not loaded_plain.critic_target.fused_heads
    # same parameters and state-dict keys with or without the flag: checkpoints are interchangeable
    assert list(loaded.policy.state_dict()) == list(plain.policy.state_dict())
    for (k, v), v2 in zip(fused.policy.state_dict().items(), loaded.policy.state_dict().values()):
        assert torch.equal(v, v2), k
    plain.set_parameters(str(tmp_path / "fused.zip"))
    assert not plain.critic.fused_heads  # loading weights doesn't change this agent's option
    env.close()


def test_monitor_critic_metrics_identical_with_and_without_fused_heads(tiny_pixel_env, tiny_drq):
    env = tiny_pixel_env()
    a, b = tiny_drq(env), tiny_drq(env, fused_q_heads=True)
    shape, adim = a.observation_space.shape, a.action_space.shape[0]
    batch = synthetic_batch(16, shape, adim, torch.device("cpu"), 0)
    groups = ["critic", "critic_target"]
    logs = []
    for model in (a, b):
        torch.manual_seed(0)  # the probe forward samples actor actions
        monitor = PlasticityMonitor(default_groups(model, groups))
        logs.append(monitor.probe(probe_forward(model, batch)))
    assert "plasticity/critic/q1.1/fau" in logs[0] and "plasticity/critic/srank" in logs[0]
    assert logs[1] == logs[0]
    # after the probe (hooks removed) the agent runs fused again
    assert b.critic._fused() and b.critic_target._fused()
    env.close()


def test_config_key_agent_fused_q_heads(tiny_pixel_env):
    from plasticrl.lab.config import train as cfgmod
    from plasticrl.lab.train import build_agent

    cfg = cfgmod.validate({"run": {"total_steps": 1000}, "agent": {"fused_q_heads": True}})
    env = tiny_pixel_env()
    model = build_agent(cfg, env, "cpu")
    assert model.fused_q_heads and model.critic.fused_heads and model.critic_target.fused_heads
    assert not build_agent(cfgmod.validate({"run": {"total_steps": 1000}}), env, "cpu").critic.fused_heads
    with pytest.raises(cfgmod.ConfigError, match="agent.fused_q_heads: True is a DrQ option"):
        cfgmod.validate({"env": {"pixels": False}, "agent": {"kind": "sac", "fused_q_heads": True}})
    env.close()
