"""Training that survives preemption: atomic checkpoints, SIGTERM, SIGKILL and `plasticrl resume` (real runs of
configs/train/smoke_sac.yaml in subprocesses)."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SMOKE_SAC = str(ROOT / "configs" / "train" / "smoke_sac.yaml")
SMOKE_DRQ = str(ROOT / "configs" / "train" / "smoke.yaml")
ENV = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}


def start_train(out_dir, *sets, config=SMOKE_SAC):
    args = [sys.executable, "-m", "plasticrl", "train", config, "--set", f"run.out_dir={out_dir}"]
    for s in sets:
        args += ["--set", s]
    return subprocess.Popen(args, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def cli(*args):
    return subprocess.run([sys.executable, "-m", "plasticrl", *args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=600)


def run_folder(out_dir, name="smoke_sac"):
    (folder,) = (Path(out_dir) / name).iterdir()
    return folder


def wait_for(path_glob, out_dir, proc, timeout=300):
    start = time.time()
    while time.time() - start < timeout:
        found = list(Path(out_dir).glob(path_glob))
        if found:
            return found[0]
        assert proc.poll() is None, f"the run ended before {path_glob}: {proc.communicate()}"
        time.sleep(0.05)
    raise AssertionError(f"no {path_glob} after {timeout} s")


def assert_complete_log(run_dir, total_steps):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    keys = [(r["env_step"], tuple(sorted(k for k in r if k != "time/wall_s"))) for r in records]
    assert len(keys) == len(set(keys)), "a record was logged twice for one env step"
    steps = [r["env_step"] for r in records]
    assert steps == sorted(steps), "env steps go back: records of the lost steps were kept"
    assert max(steps) == total_steps and any("eval/return_mean" in r and r["env_step"] == total_steps
                                              for r in records)
    walls = [r["time/wall_s"] for r in records]
    assert walls == sorted(walls), "wall time restarted at the resume"


def run_records(run_dir, after):
    """metrics.jsonl records of env steps past ``after``, without what the clock sets (wall time, frames/s)."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("time/wall_s", "train/fps")} for r in records
            if r["env_step"] > after]


def test_sigterm_saves_interrupted_and_resume_finishes(tmp_path):
    proc = start_train(tmp_path, "run.total_steps=400", "run.checkpoint_every=50", "run.keep_checkpoints=2")
    wait_for("smoke_sac/*/checkpoints/step_100.zip", tmp_path, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    assert "interrupted by SIGTERM" in err and "plasticrl resume" in err
    run_dir = run_folder(tmp_path)
    ckpt = run_dir / "checkpoints"
    assert (ckpt / "interrupted.zip").is_file() and (ckpt / "interrupted.state.pt").is_file()
    assert not (ckpt / "final.zip").exists()
    assert not list(ckpt.glob(".*")), "a temporary file was left behind"
    stopped_at = torch.load(ckpt / "interrupted.state.pt", weights_only=False)["num_timesteps"]
    assert 100 <= stopped_at < 400
    unfinished = cli("eval", str(run_dir), "--episodes", "1")
    assert unfinished.returncode == 2 and str(ckpt / "interrupted.zip") in unfinished.stderr

    done = cli("resume", str(run_dir))
    assert done.returncode == 0, done.stderr
    assert f"resumed from {ckpt / 'interrupted.zip'} at step {stopped_at}" in done.stdout
    assert "refills" in done.stdout  # run.save_replay is off: a new warm-up
    assert (ckpt / "final.zip").is_file()
    assert sorted(p.name for p in ckpt.glob("step_*.zip")) == ["step_350.zip", "step_400.zip"]  # keep_checkpoints
    assert_complete_log(run_dir, 400)
    again = cli("resume", str(run_dir))
    assert again.returncode == 2 and "has finished" in again.stderr


def test_sigkill_loses_only_the_steps_since_the_last_step_checkpoint(tmp_path):
    proc = start_train(tmp_path, "run.total_steps=300", "run.checkpoint_every=50", "run.keep_checkpoints=0")
    wait_for("smoke_sac/*/checkpoints/step_150.zip", tmp_path, proc)
    proc.kill()
    proc.communicate(timeout=60)
    run_dir = run_folder(tmp_path)
    saved = sorted(int(p.stem.split("_")[1]) for p in (run_dir / "checkpoints").glob("step_*.zip"))
    assert not (run_dir / "checkpoints" / "final.zip").exists() and saved[-1] < 300
    done = cli("resume", str(run_dir))
    assert done.returncode == 0, done.stderr
    assert f"step_{saved[-1]}.zip at step {saved[-1]}" in done.stdout
    assert_complete_log(run_dir, 300)


def test_resume_with_saved_replay_updates_bit_for_bit(tmp_path):
    """Stock SAC (configs/train/smoke_sac.yaml: 125 agent steps an episode): an uninterrupted run of 260 steps
    (checkpoint at step 200, inside the second episode; replay ratio 2) against the same run resumed from its
    step_200 checkpoint. The env continues its episode from its saved state, so the parameters, optimizer states and
    entropy coefficient after the 120 updates of steps 201-260 are the same, and so are the records logged after
    step 200 (the episode that ends at step 250)."""
    sets = ["run.total_steps=260", "run.checkpoint_every=200", "run.save_replay=true", "replay_ratio.ratio=2"]
    proc = start_train(tmp_path / "ref", *sets)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    reference = run_folder(tmp_path / "ref")
    resumed = tmp_path / "resumed"
    shutil.copytree(reference, resumed)
    (resumed / "checkpoints" / "final.zip").unlink()  # as if killed right after step_200.zip
    done = cli("resume", str(resumed))
    assert done.returncode == 0, done.stderr
    assert "with its replay buffer (200 transitions); the envs continue their episodes" in done.stdout

    from stable_baselines3 import SAC

    a = SAC.load(reference / "checkpoints" / "final.zip", device="cpu")
    b = SAC.load(resumed / "checkpoints" / "final.zip", device="cpu")
    before = SAC.load(reference / "checkpoints" / "step_200.zip", device="cpu")
    assert a._n_updates == b._n_updates == before._n_updates + 120
    pa, pb, p0 = a.policy.state_dict(), b.policy.state_dict(), before.policy.state_dict()
    assert not all(torch.equal(pa[k], p0[k]) for k in pa), "no update after step 200: nothing compared"
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert torch.equal(a.log_ent_coef, b.log_ent_coef)
    for oa, ob in [(a.actor.optimizer, b.actor.optimizer), (a.critic.optimizer, b.critic.optimizer),
                   (a.ent_coef_optimizer, b.ent_coef_optimizer)]:
        sa, sb = oa.state_dict()["state"], ob.state_dict()["state"]
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[i][k], sb[i][k]) for i in sa for k in sa[i])
    after = run_records(reference, 200)
    assert any("train/episode_return" in r for r in after), "no episode ended after step 200: nothing compared"
    assert run_records(resumed, 200) == after


@pytest.mark.parametrize("async_env_step,n_envs", [(False, 1), (True, 1), (True, 2)])
def test_drq_resume_continues_episodes_and_updates_bit_for_bit(tmp_path, async_env_step, n_envs):
    """Pixel DrQ (configs/train/smoke.yaml: cartpole-swingup, 125 agent steps an episode) checkpointed at step 120,
    inside its episodes, then trained past their ends with 2 updates per transition: the run resumed from step_120.zip
    ends with the same parameters of encoder, actor and critic and the same optimizer states as the uninterrupted
    run, and logs the same records (episode returns, losses) after step 120. So the saved frames, episode pointers
    and host counts of the FrameReplayBuffer round-trip, the envs continue their episodes from their saved state
    (MuJoCo's, the task's RandomState, the frame stack, the Monitor's rewards), and the episodes that follow start
    from the same RandomStates. With the async env step, the checkpoint comes after the next actions were drawn
    and their env step started: the resumed run takes those actions (``DrQ.queued_actions``) and that step's saved
    results rather than drawing and stepping anew."""
    total = 130 * n_envs  # transitions: past the first episode ends, at 125 agent steps of each env
    sets = [f"run.total_steps={total}", "run.checkpoint_every=120", "run.save_replay=true", "replay_ratio.ratio=2",
            "agent.learning_starts=40", "monitor.every=60", f"agent.async_env_step={str(async_env_step).lower()}",
            f"env.n_envs={n_envs}"]
    proc = start_train(tmp_path / "ref", *sets, config=SMOKE_DRQ)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    reference = run_folder(tmp_path / "ref", "smoke")
    resumed = tmp_path / "resumed"
    shutil.copytree(reference, resumed)
    for f in (resumed / "checkpoints").iterdir():
        if not f.name.startswith("step_120."):
            f.unlink()  # as if killed right after step_120.zip
    done = cli("resume", str(resumed))
    assert done.returncode == 0, done.stderr
    assert "with its replay buffer (120 transitions); the envs continue their episodes" in done.stdout

    from plasticrl.agents import DrQ
    from plasticrl.sb3 import optimizers_of

    a = DrQ.load(reference / "checkpoints" / "final.zip", device="cpu", buffer_size=100)
    b = DrQ.load(resumed / "checkpoints" / "final.zip", device="cpu", buffer_size=100)
    before = DrQ.load(reference / "checkpoints" / "step_120.zip", device="cpu", buffer_size=100)
    assert a._n_updates == b._n_updates == before._n_updates + 2 * (total - 120)
    pa, pb, p0 = a.policy.state_dict(), b.policy.state_dict(), before.policy.state_dict()
    assert any(k.startswith("encoder.") for k in pa)
    assert not all(torch.equal(pa[k], p0[k]) for k in pa), "no update after step 120: nothing compared"
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert torch.equal(a.log_ent_coef, b.log_ent_coef)
    opts_a, opts_b = optimizers_of(a), optimizers_of(b)
    assert len(opts_a) == len(opts_b) >= 3
    for oa, ob in zip(opts_a, opts_b):
        sa, sb = oa.state_dict()["state"], ob.state_dict()["state"]
        assert sa and sa.keys() == sb.keys()
        assert all(torch.equal(sa[i][k], sb[i][k]) for i in sa for k in sa[i])
    after = run_records(reference, 120)
    assert any("train/episode_return" in r for r in after), "no episode ended after step 120: nothing compared"
    assert run_records(resumed, 120) == after


def wandb_history(run_file):
    """The ``history`` records (``run.log`` calls) of an offline run's ``.wandb`` file, each as {key: value}: the file
    is W&B's LevelDB-style log (a 7-byte header, then 32 KiB blocks of records of a 7-byte header: CRC, length, type
    full/first/middle/last) of ``wandb_internal_pb2.Record`` protobufs."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, chunks, history = run_file.read_bytes(), 32768, 7, [], []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a record header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if kind == 0 and length == 0:
            break
        chunks.append(data[pos + 7:pos + 7 + length])
        pos += 7 + length
        if kind in (1, 4):  # full or last
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(chunks))
            chunks = []
            if record.HasField("history"):
                history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                for item in record.history.item})
    return history


def test_wandb_offline_resume_continues_the_same_wandb_run(tmp_path):
    proc = start_train(tmp_path, "run.total_steps=300", "run.checkpoint_every=50", "logging.wandb.mode=offline")
    wait_for("smoke_sac/*/checkpoints/step_100.zip", tmp_path, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    run_dir = run_folder(tmp_path)
    state = torch.load(run_dir / "checkpoints" / "interrupted.state.pt", weights_only=False)
    run_id, stopped_at = state["wandb_id"], state["num_timesteps"]
    assert run_id
    (first,) = (run_dir / "wandb").glob("offline-run-*")
    assert first.name.endswith(f"-{run_id}")

    done = cli("resume", str(run_dir))
    assert done.returncode == 0, done.stderr
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(r.name.endswith(f"-{run_id}") for r in runs), runs
    (second,) = [r for r in runs if r != first]
    before = wandb_history(first / f"run-{run_id}.wandb")
    after = wandb_history(second / f"run-{run_id}.wandb")
    assert before and max(r["env_step"] for r in before) >= 100
    steps = [r["env_step"] for r in after]
    assert min(steps) > stopped_at and max(steps) == 300, "the resumed records did not reach W&B"
    assert any("eval/return_mean" in r and r["env_step"] == 300 for r in after)
    assert_complete_log(run_dir, 300)
    logged = {r["env_step"] for r in before + after if r["env_step"] > stopped_at}
    jsonl = {json.loads(line)["env_step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()}
    assert logged == {s for s in jsonl if s > stopped_at}


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import gymnasium as gym
    from stable_baselines3 import SAC
    from stable_baselines3.common import base_class

    from plasticrl.sb3 import save_model

    model = SAC("MlpPolicy", gym.make("Pendulum-v1"), buffer_size=100, policy_kwargs={"net_arch": [8]}, device="cpu")
    path = tmp_path / "step_10.zip"
    save_model(model, path)
    whole = path.read_bytes()

    def disk_full(save_path, *args, **kwargs):  # SB3's zip writer, stopped half-way by a full disk
        save_path.write(whole[: len(whole) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(base_class, "save_to_zip_file", disk_full)
    with torch.no_grad():
        next(model.policy.parameters()).add_(1.0)
    with pytest.raises(OSError) as info:
        save_model(model, path)
    assert str(path) in str(info.value) and "No space left" in str(info.value) and "free disk space" in str(info.value)
    assert info.value.errno == errno.ENOSPC
    assert path.read_bytes() == whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_10.zip"], "a partial file was left"
    monkeypatch.undo()
    SAC.load(path, device="cpu")  # still a whole checkpoint
    save_model(model, tmp_path / "new.zip")
    assert not (tmp_path / "new.zip").read_bytes() == whole


def test_eval_refuses_zero_episodes_and_out_dir_that_is_a_file(tmp_path, capsys):
    from plasticrl.lab.cli import main

    (tmp_path / "config.yaml").write_text((ROOT / "configs" / "train" / "smoke_sac.yaml").read_text())
    assert main(["eval", str(tmp_path), "--episodes", "0"]) == 2
    assert "--episodes: 0" in capsys.readouterr().err
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert main(["train", SMOKE_SAC, "--set", f"run.out_dir={blocker}"]) == 2
    err = capsys.readouterr().err
    assert "run.out_dir" in err and str(blocker) in err and "Traceback" not in err


def test_read_jsonl_skips_a_truncated_last_line(tmp_path):
    from plasticrl.runlog import read_jsonl

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"env_step": 1, "a": 1.0}\n{"env_step": 2, "a": 2.0}\n{"env_step": 3, "a"')
    with pytest.warns(RuntimeWarning, match=f"{path}:3: truncated"):
        assert [r["env_step"] for r in read_jsonl(path)] == [1, 2]
    path.write_text('{"env_step": 1\n{"env_step": 2}\n')
    with pytest.raises(ValueError, match=f"{path}:1"):
        read_jsonl(path)


def test_envs_that_cannot_save_their_state_start_new_episodes_on_resume(tmp_path):
    """A Meta-World task (no get_state): resumed from a checkpoint inside an episode (200-step horizon), the env
    starts a new episode, the run says so and finishes with a complete log."""
    sets = ["env.id=metaworld:reach-v3", "env.action_repeat=1", "run.total_steps=150", "run.checkpoint_every=120",
            "run.save_replay=true", "eval.episodes=1"]
    proc = start_train(tmp_path / "ref", *sets)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    run = run_folder(tmp_path / "ref")
    (run / "checkpoints" / "final.zip").unlink()
    done = cli("resume", str(run))
    assert done.returncode == 0, done.stderr
    assert ("with its replay buffer (120 transitions); the envs start new episodes (they cannot save their state)"
            in done.stdout)
    assert_complete_log(run, 150)


@pytest.mark.parametrize("second", [False, True])
def test_ctrl_c_saves_interrupted_without_a_traceback_and_a_second_stops_at_once(tmp_path, second):
    """SIGINT (Ctrl-C) as SIGTERM: interrupted.zip saved, one line, exit 130, no traceback; a second SIGINT sent
    before the first is handled stops at once, saving nothing, with one line as well."""
    proc = start_train(tmp_path, "run.total_steps=100000", "run.checkpoint_every=50")
    wait_for("smoke_sac/*/checkpoints/step_50.zip", tmp_path, proc)
    proc.send_signal(signal.SIGINT)
    if second:
        proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, err
    assert "Traceback" not in err and "interrupted by SIGINT" in err and "plasticrl resume" in err, err
    saved = (run_folder(tmp_path) / "checkpoints" / "interrupted.zip").is_file()
    if second:
        assert "stopped at once on the second signal, nothing saved" in err or saved, err
    else:
        assert saved
