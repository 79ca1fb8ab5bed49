"""The faults a user hits: each is one clear error naming the problem and the fix, before anything is written."""

import ctypes.util
import os
import signal
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
def test_a_disk_full_from_the_start_is_one_line_and_leaves_no_run_folder(tmp_path, capsys, monkeypatch):
    from plasticrl.lab import train

    _open_on_a_full_disk(monkeypatch, train, "config.yaml")
    assert main(["train", SMOKE, "--set", f"run.out_dir={tmp_path}/runs"]) == 1
    err = one_line_error(capsys)
    assert "config.yaml not written (No space left on device)" in err and "run.out_dir" in err, err
    assert not list((tmp_path / "runs").rglob("config.yaml")), "a half-made run was left"


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
