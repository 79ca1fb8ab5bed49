"""plasticrl.continual.run_sequence: the L2M continual-learning runner, end to end on the smoke config."""

import json

import numpy as np
import pytest
import torch

from plasticrl import continual
from plasticrl import continual_config as cc
from plasticrl.config import ConfigError

SMOKE = "configs/l2m_smoke.yaml"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")  # collected once, shared by the runs of this module


def smoke(data_dir, *overrides):
    return cc.load(SMOKE, [f"data.out_dir={data_dir}", "logging.wandb.mode=disabled", *overrides])


@pytest.fixture(scope="module")
def l2m_run(data_dir, tmp_path_factory):
    return continual.run_sequence(smoke(data_dir), tmp_path_factory.mktemp("runs"))


def test_run_folder_matrix_and_summary(l2m_run):
    for name in ("config.yaml", "metrics.jsonl", "success_matrix.json", "summary.json", "plots/success_matrix.png",
                 "checkpoints/pretrained.pt", "checkpoints/final.pt", "checkpoints/pool.pt"):
        assert (l2m_run / name).is_file(), name
    matrix = json.loads((l2m_run / "success_matrix.json").read_text())
    perf = np.array(matrix["perf"])
    assert perf.shape == (2, 2) and np.all((perf >= 0) & (perf <= 1))
    assert matrix["tasks"] == ["metaworld:push-v3", "metaworld:window-close-v3"]
    assert [len(c) for c in matrix["curves"]] == [2, 2]  # eval_every 5 of 10 steps
    summary = json.loads((l2m_run / "summary.json").read_text())
    assert summary["average_performance"] == pytest.approx(continual.average_performance(perf))
    assert summary["forgetting"] == pytest.approx(continual.forgetting(perf))
    assert summary["forward_transfer"] is None  # no reference curves
    records = [json.loads(line) for line in (l2m_run / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/mean_success" in r for r in records) and any("train/loss" in r for r in records)


def test_l2m_keeps_backbone_frozen_and_trains_pool(l2m_run):
    pre = torch.load(l2m_run / "checkpoints" / "pretrained.pt", weights_only=False)["model"]
    final = torch.load(l2m_run / "checkpoints" / "final.pt")
    assert pre.keys() == final.keys()
    assert all(torch.equal(pre[k], final[k]) for k in pre)
    pool = torch.load(l2m_run / "checkpoints" / "pool.pt")
    lora_b = [v for k, v in pool.items() if k.endswith(".B")]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # B starts at zero
    assert pool["counts"].sum() > 0


def test_finetune_changes_backbone(data_dir, tmp_path):
    run = continual.run_sequence(smoke(data_dir, "sequence.method=finetune", "sequence.eval_every=0"), tmp_path)
    pre = torch.load(run / "checkpoints" / "pretrained.pt", weights_only=False)["model"]
    final = torch.load(run / "checkpoints" / "final.pt")
    assert not (run / "checkpoints" / "pool.pt").exists()
    assert any(not torch.equal(pre[k], final[k]) for k in pre)
    assert np.array(json.loads((run / "success_matrix.json").read_text())["perf"]).shape == (2, 2)


def test_bad_method_names_allowed_values():
    with pytest.raises(ConfigError) as err:
        cc.load(SMOKE, ["sequence.method=ewc"])
    for method in ("l2m", "l2m_oracle", "lora", "finetune"):
        assert method in str(err.value)
    assert "sequence.method" in str(err.value)


def test_dmc_task_needs_collected_data(tmp_path):
    cfg = cc.load(SMOKE, ["sequence.tasks=[dmc:walker-walk]"])
    with pytest.raises(ConfigError, match="plasticrl collect"):
        continual.run_sequence(cfg, tmp_path)
    assert not any(tmp_path.iterdir())  # nothing written


def test_unknown_key_and_task():
    with pytest.raises(ConfigError, match="Did you mean 'sequence.steps_per_task'"):
        cc.load(SMOKE, ["sequence.steps_per_tsk=3"])
    with pytest.raises(ConfigError, match="sequence.tasks"):
        continual.check_continual(cc.load(SMOKE, ["sequence.tasks=[metaworld:psh-v3]"]))
