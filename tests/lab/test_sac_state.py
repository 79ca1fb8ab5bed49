"""State-based SAC (`agent.kind: sac`): config checks, `plasticrl train`, and `plasticrl collect` from its runs."""

import json
import re
from pathlib import Path

import minari
import numpy as np
import pytest
import yaml

from plasticrl import envs
from plasticrl.lab import collect, continual
from plasticrl.lab.cli import main
from plasticrl.lab.config import continual as continual_config
from plasticrl.lab.config import train as cfgmod
from plasticrl.lab.config.base import dump
from plasticrl.lab.train import train

ROOT = Path(__file__).resolve().parents[2]
SMOKE_SAC = ROOT / "configs" / "train" / "smoke_sac.yaml"
TASK = "dmc:cartpole-swingup"  # the smoke config's env


def test_sac_defaults_fill_only_missing_keys():
    cfg = cfgmod.validate({"agent": {"kind": "sac"}})
    assert (cfg.env.pixels, cfg.agent.learning_rate, cfg.agent.n_step, cfg.agent.hidden_dim) == (False, 3e-4, 1, 256)
    assert cfg.monitor.groups == ["actor", "critic"] and cfg.replay_ratio.ratio == 1.0
    cfg = cfgmod.validate({"agent": {"kind": "sac", "learning_rate": 1e-3, "hidden_dim": 1024}})
    assert (cfg.agent.learning_rate, cfg.agent.hidden_dim) == (1e-3, 1024)
    assert cfgmod.validate({}).agent.learning_rate == 1e-4  # DrQ's defaults unchanged
    resolved = cfgmod.load(SMOKE_SAC)  # a run's config.yaml (DrQ-only keys at their defaults) loads again
    assert cfgmod.validate(yaml.safe_load(dump(resolved))) == resolved


@pytest.mark.parametrize(
    ("config", "override", "expected"),
    [
        (SMOKE_SAC, "env.pixels=true", "env.pixels: true is not allowed with agent.kind=sac"),
        (SMOKE_SAC, "agent.n_step=3", "agent.n_step: 3 is not supported by agent.kind=sac"),
        (SMOKE_SAC, "agent.precision=bf16", "agent.precision: 'bf16' is a DrQ option"),
        (SMOKE_SAC, "agent.buffer_device=cuda", "agent.buffer_device: 'cuda' is a DrQ option"),
        (SMOKE_SAC, "monitor.groups=[encoder, critic]", "monitor.groups: agent.kind=sac has no encoder"),
        (ROOT / "configs" / "train" / "smoke.yaml", "env.pixels=false",
         "env.pixels: false is not allowed with agent.kind=drq"),
    ],
)
def test_keys_that_dont_fit_the_agent_are_errors(config, override, expected):
    with pytest.raises(cfgmod.ConfigError, match=re.escape(expected)):
        cfgmod.load(config, [override])


def test_every_misfit_is_reported_at_once(tmp_path, capsys):
    code = main(["train", str(SMOKE_SAC), "--set", f"run.out_dir={tmp_path}/runs", "--set", "agent.n_step=3",
                 "--set", "env.pixels=true"])
    err = capsys.readouterr().err
    assert code == 2 and "agent.n_step" in err and "env.pixels" in err
    assert not (tmp_path / "runs").exists()


@pytest.fixture(scope="module")
def sac_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    run_dir = train(cfgmod.load(SMOKE_SAC, [f"run.out_dir={out}"]))
    return out, run_dir


def test_sac_training_writes_a_loadable_checkpoint(sac_run):
    from stable_baselines3 import SAC

    _, run_dir = sac_run
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert resolved["agent"]["kind"] == "sac" and resolved["env"]["pixels"] is False
    model = SAC.load(run_dir / "checkpoints" / "final.zip", device="cpu")
    assert model.observation_space.shape == envs.make(TASK, pixels=False).observation_space.shape
    assert [m.out_features for m in model.policy.actor.latent_pi if hasattr(m, "out_features")] == [32, 32]
    # replay ratio 0.5 from the controller: one update every 2nd step after learning_starts (300 - 100 steps)
    assert abs(model._n_updates - 100) <= 1
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    episodes = [r for r in records if "train/episode_return" in r]
    assert len(episodes) == 2  # 300 agent steps of 125-step episodes (1000 frames / action repeat 8)
    assert {"train/critic_loss", "train/actor_loss", "train/ent_coef"} <= set(episodes[-1])
    probes = [r for r in records if "plasticity/critic/fau" in r]
    assert len(probes) == 3 and {"plasticity/actor/srank", "plasticity/critic_target/dormant_ratio"} <= set(probes[-1])
    assert any("eval/return_mean" in r for r in records)


def test_eval_loads_the_sac_run(sac_run, capsys):
    _, run_dir = sac_run
    assert main(["eval", str(run_dir), "--episodes", "1", "--device", "cpu"]) == 0
    assert "return" in capsys.readouterr().out


def test_collect_from_runs_folder_feeds_a_continual_config(sac_run, tmp_path, capsys):
    from stable_baselines3 import SAC

    runs, run_dir = sac_run
    out = tmp_path / "data"
    capsys.readouterr()
    assert main(["collect", "--runs", str(runs), "--agent", "sac", "--episodes", "2", "--out", str(out),
                 "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    dataset_id = "plasticrl/cartpole-swingup/sac-final-deterministic-v0"
    assert f"{TASK}: {dataset_id}" in printed
    returns = [float(r) for r in re.findall(r"episode \d+: steps \d+ +return (-?[\d.]+)", printed)]
    with collect.datasets_path(out):
        dataset = minari.load_dataset(dataset_id)
    assert dataset.total_episodes == 2 and len(returns) == 2
    state_dim = envs.make(TASK, pixels=False).observation_space.shape[0]
    model = SAC.load(run_dir / "checkpoints" / "final.zip", device="cpu")
    for episode, ret in zip(dataset.iterate_episodes(), returns, strict=True):
        steps = len(episode.actions)
        assert steps == 125  # the run's action repeat 8 restored from its config.yaml (500 steps at envs' default 2)
        assert episode.observations.shape == (steps + 1, state_dim)
        assert episode.rewards.sum() == pytest.approx(ret, abs=1e-3)
        np.testing.assert_allclose(episode.actions, model.predict(episode.observations[:-1], deterministic=True)[0],
                                   atol=1e-6)
    cfg = continual_config.load(ROOT / "configs" / "continual" / "l2m_smoke.yaml",
                                [f"data.out_dir={out}", f"data.dataset_ids={{{TASK}: {dataset_id}}}",
                                 f"sequence.tasks=[{TASK}]", "pretrain.steps=0"])
    continual.check_continual(cfg)
    assert continual.ensure_datasets(cfg, [TASK]) == {TASK: dataset_id}
    assert len(continual.load_episodes(out, dataset_id)) == 2


def test_collect_checkpoint_takes_the_agent_from_its_run(sac_run, tmp_path):
    _, run_dir = sac_run
    out = tmp_path / "data"
    assert main(["collect", "--tasks", TASK, "--episodes", "1", "--out", str(out), "--device", "cpu",
                 "--checkpoint", str(run_dir / "checkpoints" / "final.zip")]) == 0  # no --agent: sac from config
    assert (out / "plasticrl/cartpole-swingup/sac-final-deterministic-v0").is_dir()


@pytest.mark.parametrize(("args", "message"), [
    (["--agent", "drq"], "--agent drq"),
    (["--tasks", "dmc:walker-walk"], "no run under"),
    (["--checkpoint", "x.zip"], "exclude each other"),
])
def test_collect_runs_errors_before_writing(sac_run, tmp_path, capsys, args, message):
    runs, _ = sac_run
    out = tmp_path / "data"
    assert main(["collect", "--runs", str(runs), "--episodes", "1", "--out", str(out), *args]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_collect_runs_needs_a_run(tmp_path, capsys):
    assert main(["collect", "--runs", str(tmp_path), "--episodes", "1"]) == 2
    assert "no run folder" in capsys.readouterr().err


def test_dmc_data_at_another_action_repeat_is_refused(sac_run, tmp_path):
    """The smoke SAC run trains at action repeat 8 (125-step episodes); the continual runner evaluates DMC at
    action repeat 2 (500 steps): its data is refused before any training, naming the fix."""

    runs, _ = sac_run
    out = tmp_path / "data"
    assert main(["collect", "--runs", str(runs), "--agent", "sac", "--episodes", "1", "--out", str(out),
                 "--device", "cpu"]) == 0
    cfg = continual_config.load(ROOT / "configs" / "continual" / "l2m_smoke.yaml", [
        f"data.out_dir={out}", f"data.dataset_ids={{{TASK}: plasticrl/cartpole-swingup/sac-final-deterministic-v0}}",
        f"sequence.tasks=[{TASK}]", "pretrain.steps=0", "logging.wandb.mode=disabled"])
    with pytest.raises(cfgmod.ConfigError, match=r"\[125\] steps.*action repeat 2 \(500 steps.*action_repeat=2"):
        continual.run_sequence(cfg, tmp_path / "runs")
    assert not (tmp_path / "runs").exists()  # refused before a run folder was written


def bang_bang_dataset(out: Path) -> str:
    """Two real cartpole-swingup episodes of a seeded bang-bang policy (better than random) as a Minari dataset under
    ``out``; returns its id."""
    rng = np.random.default_rng(0)
    dataset_id = "plasticrl/cartpole-swingup/halfway-v0"
    collect._collect(TASK, envs.make(TASK, pixels=False, seed=0),
                     lambda obs: np.sign(rng.normal(size=1)).astype(np.float32) * 0.5, 2, 0, out, dataset_id,
                     algorithm="test", description="test data")
    return dataset_id


def test_dmc_tasks_are_scored_by_data_normalised_return(tmp_path, monkeypatch):
    """A DMC task in a sequence: its score is (R - R_random) / (R_data - R_random), with R_random the mean return of
    seeded uniform random actions (recomputed here by hand) and R_data the dataset's mean return; full 500-step
    evaluation episodes (not Meta-World's max_episode_steps)."""

    out = tmp_path / "data"
    dataset_id = bang_bang_dataset(out)
    cfg = continual_config.load(ROOT / "configs" / "continual" / "l2m_smoke.yaml", [
        f"data.out_dir={out}", f"data.dataset_ids={{{TASK}: {dataset_id}}}", f"sequence.tasks=[{TASK}]",
        "pretrain.steps=0", "sequence.steps_per_task=1", "sequence.eval_every=0", "logging.wandb.mode=disabled",
        "sequence.method=finetune", "sequence.probe_batch_size=0"])
    import gymnasium as gym

    lengths = []  # episode lengths of the runner's envs: the zero-action check, random episodes, evaluation

    class CountSteps(gym.Wrapper):
        def reset(self, **kw):
            self.steps = 0
            return self.env.reset(**kw)

        def step(self, action):
            out = self.env.step(action)
            self.steps += 1
            if out[2] or out[3]:
                lengths.append(self.steps)
            return out

    make = envs.make
    monkeypatch.setattr(envs, "make", lambda *a, **kw: CountSteps(make(*a, **kw)))
    run = continual.run_sequence(cfg, tmp_path / "runs")
    # a zero-action check, eval_episodes random episodes, eval_episodes evaluation episodes: all 500 steps long
    assert lengths == [500] * (1 + 2 * cfg.sequence.eval_episodes)  # max_episode_steps (20) is Meta-World's
    summary = json.loads((run / "summary.json").read_text())
    refs = summary["dmc_reference_returns"][TASK]
    episodes = continual.load_episodes(out, dataset_id)
    assert refs["data"] == pytest.approx(np.mean([ep["rewards"].sum() for ep in episodes]))
    probe = envs.make(TASK, pixels=False, seed=0)
    by_hand = []
    for e in range(cfg.sequence.eval_episodes):
        probe.reset(seed=cfg.run.seed + 50_000 + e)
        probe.action_space.seed(cfg.run.seed + 50_000 + e)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = probe.step(probe.action_space.sample())
            total, done = total + reward, terminated or truncated
        by_hand.append(total)
    assert refs["random"] == pytest.approx(np.mean(by_hand))
    lines = (run / "metrics.jsonl").read_text().splitlines()
    record = [json.loads(line) for line in lines if '"eval/stage"' in line][-1]
    ret = record[f"eval/0-{TASK}/return"]
    expected = (ret - refs["random"]) / (refs["data"] - refs["random"])
    assert record[f"eval/0-{TASK}/score"] == pytest.approx(expected)
    assert summary["average_performance"] == pytest.approx(expected)
    assert summary["score_per_task"] == ["data-normalised return"]


def test_pretraining_on_meta_world_and_dmc_together(tmp_path, capsys):
    """pretrain.tasks mixes sequence names and ids across domains (the issue's 'mt40,dmc10', here one task of each):
    the DT pre-trains on both datasets (39-dim Meta-World states, 5-dim cartpole states padded to one width)."""

    out = tmp_path / "data"
    dataset_id = bang_bang_dataset(out)
    cfg = continual_config.load(ROOT / "configs" / "continual" / "l2m_smoke.yaml", [
        f"data.out_dir={out}", f"data.dataset_ids={{{TASK}: {dataset_id}}}", f"pretrain.tasks=metaworld:push-v3,{TASK}",
        "pretrain.steps=2", f"sequence.tasks=[{TASK}]", "sequence.steps_per_task=1", "sequence.eval_every=0",
        "sequence.method=finetune", "sequence.probe_batch_size=0", "logging.wandb.mode=disabled",
        "data.episodes_per_task=1"])
    assert continual.resolve_task_list(cfg.pretrain.tasks, "pretrain.tasks") == ["metaworld:push-v3", TASK]
    mt40_dmc10 = continual.resolve_task_list("mt40,dmc10", "pretrain.tasks")  # l2m_cw10_dmc6.yaml's set
    assert mt40_dmc10 == envs.sequence("mt40") + envs.sequence("dmc10")
    run_dir = continual.run_sequence(cfg, tmp_path / "runs")
    log = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    pretrain_rows = [r for r in log if any(k.startswith("pretrain/") for k in r)]
    assert pretrain_rows, "no pre-training logged"
    assert "pre-trained 2 steps on 2 tasks" in capsys.readouterr().out
    assert (run_dir / "checkpoints" / "pretrained.pt").exists()
