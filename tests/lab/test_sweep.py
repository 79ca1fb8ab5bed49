"""`plasticrl sweep`: expansion (the product, names, validation), the local backend end to end with SIGTERM and
resume, the Ray backend on a real local instance, and `plasticrl report` on the sweep's run folders."""

import csv
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from plasticrl.lab import sweep as sweeps
from plasticrl.lab.cli import main
from plasticrl.lab.config import train as train_config
from plasticrl.lab.config.base import ConfigError
from plasticrl.runlog import read_jsonl

ROOT = Path(__file__).resolve().parents[2]
SMOKE_SWEEP = ROOT / "configs" / "sweeps" / "smoke.yaml"
TABLE1 = ROOT / "configs" / "sweeps" / "adaptive_rr_table1.yaml"
TABLE1_DRQ = ROOT / "configs" / "sweeps" / "adaptive_rr_table1_drq.yaml"
TRAIN = ROOT / "configs" / "train"
# tiny runs: evaluations at agent steps 50, 100, 150, 200 (400 ... 1600 frames at the smoke config's action repeat 8)
TINY = ["run.total_steps=200", "agent.learning_starts=50", "eval.every=50", "monitor.every=100"]


def write_sweep(folder: Path, text: str) -> Path:
    path = folder / "sweep.yaml"
    path.write_text(text)
    return path


@pytest.fixture(autouse=True)
def _at_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # sweep paths are relative to the current folder, as on the command line


def test_expansion_is_arms_x_grid_x_seeds_with_deterministic_names(tmp_path):
    path = write_sweep(tmp_path, f"""
name: grid
base: [configs/train/smoke_sac.yaml]
grid:
  env.id: [dmc:cartpole-swingup, dmc:walker-walk]
  agent.batch_size: [16, 32]
arms:
  rr2: [configs/train/overlays/rr2.yaml]
  three: [replay_ratio.ratio=3]
seeds: 2
overrides: [eval.episodes=2]
out_dir: {tmp_path}/runs
""")
    runs = sweeps.expand(sweeps.load(path))
    expected = [f"grid/{arm}/{env}{f',agent.batch_size={bs}'}/seed{seed}" for seed, env, bs, arm in
                itertools.product([0, 1], ["cartpole-swingup", "walker-walk"], [16, 32], ["rr2", "three"])]
    assert [r.name for r in runs] == expected  # seed-major: seed 0 of every arm and task first
    for run in runs:
        arm, task, seed = run.name.split("/")[1:]
        cfg = run.cfg
        assert run.folder == tmp_path / "runs" / run.name  # the same folder on every re-run
        assert (run.arm, run.task, f"seed{run.seed}") == (arm, task, seed)
        assert cfg.run.name == run.name and cfg.run.out_dir == str(tmp_path / "runs")
        assert cfg.run.dir == str(run.folder) and f"run.dir={run.folder}" in run.overrides  # train writes there
        assert cfg.run.seed == int(seed[4:]) and cfg.eval.episodes == 2
        assert f"dmc:{task.split(',')[0]}" == cfg.env.id and f"agent.batch_size={cfg.agent.batch_size}" in task
        assert cfg.replay_ratio.ratio == (2.0 if arm == "rr2" else 3.0)
        assert (cfg.logging.wandb.group, cfg.logging.wandb.name) == ("grid", f"{arm}/{task}/{seed}")
        assert cfg.logging.wandb.job_type == arm and f"logging.wandb.job_type={arm}" in run.overrides
        # the run's command line gives `plasticrl train` exactly this config
        assert train_config.load(run.config, run.overrides, overlays=run.overlays) == cfg
        assert run.command("py")[:5] == ["py", "-m", "plasticrl", "train", str(TRAIN / "smoke_sac.yaml")]


def test_without_arms_and_seeds_one_arm_named_base_and_the_configs_seed(tmp_path):
    path = write_sweep(tmp_path, "name: s\nbase: configs/train/smoke_sac.yaml\ngrid:\n  run.seed: [4, 7]\n")
    runs = sweeps.expand(sweeps.load(path), ["run.total_steps=123"])
    assert [r.name for r in runs] == ["s/base/cartpole-swingup/seed4", "s/base/cartpole-swingup/seed7"]
    assert [r.cfg.run.total_steps for r in runs] == [123, 123]
    path = write_sweep(tmp_path, "name: s\nbase: configs/train/smoke_sac.yaml\n")
    assert [r.name for r in sweeps.expand(sweeps.load(path))] == ["s/base/cartpole-swingup/seed0"]


@pytest.mark.parametrize(("text", "expected"), [
    ("name: s\nbase: configs/train/smoke_sac.yaml\nsedes: 3\n", ["sedes: unknown key", "Did you mean 'seeds'"]),
    ("name: s\nbase: configs/train/smoke_sac.yaml\ngrid:\n  env.id: dmc:walker-walk\n",
     ["grid.env.id", "valid list"]),
    ("name: s/x\nbase: configs/train/smoke_sac.yaml\n", ["name: 's/x' is not allowed"]),
    ("name: s\nbase: configs/train/smoke_sac.yaml\narms:\n  a b: []\n", ["arms.a b"]),
    ("name: s\nbase: configs/train/smoke_sac.yaml\nseeds: 2\ngrid:\n  run.seed: [1]\n", ["seeds: given twice"]),
    ("name: s\nbase: configs/train/smoke_sac.yaml\ngrid:\n  run.name: [a]\n", ["grid.run.name: set by the sweep"]),
    ("name: s\nbase: configs/train/smoke_sac.yaml\noverrides: [eval.every]\n", ["overrides.0: 'eval.every' is not"]),
    ("name: s\nbase: []\n", ["base"]),
])
def test_bad_sweep_files_name_the_key(tmp_path, text, expected):
    with pytest.raises(ConfigError) as info:
        sweeps.load(write_sweep(tmp_path, text))
    for part in expected:
        assert part in str(info.value)


def test_a_bad_run_fails_at_once_naming_the_run_and_key(tmp_path, capsys):
    out = tmp_path / "runs"
    path = write_sweep(tmp_path, """
name: bad
base: configs/train/smoke_sac.yaml
grid:
  env.id: [dmc:cartpole-swingup, dmc:walker-wlak]
arms:
  a: [agent.batch_sizee=8]
  b: [configs/train/overlays/missing.yaml]
  c: []
seeds: [0, 3]
""")
    assert main(["sweep", str(path), "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "run bad/a/cartpole-swingup/seed0 (and 3 more): agent.batch_sizee: unknown key" in err
    assert "arms.b.0: 'configs/train/overlays/missing.yaml' not found" in err
    # every problem of a run in one report: arm a's walker-wlak runs get the env-id line too (2 arms x 2 seeds)
    assert "run bad/a/walker-wlak/seed0 (and 3 more): env.id: Unknown env id 'dmc:walker-wlak'" in err
    assert "bad/c/cartpole-swingup" not in err  # the valid runs are not named
    assert not out.exists()  # nothing started, nothing written
    assert main(["sweep", str(SMOKE_SWEEP), "--set", "run.out_dir=x", "--dry-run"]) == 2
    assert "--set run.out_dir=x: set by the sweep itself (use --out-dir)" in capsys.readouterr().err
    assert main(["sweep", str(SMOKE_SWEEP), "--set", "run.dir=x", "--dry-run"]) == 2
    assert "--set run.dir=x: set by the sweep itself" in capsys.readouterr().err
    assert main(["sweep", str(SMOKE_SWEEP), "--only", "nothing/*", "--dry-run"]) == 2
    assert "no run matches" in capsys.readouterr().err


def test_dry_run_shows_each_runs_state_folder_and_command(tmp_path, capsys):
    out = tmp_path / "runs"
    finished = out / "smoke" / "rr0.5" / "cartpole-swingup" / "seed0"
    finished.mkdir(parents=True)
    (finished / "done.json").write_text(json.dumps({"env_step": 200}))
    (out / "smoke" / "rr2" / "cartpole-swingup" / "seed0").mkdir(parents=True)
    assert main(["sweep", str(SMOKE_SWEEP), "--out-dir", str(out), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0:2] == ["smoke/rr0.5/cartpole-swingup/seed0  [finished]", f"  folder: {finished}"]
    assert lines[3:5] == ["smoke/rr2/cartpole-swingup/seed0  [unfinished (restarts)]",
                          f"  folder: {out / 'smoke' / 'rr2' / 'cartpole-swingup' / 'seed0'}"]
    assert f"--set run.dir={finished}" in lines[2] and len(lines) == 6
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == ["done.json"]  # nothing run, nothing written


def test_table1_sweep_is_the_papers_grid():
    """DrQ-v2: 3 tasks x 7 arms x 5 seeds = 105 runs, each its task's own drqv2 config (walker-run n-step 1 and
    batch 512, quadruped-run replay 100k) + its arm's overlays: 2M frames, an evaluation every 10k frames over 10
    episodes, the replay ratio of the arm, and Reset (actor and critic) or ReDo (critic) where the arm has it."""
    runs = sweeps.expand(sweeps.load(TABLE1))
    assert len(runs) == 105
    rr = {"rr0.5": ("static", 0.5), "rr2": ("static", 2.0), "adaptive_rr": ("adaptive", None)}
    arms = [f"{r}{x}" for r in ("rr0.5", "rr2") for x in ("", "+reset", "+redo")] + ["adaptive_rr"]
    tasks = ["cheetah-run", "walker-run", "quadruped-run"]
    assert {(r.arm, r.task, r.seed) for r in runs} == set(itertools.product(arms, tasks, range(5)))
    for run in runs:
        cfg = run.cfg
        assert cfg.agent.kind == "drqv2" and cfg.agent.init == "orthogonal"
        assert cfg.run.total_steps * cfg.env.action_repeat == 2_000_000 and cfg.env.action_repeat == 2
        assert (cfg.eval.every * cfg.env.action_repeat, cfg.eval.episodes) == (10_000, 10)
        kind, ratio = rr[run.arm.split("+")[0]]
        assert cfg.replay_ratio.kind == kind and (ratio is None or cfg.replay_ratio.ratio == ratio)
        kinds = [(i.kind, i.groups) for i in cfg.interventions]
        assert kinds == {"": [], "reset": [("reset", ["actor", "critic"])], "redo": [("redo", ["critic"])]}[
            run.arm.partition("+")[2]]
        assert (cfg.agent.n_step, cfg.agent.batch_size) == ((1, 512) if run.task == "walker-run" else (3, 256))
        assert cfg.agent.buffer_size == (100_000 if run.task == "quadruped-run" else 1_000_000)


def test_table1_drq_sweep_is_the_papers_grid_with_sac_based_drq():
    """3 tasks x 3 arms x 5 seeds, 2M frames = 1M agent steps at action repeat 2, an evaluation every 10k frames over
    10 episodes; each run is its task's drq config + the 2M-frame overlay + its arm's overlay."""
    runs = sweeps.expand(sweeps.load(TABLE1_DRQ))
    assert len(runs) == 45
    arms = {"rr0.5": ("static", 0.5), "rr2": ("static", 2.0), "adaptive_rr": ("adaptive", None)}
    tasks = ["cheetah-run", "walker-run", "quadruped-run"]
    assert {(r.arm, r.task, r.seed) for r in runs} == set(itertools.product(arms, tasks, range(5)))
    for run in runs:
        cfg = run.cfg
        assert cfg.run.total_steps * cfg.env.action_repeat == 2_000_000 and cfg.env.action_repeat == 2
        assert (cfg.eval.every * cfg.env.action_repeat, cfg.eval.episodes) == (10_000, 10)
        kind, ratio = arms[run.arm]
        assert cfg.replay_ratio.kind == kind and (ratio is None or cfg.replay_ratio.ratio == ratio)
        own = train_config.load(TRAIN / f"drq_{run.task.replace('-', '_')}.yaml",
                                [f"run.seed={run.seed}", "eval.every=5000", f"run.name={run.name}",
                                 f"run.out_dir={cfg.run.out_dir}", f"run.dir={run.folder}",
                                 "logging.wandb.group=adaptive_rr_table1_drq",
                                 f"logging.wandb.name={run.arm}/{run.task}/seed{run.seed}",
                                 f"logging.wandb.job_type={run.arm}"],
                                overlays=[TRAIN / "overlays" / "ma2024.yaml", TRAIN / "overlays" / f"{run.arm}.yaml"])
        assert cfg == own


def test_default_concurrency_and_ray_resources_follow_the_stated_rule():
    cpu_cfg = train_config.load(TRAIN / "smoke_sac.yaml")  # run.device cpu
    auto_cfg = train_config.load(TRAIN / "quickstart.yaml")  # run.device auto
    cpu_runs = [sweeps.Run("a", "a", "t", 0, Path("x"), "c", [], [], cpu_cfg)]
    auto_runs = [sweeps.Run("a", "a", "t", 0, Path("x"), "c", [], [], auto_cfg)]
    none = sweeps.ResourcesConfig()
    assert sweeps.default_concurrency(cpu_runs, cores=16, gpus=0, resources=none) == 8  # cores / 2
    assert sweeps.default_concurrency(cpu_runs, cores=16, gpus=4, resources=none) == 8  # CPU runs ignore GPUs
    assert sweeps.default_concurrency(cpu_runs, cores=1, gpus=0, resources=none) == 1
    assert sweeps.default_concurrency(auto_runs, cores=16, gpus=4, resources=none) == 4  # one run per GPU
    half = sweeps.ResourcesConfig(gpus_per_run=0.5)
    assert sweeps.default_concurrency(auto_runs, cores=16, gpus=4, resources=half) == 8
    assert sweeps.ray_resources(cpu_cfg, none, cluster_gpus=8) == (1.0, 0.0)
    assert sweeps.ray_resources(auto_cfg, none, cluster_gpus=8) == (1.0, 1.0)
    assert sweeps.ray_resources(auto_cfg, none, cluster_gpus=0) == (1.0, 0.0)
    four = train_config.load(TRAIN / "smoke_sac.yaml", ["env.n_envs=4", "run.device=cuda"])
    assert sweeps.ray_resources(four, none, cluster_gpus=0) == (4.0, 1.0)
    assert sweeps.ray_resources(four, sweeps.ResourcesConfig(cpus_per_run=2, gpus_per_run=0.25), 8) == (2.0, 0.25)


# --- the local backend end to end: SIGTERM mid-sweep, then a re-run ---------------------------------------------

def sweep_command(out: Path, *extra: str) -> list[str]:
    sets = [a for s in TINY for a in ("--set", s)]
    return [sys.executable, "-m", "plasticrl", "sweep", str(SMOKE_SWEEP), "--out-dir", str(out), *sets, *extra]


def wait_for(condition, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the sweep ended early: {proc.communicate()[0][-3000:]}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that contain ``text``."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmd:
            found.append(cmd)
    return found


@pytest.fixture(scope="module")
def smoke_sweep(tmp_path_factory):
    """The smoke sweep, one run at a time: SIGTERM while the second run trains, then the same command again."""
    out = tmp_path_factory.mktemp("sweeps")
    first = out / "smoke" / "rr0.5" / "cartpole-swingup" / "seed0"
    second = out / "smoke" / "rr2" / "cartpole-swingup" / "seed0"
    proc = subprocess.Popen(sweep_command(out, "--max-concurrent", "1"), cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wait_for(lambda: (first / "done.json").is_file() and sweeps.current_step(second) > 0, 300, proc)
    proc.send_signal(signal.SIGTERM)
    stopped_output = proc.communicate(timeout=120)[0]
    stopped = {"rc": proc.returncode, "output": stopped_output, "left": processes_mentioning(str(out)),
               "first_marker": (first / "done.json").read_text(), "second": sorted(p.name for p in second.rglob("*"))}
    rerun = subprocess.run(sweep_command(out), cwd=ROOT, text=True, capture_output=True, timeout=300)
    return {"out": out, "first": first, "second": second, "stopped": stopped, "rerun": rerun}


def test_sigterm_stops_the_running_run_cleanly_and_keeps_the_finished_one(smoke_sweep):
    stopped = smoke_sweep["stopped"]
    assert stopped["rc"] == 128 + signal.SIGTERM, stopped["output"][-3000:]
    assert "done     smoke/rr0.5/cartpole-swingup/seed0" in stopped["output"]
    assert "interrupted smoke/rr2/cartpole-swingup/seed0" in stopped["output"]
    assert stopped["left"] == []  # no training left running
    assert "interrupted.zip" in stopped["second"]  # it stopped through its Ctrl-C path
    assert "done.json" not in stopped["second"] and "final.zip" not in stopped["second"]
    assert json.loads(stopped["first_marker"])["env_step"] == 200


def test_rerun_skips_the_finished_run_and_restarts_the_interrupted_one(smoke_sweep):
    rerun, first, second = smoke_sweep["rerun"], smoke_sweep["first"], smoke_sweep["second"]
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "skip     smoke/rr0.5/cartpole-swingup/seed0 (finished at step 200)" in rerun.stdout
    assert "restart  smoke/rr2/cartpole-swingup/seed0" in rerun.stdout
    assert "start    smoke/rr0.5" not in rerun.stdout
    assert (first / "done.json").read_text() == smoke_sweep["stopped"]["first_marker"]  # untouched
    aside = second.with_name("seed0.interrupted-1")
    assert sorted(p.name for p in aside.rglob("*")) == smoke_sweep["stopped"]["second"]  # the old folder, kept
    assert (aside / "checkpoints" / "interrupted.zip").is_file() and (aside / "config.yaml").is_file()
    assert (second / "checkpoints" / "final.zip").is_file()
    assert not (second / "checkpoints" / "interrupted.zip").exists()  # the restart began from scratch
    assert json.loads((second / "done.json").read_text())["env_step"] == 200


def test_an_interrupted_sweep_run_folder_resumes_with_plasticrl_resume(smoke_sweep, tmp_path):
    """The interrupted run's folder (a copy of the one the re-run set aside) is a run folder: `plasticrl resume`
    continues it from checkpoints/interrupted.zip to the end, in place."""
    folder = tmp_path / "seed0"
    shutil.copytree(smoke_sweep["second"].with_name("seed0.interrupted-1"), folder)
    stopped_at = sweeps.last_env_step(folder / "metrics.jsonl")
    assert stopped_at is not None and stopped_at < 200
    proc = subprocess.run([sys.executable, "-m", "plasticrl", "resume", str(folder)], cwd=ROOT, text=True,
                          capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"resumed from {folder / 'checkpoints' / 'interrupted.zip'}" in proc.stdout
    assert (folder / "checkpoints" / "final.zip").is_file() and sweeps.last_env_step(folder / "metrics.jsonl") == 200
    assert sweeps.completion(folder, 200) is not None  # the sweep would now count it finished


def test_each_run_folder_holds_its_log_config_and_marker(smoke_sweep):
    """The sweep's folder of a run is its training's run folder itself: no <seed>-<time>/ inside."""
    for folder, arm, ratio in ((smoke_sweep["first"], "rr0.5", 0.5), (smoke_sweep["second"], "rr2", 2.0)):
        assert sorted(p.name for p in folder.iterdir()) == ["checkpoints", "config.yaml", "done.json",
                                                             "metrics.jsonl", "plots", "train.log"]
        marker = json.loads((folder / "done.json").read_text())
        assert (marker["env_step"], marker["total_steps"]) == (200, 200)
        assert sweeps.last_env_step(folder / "metrics.jsonl") == 200
        assert (folder / "checkpoints" / "final.zip").is_file()
        cfg = yaml.safe_load((folder / "config.yaml").read_text())
        assert cfg["run"]["name"] == f"smoke/{arm}/cartpole-swingup/seed0" and cfg["run"]["dir"] == str(folder)
        assert cfg["replay_ratio"]["ratio"] == ratio and cfg["run"]["total_steps"] == 200
        assert cfg["logging"]["wandb"]["group"] == "smoke"
        assert cfg["logging"]["wandb"]["name"] == f"{arm}/cartpole-swingup/seed0"
        log = (folder / "train.log").read_text()
        assert log.startswith("$ ") and f"run folder: {folder}  " in log and f"done: {folder}\n" in log


def test_report_on_the_smoke_sweeps_run_folders(smoke_sweep):
    """Budgets 500, 1000, 1600 and 3200 frames: each value is the last evaluation at or before the budget, read here
    from metrics.jsonl; 3200 frames is past the runs' 1600 (200 agent steps x action repeat 8): short."""
    out = smoke_sweep["out"] / "report"
    proc = subprocess.run([sys.executable, "-m", "plasticrl", "report", str(smoke_sweep["out"] / "smoke"),
                           "--budgets", "500,1k,1.6k,3.2k", "--out", str(out), "--reps", "200"],
                          cwd=ROOT, text=True, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader((out / "report.csv").open()))
    assert len(rows) == 2 * 4  # 2 arms x 4 budgets; the interrupted folder is not a run
    for row in rows:
        folder = smoke_sweep["first"] if row["arm"] == "rr0.5" else smoke_sweep["second"]
        evals = [(r["env_step"] * 8, r["eval/return_mean"]) for r in read_jsonl(folder) if "eval/return_mean" in r]
        budget = int(row["frames"])
        assert int(row["agent_steps"]) == budget // 8 and row["task"] == "cartpole-swingup"
        if budget > 1600:
            assert (row["runs"], row["short"], row["mean"], row["iqm"]) == ("0", "1", "", "")
            continue
        expected = [v for frames, v in evals if frames <= budget][-1]
        assert (row["runs"], row["short"]) == ("1", "0")
        for key in ("mean", "iqm", "iqm_ci_low", "iqm_ci_high"):  # one seed: all equal its value
            assert float(row[key]) == pytest.approx(expected)
        assert float(row["std"]) == 0.0
    assert "| cartpole-swingup | rr2 | 1.6k | 200 | 1 | 0 |" in (out / "report.md").read_text()
    assert (out / "curves.png").stat().st_size > 10_000


def test_plot_finds_the_sweeps_run_folders_and_groups_them_by_arm_and_task(smoke_sweep):
    """`plasticrl plot <sweep folder>`: the two run folders (not the one set aside), one series per arm and task."""
    from plasticrl.lab import plots

    first, second = smoke_sweep["first"], smoke_sweep["second"]
    assert plots.find_run_dirs([smoke_sweep["out"] / "smoke"]) == [first, second]
    assert plots.arms([first, second]) == {"smoke/rr0.5/cartpole-swingup": [first],
                                           "smoke/rr2/cartpole-swingup": [second]}


# --- the Ray backend -------------------------------------------------------------------------------------------

def two_by_two(tmp_path: Path) -> Path:
    """The smoke sweep with 2 seeds: 2 arms x 2 seeds."""
    path = tmp_path / "smoke2x2.yaml"
    path.write_text(SMOKE_SWEEP.read_text().replace("seeds: 1", "seeds: 2"))
    return path


@pytest.mark.parametrize("backend", ["local", "ray"])
def test_a_two_arm_two_seed_sweep_runs_on_each_backend(tmp_path, backend):
    """2 arms x 2 seeds of the smoke config: as subprocesses on this machine, and as tasks of 1 CPU, 0 GPUs on a real
    local Ray instance (bound to the loopback address); every run finishes with its marker and final checkpoint, and
    no training process is left."""
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # Ray's local-only mode: 127.0.0.1
    cmd = sweep_command(tmp_path, "--backend", backend) + ["--set", "run.total_steps=100"]
    cmd[cmd.index(str(SMOKE_SWEEP))] = str(two_by_two(tmp_path))
    proc = subprocess.run(cmd, cwd=ROOT, text=True, capture_output=True, timeout=400, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for arm, seed in itertools.product(("rr0.5", "rr2"), (0, 1)):
        name = f"smoke/{arm}/cartpole-swingup/seed{seed}"
        started = f"start    {name}" + (" (Ray task: 1 CPUs, 0 GPUs)" if backend == "ray" else "")
        assert started in proc.stdout and f"done     {name}" in proc.stdout
        marker = json.loads((tmp_path / name / "done.json").read_text())
        assert marker["env_step"] == 100
        assert (tmp_path / name / "checkpoints" / "final.zip").is_file()  # the run folder itself
    assert "4 done, 0 failed" in proc.stdout
    assert processes_mentioning(str(tmp_path)) == []


def test_a_sweep_gives_either_base_or_tasks(tmp_path):
    """``base`` and ``tasks`` are two ways to give the runs' base configs: exactly one of them, each task a list."""
    smoke = "configs/train/smoke_sac.yaml"
    for body, expected in (("name: s\n", "base, tasks: give exactly one"),
                           (f"name: s\nbase: [{smoke}]\ntasks: {{a: [{smoke}]}}\n", "base, tasks: give exactly one"),
                           ("name: s\ntasks: {a: []}\n", "tasks.a: give a train config")):
        path = tmp_path / "s.yaml"
        path.write_text(body)
        with pytest.raises(ConfigError, match=expected):
            sweeps.load(path)


def test_a_sweep_runs_wandb_job_type_is_its_arm_and_an_offline_wandb_run_records_it(tmp_path):
    """The sweep sets logging.wandb.job_type to the arm (and refuses it in --set); the settings a run hands WandbSink
    carry it, and the offline W&B run's log file records it."""
    from plasticrl.lab.config.base import wandb_settings
    from plasticrl.runlog import RunLogger

    path = write_sweep(tmp_path, f"""
name: jt
base: [configs/train/smoke_sac.yaml]
arms:
  rr2: [configs/train/overlays/rr2.yaml]
  arm_with_a_rare_name: [replay_ratio.ratio=3]
out_dir: {tmp_path}/runs
""")
    runs = sweeps.expand(sweeps.load(path))
    assert {r.arm: r.cfg.logging.wandb.job_type for r in runs} == {"rr2": "rr2",
                                                                  "arm_with_a_rare_name": "arm_with_a_rare_name"}
    assert train_config.load(TRAIN / "smoke_sac.yaml").logging.wandb.job_type is None  # outside sweeps: W&B's own
    with pytest.raises(ConfigError, match="logging.wandb.job_type=x: set by the sweep itself"):
        sweeps.expand(sweeps.load(path), ["logging.wandb.job_type=x"])
    (run,) = [r for r in runs if r.arm == "arm_with_a_rare_name"]
    cfg = run.cfg.model_copy(update={"logging": run.cfg.logging.model_copy(update={
        "wandb": run.cfg.logging.wandb.model_copy(update={"mode": "offline"})})})
    settings = wandb_settings(cfg.logging.wandb, cfg.run.name, cfg.run.seed, ["sac"])
    assert settings["job_type"] == "arm_with_a_rare_name"
    logger = RunLogger(tmp_path / "wb", wandb_settings=settings)
    assert logger.wandb.run.job_type == "arm_with_a_rare_name"
    logger.close()
    (log,) = (tmp_path / "wb").rglob("*.wandb")
    assert b"arm_with_a_rare_name" in log.read_bytes()  # the run record W&B syncs later
