"""The faults a user hits: each is one clear error naming the problem and the fix, before anything is written."""

import ctypes.util
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import minari
import pytest
import torch

from plasticrl.lab import collect
from plasticrl.lab.cli import main
from plasticrl.lab.config import train as cfgmod
from plasticrl.lab.fast_path import resolve_auto

ROOT = Path(__file__).resolve().parents[2]
SMOKE = str(ROOT / "configs" / "train" / "smoke.yaml")
REACH = "metaworld:reach-v3"


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


@pytest.mark.parametrize("text", ["", "# only a comment\n\n# and another\n"])
def test_an_empty_config_is_refused_naming_the_file(tmp_path, capsys, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    assert main(["train", str(path), "--set", f"run.out_dir={tmp_path}/runs"]) == 2
    err = one_line_error(capsys)
    assert str(path) in err and "empty" in err and "mapping of sections (run, env, agent" in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("override", "expected"), [
    ("agent.learning_rate=[1e-4,", "not valid YAML"),
    ("agent", "no '='"),
    ("=3", "empty"),
    ("agent..gamma=0.9", "empty part"),
    ("interventions.0.tau=0.2", "set the whole list"),
])
def test_a_malformed_override_is_one_line_naming_it_and_the_form(tmp_path, capsys, override, expected):
    assert main(["train", SMOKE, "--set", f"run.out_dir={tmp_path}/runs", "--set", override]) == 2
    err = one_line_error(capsys)
    assert f"--set {override!r}" in err and expected in err
    assert "key.sub=value" in err or "--set '" in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("content", "expected"), [
    ("run:\n  seed: 1\nagent:\n  gamma: 0.9\nrun:\n  seed: 2\n", "key 'run' given twice (first on line 1)"),
    ("run:\n\tseed: 1\n", "not valid YAML: found character '\\t'"),
    (b"\x89PNG\r\n\x1a\n\xff\xfe", "not a text file"),
    (None, "is a folder"),
])
def test_a_bad_config_file_is_one_line(tmp_path, capsys, content, expected):
    path = tmp_path / "config.yaml"
    if content is None:
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    assert main(["train", str(path), "--set", f"run.out_dir={tmp_path}/runs"]) == 2
    err = one_line_error(capsys)
    assert str(path) in err and expected in err


def test_schema_cross_key_and_env_problems_come_in_one_report():
    with pytest.raises(cfgmod.ConfigError) as info:
        cfgmod.load(SMOKE, ["agent.gamma=2", "agent.kind=sac", "env.id=dmc:walker-wlak",
                            "interventions=[{kind: redo, groups: [critc], every: 5}]"])
    lines = str(info.value).splitlines()[1:]
    assert len(lines) == 4, lines
    assert lines[0].startswith("  agent.gamma: 2 is not allowed")  # pydantic's
    assert "agent.feature_dim: 16 is a DrQ option that agent.kind=sac does not have" in lines[1]  # agent_problems
    assert "interventions.0.groups: 'critc'" in lines[2] and "'critic'" in lines[2]  # intervention_problems
    assert "env.id: Unknown env id 'dmc:walker-wlak'" in lines[3] and "dmc:walker-walk" in lines[3]  # the registry


def test_a_refused_key_is_not_reported_again_through_its_default():
    """agent.kind=sacc is refused; its default (drq) must not produce 'env.pixels: false is not allowed with drq'."""
    with pytest.raises(cfgmod.ConfigError) as info:
        cfgmod.load(SMOKE, ["agent.kind=sacc", "env.pixels=false"])
    assert str(info.value).splitlines()[1:] == [
        "  agent.kind: 'sacc' is not allowed: Input should be 'drq', 'drqv2' or 'sac'."]


@pytest.mark.parametrize("override", ["agent.compile=true", "agent.compile=max-autotune-no-cudagraphs",
                                      "agent.precision=bf16", "agent.buffer_device=cuda", "agent.cuda_graph=true"])
def test_a_cuda_only_key_set_on_a_cpu_run_is_refused(override):
    with pytest.raises(cfgmod.ConfigError) as info:
        cfgmod.load(SMOKE, ["run.device=cpu", override])
    key = override.split("=")[0]
    assert f"{key}: " in str(info.value) and "needs CUDA" in str(info.value) and "run.device is cpu" in str(info.value)


def test_auto_values_and_cpu_capable_keys_keep_working_on_the_cpu():
    cfg = cfgmod.load(SMOKE, ["run.device=cpu", "agent.fused_q_heads=true", "agent.async_env_step=true",
                              "agent.compile=false", "agent.precision=fp32", "agent.buffer_device=cpu"])
    assert cfg.agent.fused_q_heads is True
    cfg = cfgmod.load(SMOKE, ["run.device=auto"])
    resolved, _ = resolve_auto(cfg, "cpu")
    assert (resolved.agent.precision, resolved.agent.compile) == ("fp32", False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_bench_on_cuda_without_cuda_is_one_line(capsys, tmp_path):
    assert main(["bench", "--device", "cuda", "--quick", "--json", str(tmp_path / "b.json")]) == 2
    err = one_line_error(capsys)
    assert "--device cuda" in err and "no CUDA device" in err and "--device cpu" in err
    assert main(["bench", "--quick", "--compile", "--json", str(tmp_path / "nope" / "b.json")]) == 2
    err = capsys.readouterr().err
    assert "--compile: needs CUDA" in err and "does not exist" in err and not (tmp_path / "b.json").exists()


@pytest.mark.skipif(ctypes.util.find_library("OSMesa") is not None, reason="needs a machine without libOSMesa")
@pytest.mark.parametrize(("backend", "expected"), [("osmesa", "apt-get install libosmesa6"),
                                                   ("nope", "not a MuJoCo OpenGL backend")])
def test_a_mujoco_gl_that_cannot_render_is_one_line_naming_the_package(tmp_path, backend, expected):
    env = {**os.environ, "MUJOCO_GL": backend}
    env.pop("PYOPENGL_PLATFORM", None)
    proc = subprocess.run([sys.executable, "-m", "plasticrl", "train", SMOKE, "--set", f"run.out_dir={tmp_path}/r"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and expected in proc.stderr and "unset MUJOCO_GL" in proc.stderr
    assert not (tmp_path / "r").exists()


def start_collect(out: Path, episodes: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "plasticrl", "collect", "--tasks", REACH, "--episodes",
                             str(episodes), "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT)


def wait_for_episode(proc: subprocess.Popen, episode: int) -> None:
    for line in proc.stdout:
        if f"episode {episode}:" in line:
            return
    raise AssertionError(f"collect ended before episode {episode}: {proc.stderr.read()[-2000:]}")


def local_datasets(out: Path) -> dict:
    with collect.datasets_path(out):
        return minari.list_local_datasets()


def test_a_sigterm_during_collect_leaves_no_dataset_and_names_the_rest(tmp_path):
    out = tmp_path / "data"
    proc = start_collect(out, episodes=50)
    wait_for_episode(proc, 2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert err.strip().splitlines() == [
        f"collect interrupted: the dataset of {REACH} was not written (a dataset is moved into {out} only when "
        f"complete); to write the rest: --tasks {REACH}"]
    assert local_datasets(out) == {}
    assert not (out / collect.scripted_dataset_id(REACH, 0.0, 50, 0)).exists()
    assert not (out / collect.STAGING).exists()


def test_a_killed_collect_leaves_no_dataset_and_the_next_one_cleans_up(tmp_path):
    out = tmp_path / "data"
    proc = start_collect(out, episodes=50)
    wait_for_episode(proc, 2)
    proc.kill()  # SIGKILL: nothing of the process runs
    proc.communicate(timeout=60)
    assert local_datasets(out) == {}
    assert not (out / collect.scripted_dataset_id(REACH, 0.0, 50, 0)).exists()
    assert list((out / collect.STAGING).iterdir())  # the partial dataset, in the staging folder
    again = start_collect(out, episodes=2)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-2000:]
    dataset_id = collect.scripted_dataset_id(REACH, 0.0, 2, 0)
    assert list(local_datasets(out)) == [dataset_id]
    with collect.datasets_path(out):
        assert minari.load_dataset(dataset_id).total_episodes == 2
    assert not (out / collect.STAGING).exists()


@pytest.mark.parametrize(("args", "expected"), [
    (["--tasks", REACH, "--out", "FILE"], "is a file; give a folder"),
    (["--runs", "MISSING"], "no such folder"),
])
def test_collect_with_a_file_for_a_folder_is_one_line(tmp_path, capsys, args, expected):
    (tmp_path / "file").write_text("x")
    args = [str(tmp_path / "file") if a == "FILE" else str(tmp_path / "missing") if a == "MISSING" else a
            for a in args]
    assert main(["collect", *args]) == 2
    err = one_line_error(capsys)
    assert expected in err


def test_run_device_auto_on_a_cpu_machine_refuses_cuda_only_keys_set_by_hand(tmp_path, capsys):
    """run.device=auto resolves to cpu here (no CUDA): agent.precision=bf16 set by hand is then refused with one line
    before the run folder exists (validation cannot know the device; train checks once it is resolved)."""
    import torch

    from plasticrl.lab.cli import main

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    code = main(["train", "configs/train/smoke.yaml", "--set", "run.device=auto", "--set", "agent.precision=bf16",
                 "--set", f"run.out_dir={tmp_path}/runs"])
    err = capsys.readouterr().err
    assert code == 2 and "agent.precision: 'bf16' needs CUDA" in err and "resolved to cpu" in err
    assert not (tmp_path / "runs").exists()


def _open_on_a_full_disk(monkeypatch, module, name):
    """Files called ``name`` that ``module`` opens are opened on /dev/full: their writes fail with the kernel's
    ENOSPC, as on a full disk."""
    import builtins

    def full_open(path, mode="r", *args, **kwargs):
        if Path(path).name == name:
            return builtins.open("/dev/full", "w" if "x" in mode else mode, *args, **kwargs)
        return builtins.open(path, mode, *args, **kwargs)

    monkeypatch.setattr(module, "open", full_open, raising=False)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("into", ["out_dir", "an existing run.dir"])
def test_a_disk_full_from_the_start_is_one_line_and_takes_back_only_what_it_made(tmp_path, capsys, monkeypatch,
                                                                                 into):
    from plasticrl.lab import train

    _open_on_a_full_disk(monkeypatch, train, "config.yaml")
    if into == "out_dir":
        where = ["--set", f"run.out_dir={tmp_path}/runs"]
    else:  # a folder of the user's (a sweep's run.dir, say) with a file of theirs in it
        (tmp_path / "mine").mkdir()
        (tmp_path / "mine" / "notes.txt").write_text("keep me")
        where = ["--set", f"run.dir={tmp_path}/mine"]
    assert main(["train", SMOKE, *where]) == 1
    err = one_line_error(capsys)
    assert "config.yaml not written (No space left on device)" in err and "run.out_dir" in err, err
    assert not list(tmp_path.rglob("config.yaml")) and not list(tmp_path.rglob("checkpoints")), "a half-made run"
    if into == "out_dir":
        assert not list((tmp_path / "runs").rglob("0-*"))
    else:
        assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("checkpointed", [True, False])
def test_a_disk_full_mid_run_names_the_log_and_how_to_continue(tmp_path, capsys, monkeypatch, checkpointed):
    """metrics.jsonl on a full disk: the first record (the probe at step 100) fails; one line names the file, the
    step and the fix (`plasticrl resume` when a checkpoint exists, a new start when none does), and the run log
    closes without a second error."""
    from stable_baselines3 import SAC

    from plasticrl import runlog

    _open_on_a_full_disk(monkeypatch, runlog, "metrics.jsonl")
    every = 50 if checkpointed else 200
    code = main(["train", str(ROOT / "configs" / "train" / "smoke_sac.yaml"), "--set", f"run.out_dir={tmp_path}",
                 "--set", f"run.checkpoint_every={every}", "--set", "run.total_steps=300",
                 "--set", "logging.plots=false"])
    err = one_line_error(capsys)
    assert code == 1 and "metrics.jsonl: the record of env step 100 not written (No space left" in err, err
    (run,) = (tmp_path / "smoke_sac").iterdir()
    if checkpointed:
        assert f"continue with `plasticrl resume {run}`" in err, err
        SAC.load(run / "checkpoints" / "step_50.zip", device="cpu")  # whole
    else:
        assert "no checkpoint was written yet: free disk space and start the run again" in err, err


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A state-SAC run stopped after its step_100 checkpoint (final.zip removed), with its metrics.jsonl."""
    import shutil

    out = tmp_path_factory.mktemp("stopped")
    assert main(["train", str(ROOT / "configs" / "train" / "smoke_sac.yaml"), "--set", f"run.out_dir={out}",
                 "--set", "run.checkpoint_every=100", "--set", "run.total_steps=130",
                 "--set", "logging.plots=false"]) == 0
    (run,) = (out / "smoke_sac").iterdir()
    (run / "checkpoints" / "final.zip").unlink()
    return run, shutil.copytree


def _edit_config(run, key, value):
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    section, name = key.split(".")
    cfg[section][name] = value
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))


@pytest.mark.parametrize("case", ["resume_other_n_envs", "resume_other_env", "resume_no_checkpoint", "resume_not_a_run",
                                  "eval_not_a_run", "eval_corrupt_zip", "plot_corrupt_record", "resume_corrupt_record"])
def test_a_damaged_or_edited_run_is_one_line_naming_it(stopped_run, tmp_path, capsys, case):
    source, copytree = stopped_run
    run = copytree(source, tmp_path / "run")
    if case == "resume_other_n_envs":
        _edit_config(run, "env.n_envs", 2)
        args, expected = ["resume", str(run)], "the checkpoint holds the state of 1 envs, the run has 2"
    elif case == "resume_other_env":
        _edit_config(run, "env.id", "dmc:walker-walk")
        args, expected = ["resume", str(run)], "Observation spaces do not match"
    elif case == "resume_no_checkpoint":
        for p in (run / "checkpoints").iterdir():
            p.unlink()
        args, expected = ["resume", str(run)], "no checkpoint to resume from"
    elif case in ("resume_not_a_run", "eval_not_a_run"):
        (run / "config.yaml").unlink()
        args, expected = [case.split("_")[0], str(run)], "not a run folder (no config.yaml)"
    elif case == "eval_corrupt_zip":
        (run / "bad.zip").write_bytes(b"not a zip")
        args = ["eval", str(run), "--checkpoint", str(run / "bad.zip"), "--episodes", "1"]
        expected = "wasn't a zip-file; pass a checkpoint that `plasticrl train` wrote"
    else:
        lines = (run / "metrics.jsonl").read_text().splitlines()
        assert len(lines) >= 2
        (run / "metrics.jsonl").write_text("\n".join(["{broken", *lines[1:]]) + "\n")
        args = ["plot", str(run)] if case == "plot_corrupt_record" else ["resume", str(run)]
        expected = "metrics.jsonl:1: not a JSON record"
    assert main(args) == 2
    err = one_line_error(capsys)
    assert expected in err and "Error: " not in err, err


def test_a_missing_ray_stops_a_ray_sweep_before_anything_is_written(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets when ray is not installed
    code = main(["sweep", str(ROOT / "configs" / "sweeps" / "smoke.yaml"), "--backend", "ray",
                 "--out-dir", str(tmp_path / "sweeps")])
    err = one_line_error(capsys)
    assert code == 2 and "ray is not installed" in err and 'pip install "plasticrl[lab]"' in err, err
    assert not (tmp_path / "sweeps").exists()


def test_a_missing_wandb_warns_with_the_install_and_training_logs_on(tmp_path, monkeypatch):
    from plasticrl import runlog

    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.warns(RuntimeWarning, match=r"wandb is not installed.*pip install wandb.*logging.wandb.mode=disabled"):
        logger = runlog.RunLogger(tmp_path, {}, {"mode": "offline"})
    logger.log({"train/loss": 1.0}, 10)
    logger.close()
    assert runlog.read_jsonl(tmp_path) == [{"env_step": 10, "train/loss": 1.0, "time/wall_s": pytest.approx(0, abs=60)}]


def test_stock_sac_going_non_finite_stops_with_the_clear_error_before_torch_fails():
    """NaN rewards make SAC's critic loss NaN in the first train() and its weights NaN with it; the next action would
    fail inside torch (a bare ValueError from Normal(loc=nan)). EpisodeLogCallback checks after every train()."""
    import gymnasium as gym
    from stable_baselines3 import SAC

    from plasticrl.sb3 import EpisodeLogCallback

    env = gym.wrappers.TransformReward(gym.make("Pendulum-v1"), lambda r: float("nan"))
    model = SAC("MlpPolicy", env, learning_starts=10, batch_size=8, policy_kwargs={"net_arch": [8]}, device="cpu",
                seed=0)
    with pytest.raises(FloatingPointError, match=r"non-finite .*critic_loss.* at update 1 \(env step 11\)"):
        model.learn(50, callback=EpisodeLogCallback(print_episodes=False))


def test_a_checkpoint_whose_state_file_is_of_another_step_is_not_resumed_from(stopped_run, tmp_path):
    """A kill between writing a new interrupted.state.pt and its interrupted.zip leaves the new state beside the old
    zip: resume skips that pair (its two steps differ) and takes the newest whole one; partial files of a killed
    save are removed."""
    from plasticrl.lab.resume import latest_checkpoint, zip_num_timesteps

    source, copytree = stopped_run
    run = copytree(source, tmp_path / "run")
    folder = run / "checkpoints"
    state = torch.load(folder / "step_100.state.pt", weights_only=False)
    state["num_timesteps"] = 120
    torch.save(state, folder / "interrupted.state.pt")
    (folder / "interrupted.zip").write_bytes((folder / "step_100.zip").read_bytes())  # the older zip, of step 100
    assert zip_num_timesteps(folder / "interrupted.zip") == 100
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    here = socket.gethostname()
    partial = folder / f".step_150.zip.tmp-{here}-{int(dead.stdout)}"  # what a kill mid-save leaves
    live = folder / f".step_150.zip.tmp-{here}-{os.getpid()}"
    elsewhere = folder / f".step_150.zip.tmp-{here}-other-host-{int(dead.stdout)}"  # can't be judged from here
    for tmp in (partial, live, elsewhere):
        tmp.write_bytes(b"half")
    path, found = latest_checkpoint(run)
    assert path == folder / "step_100.zip" and found["num_timesteps"] == 100
    assert not partial.exists() and live.exists() and elsewhere.exists()  # only this host's dead writer's removed


def test_pruning_removes_older_checkpoints_and_the_files_of_a_failed_save(tmp_path):
    from plasticrl.sb3 import PeriodicCheckpointCallback

    names = ["step_50.zip", "step_50.state.pt", "step_50.replay.pkl", "step_100.state.pt", "step_100.replay.pkl",
             "step_150.zip", "step_150.state.pt", "step_200.zip", "step_200.state.pt", "step_250.state.pt",
             "interrupted.zip"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    PeriodicCheckpointCallback(tmp_path, 50, keep=2)._prune()
    # step_100 failed after its state and replay files; step_250 is a save in progress (newer than what is kept)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["step_150.zip", "step_150.state.pt", "step_200.zip", "step_200.state.pt", "step_250.state.pt",
         "interrupted.zip"])


@pytest.mark.parametrize("case", ["train_cuda_without_cuda", "eval_missing_checkpoint", "sweep_zero_concurrent",
                                  "sweep_address_without_ray", "sweep_already_running"])
def test_more_bad_arguments_are_one_line(stopped_run, tmp_path, capsys, case):
    import json
    import socket

    run, _ = stopped_run
    sweep = str(ROOT / "configs" / "sweeps" / "smoke.yaml")
    if case == "train_cuda_without_cuda":
        if torch.cuda.is_available():
            pytest.skip("needs a machine without CUDA")
        args = ["train", SMOKE, "--set", "run.device=cuda", "--set", f"run.out_dir={tmp_path}"]
        expected = "run.device=cuda but torch sees no CUDA device; use run.device=auto or cpu"
    elif case == "eval_missing_checkpoint":
        args, expected = ["eval", str(run), "--checkpoint", str(tmp_path / "nothere.zip")], "nothere.zip' not found"
    elif case == "sweep_zero_concurrent":
        args, expected = ["sweep", sweep, "--max-concurrent", "0", "--out-dir", str(tmp_path)], "give 1 or more"
    elif case == "sweep_address_without_ray":
        args = ["sweep", sweep, "--address", "auto", "--out-dir", str(tmp_path)]
        expected = "--address is the Ray cluster's address: use it with --backend ray"
    else:  # a live process (this one) holds the sweep's lock
        import yaml

        folder = tmp_path / yaml.safe_load(Path(sweep).read_text())["name"]
        folder.mkdir()
        (folder / "sweep.lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
        args, expected = ["sweep", sweep, "--out-dir", str(tmp_path)], "is running this sweep; wait for it or stop it"
    assert main(args) == 2
    err = one_line_error(capsys)
    assert expected in err, err


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_disk_full_at_a_step_checkpoint_keeps_the_previous_one_and_says_how_to_continue(tmp_path, capsys,
                                                                                          monkeypatch):
    """step_100.zip is written to a full disk (its temporary file on /dev/full): one line names it, nothing partial
    is left under its name, the step_50 checkpoint before it is whole, and `plasticrl resume` continues from it."""
    import builtins

    from stable_baselines3 import SAC

    from plasticrl import sb3

    def full_open(path, mode="r", *args, **kwargs):
        if Path(path).name.startswith(".step_100.zip.tmp-"):
            return builtins.open("/dev/full", mode, *args, **kwargs)
        return builtins.open(path, mode, *args, **kwargs)

    monkeypatch.setattr(sb3, "open", full_open, raising=False)
    code = main(["train", str(ROOT / "configs" / "train" / "smoke_sac.yaml"), "--set", f"run.out_dir={tmp_path}",
                 "--set", "run.checkpoint_every=50", "--set", "run.total_steps=150", "--set", "logging.plots=false"])
    err = one_line_error(capsys)
    (run,) = (tmp_path / "smoke_sac").iterdir()
    assert code == 1 and "step_100.zip not written (No space left on device)" in err, err
    assert f"then continue with `plasticrl resume {run}`" in err, err
    assert not (run / "checkpoints" / "step_100.zip").exists()
    SAC.load(run / "checkpoints" / "step_50.zip", device="cpu")
    monkeypatch.undo()
    assert main(["resume", str(run)]) == 0
    assert "resumed from" in capsys.readouterr().out


def test_a_replay_file_of_another_step_than_its_checkpoint_is_not_used(tmp_path, capsys):
    """A kill after a save replaced interrupted.replay.pkl but before its .state.pt and .zip leaves the new buffer
    beside the old checkpoint: resume refills the buffer instead of training on transitions from the future."""
    import shutil

    assert main(["train", str(ROOT / "configs" / "train" / "smoke_sac.yaml"), "--set", f"run.out_dir={tmp_path}",
                 "--set", "run.checkpoint_every=50", "--set", "run.total_steps=130", "--set", "run.save_replay=true",
                 "--set", "run.keep_checkpoints=0", "--set", "logging.plots=false"]) == 0
    (run,) = (tmp_path / "smoke_sac").iterdir()
    ckpt = run / "checkpoints"
    (ckpt / "final.zip").unlink()
    for suffix in (".zip", ".state.pt"):
        shutil.copy(ckpt / f"step_50{suffix}", ckpt / f"interrupted{suffix}")
    shutil.copy(ckpt / "step_100.replay.pkl", ckpt / "interrupted.replay.pkl")  # the buffer of step 100
    for step in (50, 100):
        for suffix in (".zip", ".state.pt", ".replay.pkl"):
            (ckpt / f"step_{step}{suffix}").unlink()
    capsys.readouterr()
    assert main(["resume", str(run)]) == 0
    out = capsys.readouterr().out
    assert "at step 50; its replay buffer file interrupted.replay.pkl is of another step" in out, out
    assert "so it refills" in out
