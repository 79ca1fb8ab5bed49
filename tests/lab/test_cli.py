"""`plasticrl train`: config validation errors, the run folder of a smoke training, and run.dir."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from plasticrl.lab.cli import main
from plasticrl.lab.config import train as cfgmod

ROOT = Path(__file__).resolve().parents[2]
SMOKE = str(ROOT / "configs" / "train" / "smoke.yaml")


def run_cli(*args, out_dir):
    return subprocess.run([sys.executable, "-m", "plasticrl", *args, "--set", f"run.out_dir={out_dir}"],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("agent.learning_rat=0.1", ["agent.learning_rat: unknown key", "Did you mean 'agent.learning_rate'"]),
        ("runn.seed=1", ["runn: unknown key", "Did you mean 'run'"]),
        ("run.seed=abc", ["run.seed: 'abc' is not allowed", "integer"]),
        ("agent.gamma=1.5", ["agent.gamma: 1.5 is not allowed", "less than or equal to 1"]),
        ("run.device=tpu", ["run.device: 'tpu' is not allowed", "'auto', 'cpu' or 'cuda'"]),
        ("replay_ratio.kind=fast", ["replay_ratio.kind: 'fast'", "'static' or 'adaptive'"]),
    ],
)
def test_bad_config_names_key_value_and_allowed(override, expected):
    with pytest.raises(cfgmod.ConfigError) as info:
        cfgmod.load(SMOKE, [override])
    for text in expected:
        assert text in str(info.value)


def test_every_problem_is_reported_at_once():
    with pytest.raises(cfgmod.ConfigError) as info:
        cfgmod.load(SMOKE, ["agent.gamma=2", "run.seed=-1"])
    assert "agent.gamma" in str(info.value) and "run.seed" in str(info.value)


def test_overrides_parse_yaml_values():
    cfg = cfgmod.load(SMOKE, ["agent.learning_rate=3e-4", "monitor.groups=[critic]", "env.pixels=true"])
    assert cfg.agent.learning_rate == 3e-4 and cfg.monitor.groups == ["critic"] and cfg.env.pixels is True


def test_bad_input_stops_before_the_run_folder_exists(tmp_path, capsys):
    code = main(["train", SMOKE, "--set", f"run.out_dir={tmp_path}/runs", "--set", "env.id=dmc:walker-wlak"])
    err = capsys.readouterr().err
    assert code == 2
    assert "dmc:walker-wlak" in err and "dmc:walker-walk" in err
    assert not (tmp_path / "runs").exists()
    code = main(["train", SMOKE, "--set", f"run.out_dir={tmp_path}/runs", "--set", "env.pixels=false"])
    assert code == 2 and "env.pixels" in capsys.readouterr().err
    code = main(["train", SMOKE, "--set", f"run.out_dir={tmp_path}/runs", "--set", "env.id=metaworld:push-v3"])
    assert code == 2 and "dmc:" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    code = main(["train", str(tmp_path / "missing.yaml")])
    assert code == 2 and "not found" in capsys.readouterr().err


def test_missing_config_and_bad_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: [unclosed")
    with pytest.raises(cfgmod.ConfigError, match="not valid YAML"):
        cfgmod.load(bad)


def test_every_shipped_config_validates():
    from plasticrl.lab import continual
    from plasticrl.lab.config import continual as continual_config

    train_configs = sorted((ROOT / "configs" / "train").glob("*.yaml"))
    overlays = sorted((ROOT / "configs" / "train" / "overlays").glob("*.yaml"))
    assert len(train_configs) >= 9 and len(overlays) >= 4
    for path in train_configs:
        cfgmod.load(path)
        for overlay in overlays:
            cfgmod.load(path, overlays=[overlay])
    continual_configs = sorted((ROOT / "configs" / "continual").glob("*.yaml"))
    assert continual_configs
    for path in continual_configs:
        cfg = continual_config.load(path)
        continual.resolve_task_list(cfg.pretrain.tasks, "pretrain.tasks")  # every sequence name and id exists
        continual.resolve_task_list(cfg.sequence.tasks, "sequence.tasks")


def test_overlays_make_the_replay_ratio_arms_of_ma2024():
    """A task config + the budget overlay + an arm's overlay = what the paper ran on that task and arm."""
    train_dir = ROOT / "configs" / "train"
    arms = {"rr0.5": ("static", 0.5), "rr2": ("static", 2.0), "adaptive_rr": ("adaptive", None)}
    for arm, (kind, ratio) in arms.items():
        cfg = cfgmod.load(train_dir / "drq_quadruped_run.yaml", ["run.seed=3"],
                          overlays=[train_dir / "overlays" / "ma2024.yaml", train_dir / "overlays" / f"{arm}.yaml"])
        assert cfg.run.name == f"drq_quadruped_run_{arm}"
        assert (cfg.run.total_steps, cfg.run.checkpoint_every, cfg.run.seed) == (1_000_000, 100_000, 3)
        assert cfg.env.id == "dmc:quadruped-run" and cfg.replay_ratio.kind == kind
        if ratio is not None:
            assert cfg.replay_ratio.ratio == ratio
        else:
            assert (cfg.replay_ratio.low, cfg.replay_ratio.high, cfg.replay_ratio.check_every) == (0.5, 2.0, 50)


def test_merge_is_deep_and_base_stands_for_the_replaced_string():
    from plasticrl.lab.config.base import merge

    base = {"run": {"name": "a", "seed": 1}, "agent": {"batch_size": 256}, "tags": ["x"]}
    out = merge(base, {"run": {"name": "${base}_b"}, "agent": 7, "tags": ["y"], "new": {"k": 1}})
    assert out == {"run": {"name": "a_b", "seed": 1}, "agent": 7, "tags": ["y"], "new": {"k": 1}}
    assert base["run"]["name"] == "a"  # the base is not changed
    assert merge({}, {"run": {"name": "${base}x"}}) == {"run": {"name": "x"}}


def test_train_command_takes_overlays(tmp_path, capsys):
    overlay = tmp_path / "seed.yaml"
    overlay.write_text("run:\n  name: ${base}_o\n  seed: 5\nagent:\n  batch_sizee: 3\n")
    code = main(["train", SMOKE, str(overlay), "--set", f"run.out_dir={tmp_path}/runs"])
    assert code == 2 and "agent.batch_sizee: unknown key" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    proc = run_cli("train", SMOKE, out_dir=out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (out / "smoke").iterdir()
    return run_dir, proc


def test_smoke_training_writes_the_run_folder(smoke_run):
    run_dir, proc = smoke_run
    assert run_dir.name.startswith("0-")
    for name in ("config.yaml", "metrics.jsonl", "checkpoints/final.zip", "plots/dashboard.png"):
        assert (run_dir / name).is_file(), name
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert resolved["run"]["name"] == "smoke" and resolved["agent"]["learning_rate"] == 1e-4
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all("env_step" in r for r in records)
    episodes = [r for r in records if "train/episode_return" in r]
    assert len(episodes) == 2  # 300 agent steps of 125-step cartpole episodes (1000 frames / action repeat 8)
    assert {"train/fps", "train/critic_loss", "train/actor_loss"} <= set(episodes[-1])
    assert any("eval/return_mean" in r for r in records)
    assert any("plasticity/critic/fau" in r for r in records)


SMOKE_SAC = str(ROOT / "configs" / "train" / "smoke_sac.yaml")


def test_run_dir_is_the_exact_run_folder_and_an_existing_run_is_refused(tmp_path, capsys):
    """run.dir: an existing empty folder becomes the run folder itself (nothing under run.out_dir); a second train
    into it stops with one line naming the folder and the fix, and leaves the run as it was."""
    folder, out = tmp_path / "exact", tmp_path / "runs"
    folder.mkdir()
    args = ["train", SMOKE_SAC, "--set", f"run.dir={folder}", "--set", f"run.out_dir={out}", "--set",
            "run.total_steps=120", "--set", "monitor.every=60", "--set", "logging.plots=false"]
    assert main(args) == 0, capsys.readouterr().err[-3000:]
    assert f"done: {folder}" in capsys.readouterr().out
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoints", "config.yaml", "metrics.jsonl", "plots"]
    assert (folder / "checkpoints" / "final.zip").is_file() and not out.exists()
    assert yaml.safe_load((folder / "config.yaml").read_text())["run"]["dir"] == str(folder)
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err == (f"error: run.dir: {str(folder)!r} already holds a run; continue it with `plasticrl resume "
                   f"{folder}` or choose another run.dir\n")
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before  # untouched
    metrics_only = tmp_path / "metrics_only"
    metrics_only.mkdir()
    (metrics_only / "metrics.jsonl").write_text("")
    assert main(["train", SMOKE_SAC, "--set", f"run.dir={metrics_only}"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert sorted(p.name for p in metrics_only.iterdir()) == ["metrics.jsonl"]


def test_saved_checkpoint_loads_and_evaluates(smoke_run):
    run_dir, _ = smoke_run
    proc = subprocess.run([sys.executable, "-m", "plasticrl", "eval", str(run_dir), "--episodes", "1",
                           "--device", "cpu"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "return" in proc.stdout


def test_a_missing_lab_dependency_is_one_line_naming_the_extra(tmp_path):
    """A core install (torch only) runs `plasticrl --help`; a lab command then says which package is missing and
    the install line, instead of a traceback. (pydantic is made unimportable in a subprocess.)"""
    code = ("import sys; sys.modules['pydantic'] = None; from plasticrl.lab.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    helped = subprocess.run([sys.executable, "-c", code, "--help"], capture_output=True, text=True, cwd=ROOT)
    assert helped.returncode == 0 and "continual" in helped.stdout
    proc = subprocess.run([sys.executable, "-c", code, "train", SMOKE], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pydantic is not installed" in lines[0] and 'pip install "plasticrl[lab]"' in lines[0]


def test_a_projects_own_envs_and_agents_packages_do_not_shadow_plasticrls(tmp_path):
    """From a project folder with its own ``envs/`` and ``agents/`` packages (first on sys.path with ``python -m``),
    the lab still gets plasticrl's: they are installed as ``plasticrl.envs`` and ``plasticrl.agents``."""
    for name in ("envs", "agents"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("MINE = True\n")
    code = ("import envs, agents; assert envs.MINE and agents.MINE; import plasticrl.lab.train as t; "
            "t.envs.check_id('dmc:walker-walk'); print(t.envs.__name__, t.DrQ.__module__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["plasticrl.envs", "plasticrl.agents.drq.algorithm"]
    helped = subprocess.run([sys.executable, "-m", "plasticrl", "train", "--help"], capture_output=True, text=True,
                            cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr[-2000:]


def test_one_config_line_adds_redo_to_a_run(tmp_path):
    """`interventions: [{kind: redo, groups: [critic], every: 150}]` on the smoke run (300 steps, probes every 100):
    ReDo fires at 150 and 300, logged in metrics.jsonl with its unit counts; each firing is followed by a probe; the
    dashboard is drawn with the markers; the run's config.yaml records the intervention."""
    proc = run_cli("train", SMOKE, "--set", "interventions=[{kind: redo, groups: [critic], every: 150}]",
                   out_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (tmp_path / "smoke").iterdir()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    fired = [r for r in records if "intervention/redo/critic/count" in r]
    assert [(r["env_step"], r["intervention/redo/critic/count"]) for r in fired] == [(150, 1), (300, 2)]
    assert all(r["intervention/redo/critic/units"] == 4 * 32 for r in fired)  # 2 Q heads x 2 hidden ReLUs x 32
    probe_steps = [r["env_step"] for r in records if "plasticity/critic/dormant_ratio" in r]
    assert probe_steps == [100, 150, 200, 300, 300]  # every 100, and after each ReDo
    assert (run_dir / "plots" / "dashboard.png").is_file()
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["interventions"][0]["kind"] == "redo"


def test_drqv2_trains_from_the_smoke_config_with_its_defaults_and_a_reset(tmp_path):
    """`--set agent.kind=drqv2` on the smoke config: DrQ-v2's keys and its orthogonal init come as defaults (in the
    run's config.yaml), the scheduled exploration std is logged with the update statistics, and a reset of the
    actor's and critic's heads at step 200 is applied with the agent's own (orthogonal) layer init."""
    cfg = cfgmod.load(SMOKE, ["agent.kind=drqv2"])
    assert (cfg.agent.init, cfg.agent.std_schedule, cfg.agent.stddev_clip, cfg.agent.num_expl_steps) == (
        "orthogonal", "linear(1.0,0.1,500000)", 0.3, 2000)
    proc = run_cli("train", SMOKE, "--set", "agent.kind=drqv2", "--set",
                   "interventions=[{kind: reset, groups: [actor, critic], layers: last2, at: [200]}]", out_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (tmp_path / "smoke").iterdir()
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert resolved["agent"]["kind"] == "drqv2" and resolved["agent"]["init"] == "orthogonal"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    episodes = [r for r in records if "train/episode_return" in r]
    std = 1.0 - 0.9 * episodes[-1]["env_step"] / 500_000  # linear(1.0, 0.1, 500000) at the last episode's end
    assert episodes[-1]["train/actor_std"] == pytest.approx(std, abs=2e-3)  # the mean over that record's updates
    resets = {(r["env_step"], k) for r in records for k in r if k.endswith("/layers_reset")}
    assert resets == {(200, "intervention/reset/actor/layers_reset"), (200, "intervention/reset/critic/layers_reset")}
    assert [r["intervention/reset/critic/layers_reset"] for r in records if "intervention/reset/critic/count" in r] \
        == [4]  # q1.2, q1.4, q2.2, q2.4
