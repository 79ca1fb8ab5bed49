"""`plasticrl collect`: Minari datasets from Meta-World's scripted policies and from an SB3 checkpoint."""

import hashlib
import re

import minari
import numpy as np
import pytest

from plasticrl import envs
from plasticrl.lab import collect
from plasticrl.lab.cli import main

PUSH = "metaworld:push-v3"


def load(out_dir, dataset_id):
    with collect.datasets_path(out_dir):
        return minari.load_dataset(dataset_id)


def test_scripted_dataset_roundtrip(tmp_path, capsys):
    dataset_id = collect.collect_scripted(PUSH, episodes=2, noise_std=0.1, seed=4, out_dir=tmp_path)
    assert dataset_id == "plasticrl/push-v3/scripted-noise0p1-ep2-seed4-random_init_all-v0"
    printed = [float(r) for r in re.findall(r"episode \d+: steps \d+ +return (-?[\d.]+)", capsys.readouterr().out)]
    dataset = load(tmp_path, dataset_id)
    assert dataset.total_episodes == 2 and len(printed) == 2
    for episode, ret in zip(dataset.iterate_episodes(), printed, strict=True):
        steps = len(episode.actions)
        assert 0 < steps <= 200
        assert episode.observations.shape == (steps + 1, 39)
        assert episode.actions.shape == (steps, 4)
        assert np.all(np.abs(episode.actions) <= 1.0)
        assert episode.rewards.sum() == pytest.approx(ret, abs=1e-3)
        assert episode.infos["success"].shape == (steps + 1,)
    # the metadata records how the data was made; episode i reset with seed + i, so from its own start
    assert collect.read_provenance(tmp_path, dataset_id) == {
        "env_id": PUSH, "policy": "metaworld-scripted", "noise_std": 0.1, "episodes": 2, "reset_seeds": [4, 5],
        "noise_seed": 4, "randomization": "random_init_all", "max_episode_steps": 200}
    assert [int(m["seed"]) for m in dataset.storage.get_episode_metadata([0, 1])] == [4, 5]
    firsts = [ep.observations[0] for ep in dataset.iterate_episodes()]
    env = envs.make(PUSH)
    for seed, first in zip((4, 5), firsts):
        np.testing.assert_allclose(env.reset(seed=seed)[0], first, atol=1e-6)
    assert not np.allclose(firsts[0][36:39], firsts[1][36:39])  # new goal per episode


def test_noise_free_scripted_policy_succeeds_on_push(tmp_path):
    dataset_id = collect.collect_scripted(PUSH, episodes=1, noise_std=0.0, seed=0, out_dir=tmp_path)
    (episode,) = load(tmp_path, dataset_id).iterate_episodes()
    assert episode.infos["success"].max() == 1.0


def test_same_seed_same_actions(tmp_path):
    def actions(seed, folder):
        dataset_id = collect.collect_scripted(PUSH, episodes=1, noise_std=0.5, seed=seed, out_dir=tmp_path / folder)
        return next(load(tmp_path / folder, dataset_id).iterate_episodes()).actions

    first = actions(3, "a")
    np.testing.assert_array_equal(actions(3, "b"), first)
    assert not np.array_equal(actions(4, "c"), first)  # the noise is seeded, not ignored


@pytest.mark.parametrize(("tasks", "message"), [("metaworld:psh-v3", "Did you mean: metaworld:push-v3"),
                                                ("cw11", "unknown sequence 'cw11'; did you mean 'cw10'"),
                                                ("dmc:walker-walk", "scripted policies exist only for metaworld")])
def test_bad_task_errors_before_writing(tmp_path, capsys, tasks, message):
    out = tmp_path / "data"
    assert main(["collect", "--tasks", f"{PUSH},{tasks}", "--episodes", "1", "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_agent_checkpoint_dataset(tmp_path):
    from stable_baselines3 import SAC

    model = SAC("MlpPolicy", envs.make(PUSH), buffer_size=100, seed=0)
    model.save(tmp_path / "sac.zip")
    out = tmp_path / "data"
    assert main(["collect", "--tasks", PUSH, "--episodes", "1", "--seed", "2", "--out", str(out), "--checkpoint",
                 str(tmp_path / "sac.zip"), "--agent", "sac", "--device", "cpu"]) == 0
    dataset_id = "plasticrl/push-v3/sac-sac-deterministic-v0"
    (episode,) = load(out, dataset_id).iterate_episodes()
    expected, _ = model.predict(episode.observations[:-1], deterministic=True)
    np.testing.assert_allclose(episode.actions, expected, atol=1e-6)
    recorded = collect.read_provenance(out, dataset_id)
    assert recorded["checkpoint_sha256"] == hashlib.sha256((tmp_path / "sac.zip").read_bytes()).hexdigest()
    assert {k: recorded[k] for k in ("env_id", "deterministic", "episodes", "reset_seeds", "randomization")} == {
        "env_id": PUSH, "deterministic": True, "episodes": 1, "reset_seeds": [2, 2], "randomization": "random_init_all"}
