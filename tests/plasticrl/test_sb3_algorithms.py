"""The SB3 adapter on stock SB3 algorithms of every family (SAC, TD3, DQN, PPO, A2C) on real gymnasium envs, at
small sizes: module groups by name and path, the probe batch per family, what reaches SB3's logger (a CSV logger in
a tmp folder, read back from ``progress.csv``) and the run log, and the replay-ratio callback's count of the
updates SB3 performs."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
from stable_baselines3 import A2C, DQN, PPO, SAC, TD3
from stable_baselines3.common.logger import configure
from torch import nn

from plasticrl.replay_ratio import AdaptiveReplayRatio, StaticReplayRatio
from plasticrl.runlog import RunLogger, read_jsonl
from plasticrl.sb3 import (
    EpisodeLogCallback,
    PeriodicEvalCallback,
    PlasticityCallback,
    ReplayRatioCallback,
    resolve_groups,
)

PENDULUM = 200  # Pendulum-v1 episodes are 200 steps (time limit, never terminated early)


def small() -> dict:
    """Arguments of a small agent; a new dict each time (SB3 writes into the policy_kwargs it is given)."""
    return {"policy_kwargs": {"net_arch": [16, 16]}, "device": "cpu", "seed": 0}



def with_csv_logger(model, folder: Path, formats=("csv",)):
    model.set_logger(configure(str(folder), list(formats)))
    return model


def progress(folder: Path) -> list[dict[str, str]]:
    with open(folder / "progress.csv", newline="") as f:
        return list(csv.DictReader(f))


def column(rows: list[dict[str, str]], key: str) -> list[float]:
    """The numbers SB3 dumped under ``key`` (its CSV leaves a cell empty where a dump lacked the key)."""
    return [float(r[key]) for r in rows if r.get(key) not in (None, "")]


def test_sac_records_probes_and_replay_ratio_in_sb3_logger_and_run_log(tmp_path):
    """SAC, learning_starts 100, RR 0.5: SB3 trains after each of the transitions 101..450, so it performs
    floor(0.5 * 350) = 175 updates; the controller counts exactly those, and its records (dumped by SB3 at the
    episode ends 200 and 400) are 50 and 150."""
    model = with_csv_logger(SAC("MlpPolicy", "Pendulum-v1", learning_starts=100, batch_size=16, train_freq=1,
                                gradient_steps=0, **small()), tmp_path / "sb3")
    run_logger = RunLogger(tmp_path / "runs" / "sac" / "0", wandb_settings={"mode": "disabled"})
    controller = StaticReplayRatio(0.5)
    rr = ReplayRatioCallback(controller, run_logger)
    probes = PlasticityCallback(run_logger, every=100, batch_size=32)
    model.learn(450, callback=[probes, rr], log_interval=1)
    run_logger.close()

    assert model._n_updates == 175 == controller.updates
    assert controller.env_step == 450  # the 100 warm-up transitions are counted, with no updates owed
    rows = progress(tmp_path / "sb3")
    assert column(rows, "time/total_timesteps") == [PENDULUM, 2 * PENDULUM]
    assert column(rows, "replay_ratio/updates") == [50, 150]
    assert column(rows, "replay_ratio/ratio") == [0.5, 0.5]
    for key in ("plasticity/actor/fau", "plasticity/critic/fau", "plasticity/critic/dormant_ratio",
                "plasticity/critic/qf0.1/dormant_ratio"):
        values = column(rows, key)
        assert len(values) == 2 and all(0 <= v <= 1 for v in values), key
    # the run log got the same records, each at its own env step
    records = read_jsonl(tmp_path / "runs" / "sac" / "0")
    assert [r["env_step"] for r in records if "plasticity/critic/fau" in r] == [100, 200, 300, 400]
    assert [(r["env_step"], r["replay_ratio/updates"]) for r in records if "replay_ratio/updates" in r] == [
        (200, 50), (400, 150)]
    # SB3 dumped the probe at 200 (the last value recorded before its dump wins)
    at_200 = next(m for step, m in probes.history if step == 200)
    assert column(rows, "plasticity/critic/fau")[0] == pytest.approx(at_200["plasticity/critic/fau"], rel=1e-6)


def test_td3_default_groups_episodes_and_evaluations_reach_sb3_logger(tmp_path):
    model = with_csv_logger(TD3("MlpPolicy", "Pendulum-v1", learning_starts=50, batch_size=16, train_freq=1,
                                gradient_steps=1, **small()), tmp_path)
    callbacks = [PlasticityCallback(every=100, batch_size=16), EpisodeLogCallback(print_episodes=False),
                 PeriodicEvalCallback(model.get_env(), every=PENDULUM, episodes=1)]
    model.learn(2 * PENDULUM, callback=callbacks, log_interval=1)
    rows = progress(tmp_path)
    keys = set(rows[0])
    assert {"plasticity/actor/srank", "plasticity/critic/fau", "train/episode_return", "train/episodes",
            "eval/return_mean", "eval/return_std"} <= keys
    assert not any(k.startswith(("plasticity/critic_target/", "plasticity/encoder/")) for k in keys)
    assert column(rows, "train/episodes") == [1, 2]
    assert all(-2000 < v <= 0 for v in column(rows, "eval/return_mean"))  # Pendulum's return range


def test_callbacks_leave_sb3_logger_alone_when_told(tmp_path):
    model = with_csv_logger(SAC("MlpPolicy", "Pendulum-v1", learning_starts=50, batch_size=16, **small()), tmp_path)
    run_logger = RunLogger(tmp_path / "run", wandb_settings={"mode": "disabled"})
    model.learn(PENDULUM, callback=PlasticityCallback(run_logger, every=100, batch_size=16, sb3_logger=False),
                log_interval=1)
    run_logger.close()
    assert not any(k.startswith("plasticity/") for k in progress(tmp_path)[0])
    assert [r["env_step"] for r in read_jsonl(tmp_path / "run")] == [100, 200]


def test_dqn_groups_by_module_path_and_replay_ratio_from_q_net_fau(tmp_path):
    model = with_csv_logger(DQN("MlpPolicy", "CartPole-v1", learning_starts=50, batch_size=16, train_freq=1,
                                gradient_steps=0, **small()), tmp_path)
    probes = PlasticityCallback(every=100, batch_size=16, groups={"q": "q_net"})
    controller = AdaptiveReplayRatio(low=0.5, high=2.0, check_every=1, tolerance=1.0)
    model.learn(300, callback=[probes, ReplayRatioCallback(controller, probe_batch_size=16)], log_interval=1)
    assert probes.monitor.groups["q"] is model.q_net
    assert [step for step, _ in probes.history] == [100, 200, 300]
    rows = progress(tmp_path)
    assert {"plasticity/q/fau", "plasticity/q/srank", "plasticity/q/q_net.1/dormant_ratio"} <= set(rows[-1])
    # the controller read the Q-net's FAU on probe batches: a switch at the first check that had a value
    assert controller.history and all(0 < fau <= 1 for _, fau, _ in controller.history)
    assert controller.switched_at is not None and controller.updates == model._n_updates > 0


def test_unknown_group_names_what_the_algorithm_has():
    model = DQN("MlpPolicy", "CartPole-v1", **small())
    with pytest.raises(ValueError, match=r"'critic': DQN has no module 'critic'.*its groups: encoder, q_net, "
                                         r"q_net_target.*policy\.q_net"):
        model.learn(10, callback=PlasticityCallback(groups=["critic"]))


def test_groups_by_name_path_module_and_list_of_paths():
    model = SAC("MlpPolicy", "Pendulum-v1", **small())
    groups = resolve_groups(model, {"actor": "actor", "latent": "policy.actor.latent_pi", "q0": model.critic.qf0,
                                    "heads": ["actor.mu", "actor.log_std"]})
    assert groups["actor"] is model.actor and groups["latent"] is model.actor.latent_pi
    assert groups["q0"] is model.critic.qf0
    assert groups["heads"] == {"mu": model.actor.mu, "log_std": model.actor.log_std}  # a dict group
    with pytest.raises(ValueError, match=r"'x': SAC has no module 'actor.nope' \(Actor has no 'nope'"):
        resolve_groups(model, {"x": "actor.nope"})


@pytest.mark.parametrize("algo", [PPO, A2C])
def test_on_policy_probes_actor_and_critic_on_rollout_observations(algo, tmp_path, capsys):
    """Probes every 64 steps, one rollout long: at each due step the rollout buffer is either partly filled (the
    first) or was just reset, so the batch comes from the previous rollout. The actor group runs
    ``mlp_extractor.policy_net`` then ``action_net``, so both hidden activations of the policy net are layers. PPO
    with ReLU (FAU measured), A2C with SB3's default Tanh. SB3's stdout table gets the group keys only (two per-layer
    keys would truncate alike there and make SB3 raise)."""
    kwargs = {"n_steps": 64, "batch_size": 32, "n_epochs": 1} if algo is PPO else {"n_steps": 64}
    args = small()
    if algo is PPO:
        args["policy_kwargs"]["activation_fn"] = nn.ReLU
    model = with_csv_logger(algo("MlpPolicy", "CartPole-v1", **kwargs, **args), tmp_path, ("stdout", "csv"))
    probes = PlasticityCallback(every=64, batch_size=32)
    model.learn(256, callback=probes, log_interval=1)  # A2C dumps every 100 rollouts by default
    assert [step for step, _ in probes.history] == [64, 128, 192, 256]
    groups = probes.monitor.groups
    assert dict(groups["actor"].named_modules())["mlp_extractor.policy_net"] is model.policy.mlp_extractor.policy_net
    assert dict(groups["critic"].named_modules())["value_net"] is model.policy.value_net
    rows = progress(tmp_path)
    keys = ["plasticity/actor/dormant_ratio", "plasticity/critic/dormant_ratio", "plasticity/actor/srank",
            "plasticity/critic/srank", "plasticity/actor/mlp_extractor.policy_net.1/dormant_ratio",
            "plasticity/actor/mlp_extractor.policy_net.3/dormant_ratio"]
    if algo is PPO:
        keys += ["plasticity/actor/fau", "plasticity/critic/mlp_extractor.value_net.3/fau"]
    for key in keys:
        values = column(rows, key)
        assert len(values) == 4 and all(math.isfinite(v) for v in values), key
    out = capsys.readouterr().out
    assert "plasticity/" in out and "srank" in out and "mlp_extractor" not in out


def test_replay_ratio_callback_refuses_on_policy_algorithms():
    model = PPO("MlpPolicy", "CartPole-v1", n_steps=16, batch_size=16, **small())
    with pytest.raises(TypeError, match="ReplayRatioCallback: PPO is on-policy") as caught:
        model.learn(16, callback=ReplayRatioCallback(StaticReplayRatio(1.0)))
    assert "\n" not in str(caught.value) and "replay ratio does not apply" in str(caught.value)
    assert model.num_timesteps == 0  # refused before any env step
