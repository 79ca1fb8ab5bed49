"""``plasticrl.sb3.InterventionCallback`` on stock SB3 algorithms (SAC, DQN) on real gymnasium envs, at small sizes:
when scheduled and metric-triggered interventions fire, what they change in the model (layers, Adam state, target
networks, checked against copies taken before), and what reaches SB3's logger (``progress.csv``) and the run log."""

from __future__ import annotations

import csv

import pytest
import torch
from stable_baselines3 import DQN, SAC
from stable_baselines3.common.logger import configure

from plasticrl import interventions as iv
from plasticrl.runlog import RunLogger, read_jsonl
from plasticrl.sb3 import InterventionCallback, PlasticityCallback, optimizers_of, target_pairs_of


def small() -> dict:
    return {"policy_kwargs": {"net_arch": [16, 16]}, "device": "cpu", "seed": 0}


def sac(tmp_path, **kw) -> SAC:
    model = SAC("MlpPolicy", "Pendulum-v1", learning_starts=50, batch_size=16, **small(), **kw)
    model.set_logger(configure(str(tmp_path / "sb3"), ["csv"]))
    return model


def progress(tmp_path) -> list[dict[str, str]]:
    with open(tmp_path / "sb3" / "progress.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_reset_of_the_critic_heads_changes_only_them_clears_their_adam_state_and_syncs_the_target(tmp_path):
    """SAC after 120 steps (Adam state exists): Reset("last2") on the critic group re-initialises, in both Q networks
    (qf0, qf1: Linear 3+1 -> 16 -> 16 -> 1), the last two Linear layers; every other parameter of the policy is
    bit-identical; the reset layers' Adam moments and step are zero; the target critic's copies of exactly those
    layers equal the online ones, the rest of the target is untouched."""
    model = sac(tmp_path)
    model.learn(120)
    callback = InterventionCallback([iv.ScheduledIntervention(iv.Reset("last2"), "critic", iv.Schedule(at=(10**9,)))])
    callback.init_callback(model)
    before = {n: p.detach().clone() for n, p in model.policy.named_parameters()}
    target_before = {n: p.detach().clone() for n, p in model.policy.critic_target.named_parameters()}
    record = callback.apply(callback.interventions[0])
    reset = {f"critic.qf{q}.{i}.{w}" for q in (0, 1) for i in (2, 4) for w in ("weight", "bias")}
    changed = {n for n, p in model.policy.named_parameters() if not torch.equal(p, before[n])}
    assert changed == reset | {name.replace("critic.", "critic_target.", 1) for name in reset}  # synced copies
    assert record["intervention/reset/critic/layers_reset"] == 4 and record["intervention/reset/critic/count"] == 1
    params = dict(model.policy.named_parameters())
    state = model.critic.optimizer.state
    for name in reset:
        s = state[params[name]]
        assert not s["exp_avg"].any() and not s["exp_avg_sq"].any() and float(s["step"]) == 0
    untouched = params["critic.qf0.0.weight"]
    assert state[untouched]["exp_avg"].any() and float(state[untouched]["step"]) > 0
    for name, p in model.policy.critic_target.named_parameters():
        if f"critic.{name}" in reset:
            assert torch.equal(p, params[f"critic.{name}"])
        else:
            assert torch.equal(p, target_before[name])


def test_metric_trigger_fires_at_probes_and_records_reach_sb3_and_the_run_log(tmp_path):
    """ReDo on the critic whenever the critic's dormant ratio is >= 0 (always, so it fires at each probe: steps 100,
    200, 300, 400), with min_gap 150: fires at 100 and 300 only. Each firing is followed by a probe of its own
    (probe_after), which does not trigger again. The records land in metrics.jsonl at those steps and in
    progress.csv (SB3 dumps at the episode ends, 200 and 400, with log_interval=1)."""
    model = sac(tmp_path)
    run_logger = RunLogger(tmp_path / "run", wandb_settings={"mode": "disabled"})
    probes = PlasticityCallback(run_logger, every=100, batch_size=32)
    trigger = iv.Trigger("plasticity/critic/dormant_ratio", ">=", 0.0)
    redo = iv.ScheduledIntervention(iv.ReDo(tau=0.1), "critic", iv.Schedule(when=trigger, min_gap=150))
    callback = InterventionCallback([redo], run_logger, plasticity=probes, batch_size=32)
    model.learn(400, callback=[probes, callback], log_interval=1)
    run_logger.close()
    assert [step for step, *_ in callback.history] == [100, 300]
    assert probes.probes == 4 + 2
    rows = read_jsonl(tmp_path / "run")
    fired = [r["env_step"] for r in rows if "intervention/redo/critic/count" in r]
    assert fired == [100, 300]
    logged = [r for r in rows if "intervention/redo/critic/units" in r]
    assert all(r["intervention/redo/critic/units"] == 64 for r in logged)  # 2 Q nets x 2 hidden ReLUs x 16
    rows = progress(tmp_path)
    assert len(rows) == 2 and rows[0]["intervention/redo/critic/count"] == "1"
    assert rows[1]["intervention/redo/critic/count"] == "2" and float(rows[0]["intervention/redo/critic/units"]) == 64


def test_a_metric_trigger_without_the_monitor_callback_is_refused(tmp_path):
    model = sac(tmp_path)
    trigger = iv.Trigger("plasticity/critic/fau", "<", 0.5)
    callback = InterventionCallback([iv.ScheduledIntervention(iv.ReDo(), "critic", iv.Schedule(when=trigger))])
    with pytest.raises(ValueError, match="PlasticityCallback"):
        callback.init_callback(model)


def test_dqn_reset_of_q_net_syncs_q_net_target(tmp_path):
    """DQN on CartPole: Reset("all") of the q_net group at step 150 (SB3 trains every 4 steps from 64): afterwards
    q_net_target equals q_net entry by entry at that moment (checked inside the callback by a second callback), and
    the model's optimizers are found."""
    model = DQN("MlpPolicy", "CartPole-v1", learning_starts=64, batch_size=16, buffer_size=500, **small())
    assert optimizers_of(model) == [model.policy.optimizer]
    assert target_pairs_of(model) == [(model.policy.q_net, model.policy.q_net_target)]
    callback = InterventionCallback([iv.ScheduledIntervention(iv.Reset("all"), "q_net", iv.Schedule(at=(150,)))])
    seen = []

    class Check(InterventionCallback):
        def __init__(self):
            super().__init__([])

        def _on_step(self):
            if self.num_timesteps == 150:
                seen.append(all(torch.equal(a, b) for a, b in zip(model.policy.q_net.parameters(),
                                                                  model.policy.q_net_target.parameters())))
            return True

    model.learn(200, callback=[callback, Check()])
    assert [step for step, *_ in callback.history] == [150] and seen == [True]
