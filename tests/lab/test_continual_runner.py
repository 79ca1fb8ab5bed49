"""plasticrl.lab.continual.run_sequence: the L2M continual-learning runner, end to end on the smoke config."""

import contextlib
import json
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import minari
import numpy as np
import pytest
import torch

from plasticrl import continual_metrics, envs
from plasticrl.agents.l2m import DecisionTransformer, L2MAgent
from plasticrl.lab import collect, continual
from plasticrl.lab.config import continual as cc
from plasticrl.lab.config.train import ConfigError
from plasticrl.lab.plots import panel_keys
from plasticrl.modulation import ModulationPool
from plasticrl.runlog import read_jsonl

SMOKE = "configs/continual/l2m_smoke.yaml"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models on a shared 2-core machine: one torch thread is several times faster than two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
                 "checkpoints/pretrained.pt", "checkpoints/final.pt"):
        assert (l2m_run / name).is_file(), name
    matrix = json.loads((l2m_run / "success_matrix.json").read_text())
    perf = np.array(matrix["perf"])
    assert perf.shape == (2, 2) and np.all((perf >= 0) & (perf <= 1))
    assert matrix["tasks"] == ["metaworld:push-v3", "metaworld:window-close-v3"]
    assert [len(c) for c in matrix["curves"]] == [2, 2]  # eval_every 5 of 10 steps
    summary = json.loads((l2m_run / "summary.json").read_text())
    assert summary["average_performance"] == pytest.approx(continual_metrics.average_performance(perf))
    assert summary["forgetting"] == pytest.approx(continual_metrics.forgetting(perf))
    assert summary["forward_transfer"] is None  # no reference curves
    records = [json.loads(line) for line in (l2m_run / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/mean_success" in r for r in records) and any("train/loss" in r for r in records)
    # throughput: pre-training rate, per-task wall time, totals in the summary
    assert any(r.get("pretrain/steps_per_s", 0) > 0 for r in records)
    walls = [r for r in records if "task/wall_s" in r]
    assert [r["task/index"] for r in walls] == [0, 1]
    assert all(r["task/wall_s"] >= r["task/eval_wall_s"] > 0 for r in walls)
    assert summary["pretrain_wall_s"] > 0 and summary["sequence_wall_s"] >= sum(r["task/wall_s"] for r in walls)
    # the curves are task j's logged success at its own eval points
    for j, task in enumerate(matrix["tasks"]):
        logged = [r[f"eval/{j}-{task}/success"] for r in records if r.get("train/task", r.get("eval/stage")) == j
                  and f"eval/{j}-{task}/success" in r]
        assert logged == matrix["curves"][j]


def test_pretraining_follows_l2ms_warmup_and_cosine(l2m_run):
    """The smoke config pre-trains 10 steps at lr 1e-3 with 3 warmup steps and a cosine over the 10 steps to 1e-6;
    every step is logged (print_every 1), with the learning rate the optimizer stepped with, against a hand
    computation; the saved agent's optimizer holds the last step's rate and the schedule's settings."""
    cfg = cc.load(l2m_run / "config.yaml")
    pre = cfg.pretrain
    assert (pre.steps, pre.learning_rate, pre.warmup_steps, pre.lr_schedule, pre.min_learning_rate) == \
        (10, 1e-3, 3, "cosine", 1e-6)
    hand = [1e-3 * (i + 1) / 3 if i < 3 else 1e-6 + (1e-3 - 1e-6) * (1 + np.cos(np.pi * (i - 3) / 10)) / 2
            for i in range(10)]
    records = [r for r in read_jsonl(l2m_run / "metrics.jsonl") if "pretrain/lr" in r]
    assert [r["pretrain/lr"] for r in records] == pytest.approx(hand, rel=1e-9)
    saved = torch.load(l2m_run / "checkpoints" / "pretrained.pt", weights_only=False)
    assert [g["lr"] for g in saved["optimizer"]["param_groups"]] == pytest.approx([hand[9]] * 2, rel=1e-9)
    assert [g["weight_decay"] for g in saved["optimizer"]["param_groups"]] == [0.01, 0.0]
    assert {k: saved["hparams"][k] for k in ("lr_schedule", "warmup_steps", "schedule_steps")} == \
        {"lr_schedule": "cosine", "warmup_steps": 3, "schedule_steps": 10}


def test_pretrain_schedule_defaults_are_l2ms():
    pre = cc.validate({}).pretrain
    assert (pre.warmup_steps, pre.lr_schedule, pre.min_learning_rate) == (4000, "cosine", 1e-6)
    with pytest.raises(ConfigError, match="pretrain.lr_schedule"):
        cc.validate({"pretrain": {"lr_schedule": "linear"}})


def test_l2m_keeps_backbone_frozen_and_trains_pool(l2m_run):
    pre = torch.load(l2m_run / "checkpoints" / "pretrained.pt", weights_only=False)["model"]
    final = torch.load(l2m_run / "checkpoints" / "final.pt")["model"]
    assert pre.keys() == final.keys()
    assert all(torch.equal(pre[k], final[k]) for k in pre)
    pool = torch.load(l2m_run / "checkpoints" / "final.pt")["pool"]["state"]
    lora_b = [v for k, v in pool.items() if k.endswith(".B")]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # B starts at zero
    assert pool["counts"].sum() > 0


def test_final_checkpoint_is_an_l2m_agent_with_its_pool(l2m_run):
    """final.pt is an L2MAgent.save file: L2MAgent.load gives the backbone with the trained pool attached."""
    saved = torch.load(l2m_run / "checkpoints" / "final.pt", weights_only=False)
    agent = L2MAgent.load(l2m_run / "checkpoints" / "final.pt", device="cpu")
    assert agent.pool is not None and agent.pool.pool_size == saved["pool"]["sizes"]["pool_size"]
    assert all(torch.equal(v, saved["model"][k]) for k, v in agent.backbone_state_dict().items())
    assert all(torch.equal(v, saved["pool"]["state"][k]) for k, v in agent.pool.state_dict().items())
    assert not any(p.requires_grad for p in agent.backbone_state_dict().values())
    agent.reset(100.0, 4)
    action, _ = agent.predict(np.zeros(39, np.float32))
    assert action.shape == (4,)


def test_plasticity_probes_match_a_hand_computation(l2m_run, data_dir):
    """At every evaluation the monitor probes the DT (with the pool's selection) and the pool on the task's fixed
    probe batch. The last probe saw the final weights: rebuilt here from final.pt (backbone and pool) and the same
    probe batch, its GELU FAU / dormant ratio, weight norms and pool usage are recomputed by hand."""
    cfg = smoke(data_dir)
    records = [json.loads(line) for line in (l2m_run / "metrics.jsonl").read_text().splitlines()]
    probes = [r for r in records if "eval/stage" in r]
    assert all("plasticity/dt/srank" in r and "plasticity/pool/weight_norm" in r for r in probes)
    last = probes[-1]
    final = torch.load(l2m_run / "checkpoints" / "final.pt")["model"]
    pool_state = torch.load(l2m_run / "checkpoints" / "final.pt")["pool"]["state"]
    agent = L2MAgent(continual.dt_config(cfg), device="cpu", seed=cfg.run.seed)
    agent.model.load_state_dict(final)
    p = cfg.pool
    pool = ModulationPool(pool_size=p.pool_size, key_dim=cfg.model.d_model, rank=p.rank, kind=p.kind, top_k=p.top_k,
                          placement=p.placement)
    pool.attach(agent.model)
    pool.load_state_dict(pool_state)
    task = len(cfg.sequence.tasks) - 1
    ids = continual.ensure_datasets(cfg, [cfg.sequence.tasks[task]])
    data = agent.prepare_episodes(continual.load_episodes(data_dir, ids[cfg.sequence.tasks[task]]), 200.0)
    g = torch.Generator().manual_seed(cfg.run.seed * 1_000 + task)
    states, actions, rtg, timesteps, mask = agent.sample_batch(data, cfg.sequence.probe_batch_size, generator=g)
    seen = []
    handle = agent.model.blocks[0].ff.act.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    agent.model.eval()
    with torch.no_grad(), pool.selected(pool.select(agent.model.query_embedding(states, timesteps), evaluate=True)):
        agent.model(states, actions, rtg, timesteps, mask)
    handle.remove()
    h = seen[0].numpy()  # (tokens, units)
    score = np.abs(h).mean(axis=0) / np.abs(h).mean()
    assert last["plasticity/dt/blocks.0.ff.act/fau"] == pytest.approx((h > 0).mean(), rel=1e-5)
    assert last["plasticity/dt/blocks.0.ff.act/dormant_ratio"] == pytest.approx((score <= 0.025).mean(), abs=1e-6)
    modulators = [v for k, v in pool_state.items() if k.startswith("modulators.")]
    squares = sum(float((v.double() ** 2).sum()) for v in [*final.values(), *modulators])
    assert last["plasticity/dt/weight_norm"] == pytest.approx(squares ** 0.5, rel=1e-5)
    pool_squares = sum(float((v.double() ** 2).sum()) for v in [pool_state["keys"], *modulators])
    assert last["plasticity/pool/weight_norm"] == pytest.approx(pool_squares ** 0.5, rel=1e-5)
    assert last["pool/entries_used"] == int((pool_state["counts"] > 0).sum()) >= 1


def test_plasticrl_plot_draws_a_continual_runs_dashboard_and_success_matrix(l2m_run, tmp_path):


    titles = [title for title, _ in panel_keys([read_jsonl(l2m_run)])]
    assert titles[0] == "score (continual runs)"
    panels = dict(panel_keys([read_jsonl(l2m_run)]))
    assert {"dormant ratio", "fau", "srank"} <= set(titles) and "plasticity/dt/fau" in panels["fau"]
    matrix = l2m_run / "plots" / "success_matrix.png"
    matrix.unlink()
    out = tmp_path / "dash.png"
    proc = subprocess.run([sys.executable, "-m", "plasticrl", "plot", str(l2m_run), "--out", str(out)],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2], timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == [str(out), str(matrix)]
    for png in (out, matrix):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_finetune_changes_backbone(data_dir, tmp_path, monkeypatch):
    configured = []  # the run sets the lab's torch flags (TF32 on CUDA) for its device, as `plasticrl train`
    monkeypatch.setattr("plasticrl.lab.continual.run.configure_torch", configured.append)
    run = continual.run_sequence(smoke(data_dir, "sequence.method=finetune", "sequence.eval_every=0",
                                       "sequence.probe_batch_size=0"), tmp_path)
    assert "plasticity/" not in (run / "metrics.jsonl").read_text()  # probes off
    pre = torch.load(run / "checkpoints" / "pretrained.pt", weights_only=False)["model"]
    final = torch.load(run / "checkpoints" / "final.pt")["model"]
    assert torch.load(run / "checkpoints" / "final.pt")["pool"] is None
    assert any(not torch.equal(pre[k], final[k]) for k in pre)
    assert np.array(json.loads((run / "success_matrix.json").read_text())["perf"]).shape == (2, 2)
    assert configured == ["cpu"]


def test_eval_scope_current_evaluates_only_the_task_in_training_between_task_ends(data_dir, l2m_run, tmp_path):
    """sequence.eval_scope=current: the evaluations every eval_every steps cover the task in training only, the
    task ends still cover every task; the curves and the success matrix equal those of eval_scope=all (same seed,
    deterministic decoding)."""
    run = continual.run_sequence(smoke(data_dir, "sequence.eval_scope=current"), tmp_path)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [sorted(k for k in r if k.endswith("/success")) for r in records if "eval/stage" in r]
    tasks = json.loads((run / "success_matrix.json").read_text())["tasks"]
    all_keys = sorted(f"eval/{j}-{t}/success" for j, t in enumerate(tasks))
    assert evals == [[f"eval/0-{tasks[0]}/success"], all_keys, [f"eval/1-{tasks[1]}/success"], all_keys]
    assert [r["eval/n_tasks"] for r in records if "eval/stage" in r] == [1, 2, 1, 2]
    # sequence means only where the whole sequence was evaluated
    assert [("eval/mean_score" in r) for r in records if "eval/stage" in r] == [False, True, False, True]
    ours, full = (json.loads((r / "success_matrix.json").read_text()) for r in (run, l2m_run))
    assert ours["curves"] == full["curves"] and ours["perf"] == full["perf"]
    with pytest.raises(ConfigError, match="sequence.eval_scope"):
        cc.load(SMOKE, ["sequence.eval_scope=some"])


def test_reference_curves_made_with_other_scores_are_refused(data_dir, tmp_path):
    """A reference file records how each task was scored; one made for success rates only (older files) does not
    serve a sequence with a DMC task, scored by data-normalised return."""
    cfg = smoke(data_dir)
    tasks = ["metaworld:push-v3", "dmc:cartpole-swingup"]
    path = tmp_path / "reference_curves.json"
    path.write_text(json.dumps({"tasks": tasks, "curves": [[1.0, 1.0], [0.0, 0.0]], "steps_per_task": 10,
                                "eval_every": 5}))
    cfg.sequence.reference_curves = str(path)
    with pytest.raises(ConfigError, match="success rate only there"):
        continual.load_reference_curves(cfg, tasks)
    data = json.loads(path.read_text())
    data["score_per_task"] = ["success rate", "data-normalised return"]
    path.write_text(json.dumps(data))
    assert continual.load_reference_curves(cfg, tasks) == [[1.0, 1.0], [0.0, 0.0]]


def test_bad_method_names_allowed_values():
    with pytest.raises(ConfigError) as err:
        cc.load(SMOKE, ["sequence.method=si"])
    for method in ("l2m", "l2m_oracle", "lora", "finetune", "ewc"):
        assert method in str(err.value)
    assert "sequence.method" in str(err.value)
    allowed = set(typing.get_args(cc.SequenceConfig.model_fields["method"].annotation))
    assert set(continual.METHODS) == allowed == {"l2m", "l2m_oracle", "lora", "finetune", "ewc", "reference"}
    with pytest.raises(ConfigError, match="sequence.ewc_lambda"):
        cc.load(SMOKE, ["sequence.method=ewc", "sequence.ewc_lambda=-1"])


def test_ewc_fisher_and_penalty_match_hand_computation():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    w, b = model.weight.detach().numpy().astype(np.float64), model.bias.detach().numpy().astype(np.float64)
    rng = np.random.default_rng(0)
    batches = [(rng.normal(size=(4, 3)), rng.normal(size=(4, 2))) for _ in range(2)]

    def mse(mdl, batch):
        x, y = (torch.as_tensor(a, dtype=torch.float32) for a in batch)
        return ((mdl(x) - y) ** 2).mean()

    fisher = continual.ewc_fisher(model, batches, mse)
    # by hand: loss = mean over the B*2 entries of (x W^T + b - y)^2 -> dW = 2/(B*2) err^T x, db = 2/(B*2) sum err
    grads_w, grads_b = [], []
    for x, y in batches:
        err = x @ w.T + b - y
        grads_w.append(2 / err.size * err.T @ x)
        grads_b.append(2 / err.size * err.sum(0))
    assert set(fisher) == {"weight", "bias"}
    np.testing.assert_allclose(fisher["weight"].numpy(), np.mean([g ** 2 for g in grads_w], 0), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(fisher["bias"].numpy(), np.mean([g ** 2 for g in grads_b], 0), rtol=1e-4, atol=1e-7)
    assert model.weight.grad is None and model.bias.grad is None  # .grad untouched

    f = {"weight": torch.rand(2, 3), "bias": torch.rand(2)}
    anchor = {"weight": torch.randn(2, 3), "bias": torch.randn(2)}
    lam = 7.5
    penalty = continual.ewc_penalty(model, f, anchor, lam)
    expected = lam / 2 * sum(float((f[k].double().numpy() * (p - anchor[k].double().numpy()) ** 2).sum())
                             for k, p in (("weight", w), ("bias", b)))
    assert penalty.item() == pytest.approx(expected, rel=1e-5)
    penalty.backward()  # d/dtheta = lam * F * (theta - anchor)
    np.testing.assert_allclose(model.weight.grad.numpy(), lam * f["weight"].numpy() * (w - anchor["weight"].numpy()),
                               rtol=1e-4, atol=1e-6)
    assert continual.ewc_penalty(model, f, anchor, 0.0).item() == 0.0
    assert continual.ewc_penalty(model, {}, {}, lam).item() == 0.0
    with pytest.raises(ValueError):
        continual.ewc_fisher(model, [], mse)


def test_ewc_runs_and_huge_lambda_keeps_backbone_near_task_1(data_dir, tmp_path):
    def run(lam):
        cfg = smoke(data_dir, "sequence.method=ewc", f"sequence.ewc_lambda={lam}", "sequence.eval_every=0",
                    "sequence.steps_per_task=30", "sequence.ewc_fisher_batches=4")
        run_dir = continual.run_sequence(cfg, tmp_path / str(lam))
        for name in ("summary.json", "success_matrix.json", "checkpoints/final.pt"):
            assert (run_dir / name).is_file(), name
        assert torch.load(run_dir / "checkpoints" / "final.pt")["pool"] is None
        ewc = torch.load(run_dir / "checkpoints" / "final.pt")["extras"]["ewc"]
        final = torch.load(run_dir / "checkpoints" / "final.pt")["model"]
        assert ewc["tasks"] == 1 and ewc["anchor"].keys() == ewc["fisher"].keys() == final.keys()
        assert L2MAgent.load(run_dir / "checkpoints" / "final.pt", device="cpu").extras["ewc"]["lambda"] == lam
        assert sum(f.sum().item() for f in ewc["fisher"].values()) > 0
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert any("train/ewc_penalty" in r for r in records)  # logged during task 2
        # backbone after task 2 vs after task 1 (= the anchor): plain L2 and Fisher-weighted squared distance
        l2 = sum(((final[k] - a) ** 2).sum() for k, a in ewc["anchor"].items()).sqrt().item()
        fw = sum((ewc["fisher"][k] * (final[k] - a) ** 2).sum() for k, a in ewc["anchor"].items()).item()
        return l2, fw

    l2_huge, fw_huge = run(1e9)
    l2_zero, fw_zero = run(0)
    assert l2_zero > 0
    # Adam moves every parameter by ~lr per step whatever the gradient scale, and entries with zero Fisher (e.g.
    # timestep embeddings unseen in task 1's Fisher batches) are free, so the plain L2 shrinks ~4x (measured 0.27),
    # while the distance EWC penalises, Fisher-weighted, shrinks ~1e4x.
    assert l2_huge < 0.5 * l2_zero
    assert fw_huge < 1e-2 * fw_zero


def test_dmc_task_needs_collected_data(tmp_path):
    cfg = cc.load(SMOKE, ["sequence.tasks=[dmc:walker-walk]"])
    with pytest.raises(ConfigError, match="plasticrl collect"):
        continual.run_sequence(cfg, tmp_path)
    assert not any(tmp_path.iterdir())  # nothing written


def test_dmc_dataset_ids_not_on_disk_are_all_named_with_the_fix(tmp_path):
    """The shipped CW10 + DMC6 config before its DMC data exists: one error, before anything is written, naming
    every missing dataset (pre-training's dmc10 ones too) and how to make them."""
    cfg = cc.load("configs/continual/l2m_cw10_dmc6.yaml", [f"data.out_dir={tmp_path / 'data'}"])
    with pytest.raises(ConfigError) as err:
        continual.run_sequence(cfg, tmp_path / "runs")
    message = str(err.value)
    assert "scripts/train_sac_state.sh" in message and "plasticrl collect --runs" in message
    for task in envs.sequence("dmc10") + envs.sequence("dmc6"):
        assert f"{task}: plasticrl/{task[4:]}/sac-final-deterministic-v0" in message
    assert not any(tmp_path.iterdir())


def test_unknown_key_and_task():
    with pytest.raises(ConfigError, match="Did you mean 'sequence.steps_per_task'"):
        cc.load(SMOKE, ["sequence.steps_per_tsk=3"])
    with pytest.raises(ConfigError, match="sequence.tasks"):
        continual.check_continual(cc.load(SMOKE, ["sequence.tasks=[metaworld:psh-v3]"]))


def test_lockstep_evaluation_equals_one_episode_at_a_time(data_dir):
    """Evaluator (all tasks x episodes in lockstep, batched) against a plain loop over episodes with predict: each
    episode from its reset seed, returns-to-go scaled by Meta-World's 200."""
    tasks, seeds, steps = ["metaworld:push-v3", "metaworld:window-close-v3"], [7, 3], 15
    targets = [900.0, 400.0]
    agent = L2MAgent(continual.dt_config(smoke(data_dir)), device="cpu", seed=0)
    evaluator = continual.Evaluator(tasks, seeds, steps)
    seen = []

    def select(states, timesteps, task_indices):
        seen.append(task_indices.tolist())
        return contextlib.nullcontext()

    try:
        success, returns = evaluator.run(agent, [1, 0], [targets[1], targets[0]], select)
    finally:
        evaluator.close()
    assert seen[0] == [1, 1, 0, 0] and len(seen) == steps  # every row's sequence index, every step
    for k, j in enumerate([1, 0]):
        rets, wins = [], []
        env = envs.make(tasks[j], max_episode_steps=steps)
        for seed in seeds:
            obs, _ = env.reset(seed=seed)
            agent.reset(targets[j], 4, return_scale=200.0)
            reward, ret, win = 0.0, 0.0, False
            for _ in range(steps):
                action, _ = agent.predict(obs, reward=reward)
                obs, reward, _, truncated, info = env.step(action)
                ret, win = ret + reward, win or info["success"] >= 1
            rets.append(ret)
            wins.append(win)
        env.close()
        assert returns[k] == pytest.approx(np.mean(rets), rel=1e-6) and success[k] == np.mean(wins)


@pytest.fixture(scope="module")
def pretrained(l2m_run):
    return l2m_run / "checkpoints" / "pretrained.pt"


def test_pretrained_checkpoint_is_reused_and_validated(data_dir, pretrained, tmp_path):
    run = continual.run_sequence(smoke(data_dir, f"pretrain.checkpoint={pretrained}", "sequence.method=finetune",
                                       "sequence.steps_per_task=2", "sequence.eval_every=0"), tmp_path)
    given = torch.load(pretrained, weights_only=False)["model"]
    used = torch.load(run / "checkpoints" / "pretrained.pt", weights_only=False)["model"]
    assert all(torch.equal(given[k], used[k]) for k in given)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert not any("pretrain/loss" in r for r in records)
    with pytest.raises(ConfigError, match=r"pretrain.checkpoint.*d_model=16 \(config: 32\)"):
        continual.check_continual(smoke(data_dir, f"pretrain.checkpoint={pretrained}", "model.d_model=32"))
    with pytest.raises(ConfigError, match="pretrain.checkpoint.*not found"):
        continual.check_continual(smoke(data_dir, f"pretrain.checkpoint={tmp_path / 'nope.pt'}"))


def test_reference_curves_and_forward_transfer(data_dir, pretrained, tmp_path):
    common = [f"pretrain.checkpoint={pretrained}", "sequence.steps_per_task=4", "sequence.eval_every=2"]
    ref_run = continual.run_sequence(smoke(data_dir, *common, "sequence.method=reference"), tmp_path / "ref")
    refs = json.loads((ref_run / "reference_curves.json").read_text())
    assert refs["tasks"] == ["metaworld:push-v3", "metaworld:window-close-v3"]
    assert [len(c) for c in refs["curves"]] == [2, 2]
    records = [json.loads(line) for line in (ref_run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval/stage" in r]
    # only the task in training is evaluated, and the curves are those evaluations
    assert [[k for k in r if k.endswith("/success")] for r in evals] == \
        [["eval/0-metaworld:push-v3/success"]] * 2 + [["eval/1-metaworld:window-close-v3/success"]] * 2
    assert [r[k] for r in evals for k in r if k.endswith("/success")] == refs["curves"][0] + refs["curves"][1]

    run = continual.run_sequence(smoke(data_dir, *common, f"sequence.reference_curves={ref_run}/reference_curves.json"),
                                 tmp_path / "l2m")
    curves = json.loads((run / "success_matrix.json").read_text())["curves"]
    summary = json.loads((run / "summary.json").read_text())
    by_hand = []
    for curve, ref in zip(curves, refs["curves"]):
        auc, auc_ref = sum(curve) / len(curve), sum(ref) / len(ref)
        by_hand.append(0.0 if auc_ref >= 1 else (auc - auc_ref) / (1 - auc_ref))
    assert summary["forward_transfer_per_task"] == pytest.approx(by_hand)
    assert summary["forward_transfer"] == pytest.approx(sum(by_hand) / 2)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"tasks": ["metaworld:reach-v3"], "curves": [[0.5]]}))
    with pytest.raises(ConfigError, match="sequence.reference_curves.*reach-v3"):
        continual.check_continual(smoke(data_dir, f"sequence.reference_curves={other}"))
    with pytest.raises(ConfigError, match="sequence.steps_per_task: 4 there, 6 here"):
        continual.check_continual(smoke(data_dir, *common, "sequence.steps_per_task=6",
                                        f"sequence.reference_curves={ref_run}/reference_curves.json"))


def test_forward_transfer_from_listed_curves(data_dir, pretrained, tmp_path, monkeypatch):
    """Scripted evaluation scores make the expected FT non-trivial: curves [0.2, 0.4] and [0.6, 0.8]."""
    scores = iter([0.2, 0.4, 0.6, 0.8])

    def fake_run(self, agent, tasks, targets, select=None):
        s = next(scores)
        return np.full(len(tasks), s), np.zeros(len(tasks))

    monkeypatch.setattr(continual.Evaluator, "run", fake_run)
    run = continual.run_sequence(smoke(data_dir, f"pretrain.checkpoint={pretrained}", "sequence.steps_per_task=2",
                                       "sequence.eval_every=1", "sequence.reference_curves=[[0.0,0.2],[0.5,1.0]]"),
                                 tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    # task 0: AUC 0.3, ref 0.1 -> 0.2/0.9; task 1: AUC 0.7, ref 0.75 -> -0.05/0.25 = -0.2
    assert summary["forward_transfer_per_task"] == pytest.approx([0.2 / 0.9, -0.2])
    assert "forward_transfer_note" not in summary
    # a reference at success 1 throughout leaves no room: FT 0 by definition, and the summary says so
    scores = iter([0.2, 0.4, 0.6, 0.8])
    run = continual.run_sequence(smoke(data_dir, f"pretrain.checkpoint={pretrained}", "sequence.steps_per_task=2",
                                       "sequence.eval_every=1", "sequence.reference_curves=[[0.0,0.2],[1.0,1.0]]"),
                                 tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["forward_transfer_per_task"] == pytest.approx([0.2 / 0.9, 0.0])
    assert "tasks [1]" in summary["forward_transfer_note"]
    with pytest.raises(ConfigError, match="sequence.reference_curves: need 2"):
        continual.check_continual(smoke(data_dir, "sequence.reference_curves=[[0.5]]"))


def test_wandb_gets_the_success_matrix_table_and_heatmap(data_dir, pretrained, tmp_path, monkeypatch):
    """Real wandb, offline: every evaluation logs the matrix so far (finished rows + the current evaluation)."""
    scores = iter([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6], [0.7, 0.8]])  # 2 evaluations per task

    def fake_run(self, agent, tasks, targets, select=None):
        return np.array(next(scores))[tasks], np.zeros(len(tasks))

    monkeypatch.setattr(continual.Evaluator, "run", fake_run)
    monkeypatch.setenv("WANDB_MODE", "offline")
    run = continual.run_sequence(cc.load(SMOKE, [f"data.out_dir={data_dir}", "logging.wandb.mode=offline",
                                                 f"pretrain.checkpoint={pretrained}", "sequence.steps_per_task=2",
                                                 "sequence.eval_every=1"]), tmp_path)
    (files,) = run.glob("wandb/offline-run-*/files")
    tables = sorted(files.glob("media/table/eval/success_matrix_*.table.json"),
                    key=lambda p: int(p.name.split("_")[2]))  # success_matrix_<wandb step>_<hash>.table.json
    got = [json.loads(p.read_text()) for p in tables]
    names = ["0-metaworld:push-v3", "1-metaworld:window-close-v3"]
    assert all(t["columns"] == ["after task", *names] for t in got)
    assert [t["data"] for t in got] == [[[names[0], 0.1, 0.2]], [[names[0], 0.3, 0.4]],
                                        [[names[0], 0.3, 0.4], [names[1], 0.5, 0.6]],
                                        [[names[0], 0.3, 0.4], [names[1], 0.7, 0.8]]]
    assert len(list(files.glob("media/images/eval/success_matrix_plot_*.png"))) >= 2  # identical images share a file
    assert json.loads((run / "success_matrix.json").read_text())["perf"] == [[0.3, 0.4], [0.7, 0.8]]


def data_seeds(out_dir, dataset_id):
    """The reset seed of every episode of a dataset, as Minari stored it per episode."""
    with collect.datasets_path(out_dir):
        dataset = minari.load_dataset(dataset_id)
        return [int(m["seed"]) for m in dataset.storage.get_episode_metadata(range(dataset.total_episodes))]


def test_evaluation_starts_are_held_out_from_the_data(data_dir, l2m_run):
    """No evaluation reset seed is a seed of the data, and no evaluation episode starts where a training episode
    started (random_init_all: object and goal positions come from the reset seed)."""
    cfg = smoke(data_dir)
    ids = continual.ensure_datasets(cfg, envs.task_ids(cfg.sequence.tasks))
    seeds = continual.eval_seeds(cfg.run.seed, cfg.sequence.eval_episodes)
    assert seeds == [1_000_000_000]  # 1e9 + 1000 * run.seed + e
    for env_id, dataset_id in ids.items():
        used = data_seeds(data_dir, dataset_id)
        assert used == [0, 1]  # data.seed (= run.seed 0) + episode
        assert not set(used) & set(seeds)
        starts = [ep["observations"][0] for ep in continual.load_episodes(data_dir, dataset_id)]
        env = envs.make(env_id)
        for seed in seeds + [1_000_000_001, 1_000_000_002]:
            obs, _ = env.reset(seed=seed)
            assert all(not np.allclose(obs[36:39], start[36:39]) for start in starts)  # other goals
        env.close()
    assert continual.eval_seeds(2, 3) == [1_000_002_000, 1_000_002_001, 1_000_002_002]
    with pytest.raises(ConfigError, match="data.seed"):
        smoke(data_dir, "data.seed=999999999")  # its 2 episodes would reach the evaluation seeds


def test_another_episode_count_and_seed_collect_another_dataset(data_dir, l2m_run):
    """The reported case: after the smoke run (2 episodes, seed 0), `--set data.episodes_per_task=5 --set
    run.seed=3` trains on 5 new episodes from seed 3, not on the first run's data. The id names everything that made
    the dataset, and the metadata records it."""
    first = continual.ensure_datasets(smoke(data_dir), ["metaworld:push-v3"])["metaworld:push-v3"]
    assert first == "plasticrl/push-v3/scripted-noise0p1-ep2-seed0-random_init_all-v0"
    cfg = smoke(data_dir, "data.episodes_per_task=5", "run.seed=3")
    run = continual.ContinualRun(cfg)  # checks and data, nothing written to the run folder yet
    second = run.dataset_ids["metaworld:push-v3"]
    assert second == "plasticrl/push-v3/scripted-noise0p1-ep5-seed3-random_init_all-v0"
    assert len(continual.load_episodes(data_dir, second)) == 5 and data_seeds(data_dir, second) == [3, 4, 5, 6, 7]
    assert collect.read_provenance(data_dir, second) == {
        "env_id": "metaworld:push-v3", "policy": "metaworld-scripted", "noise_std": 0.1, "episodes": 5,
        "reset_seeds": [3, 7], "noise_seed": 3, "randomization": "random_init_all", "max_episode_steps": 200}
    assert len(continual.load_episodes(data_dir, first)) == 2  # the first run's data is untouched
    # data.seed decouples the data from run.seed: seed-3 runs on the seed-0 data
    assert continual.ensure_datasets(smoke(data_dir, "run.seed=3", "data.seed=0"), ["metaworld:push-v3"]) == \
        {"metaworld:push-v3": first}


def test_a_dataset_that_differs_from_its_id_is_refused(data_dir, l2m_run, tmp_path):
    """A dataset under a scripted id whose recorded provenance says otherwise (here: edited to 7 episodes, and one
    with no provenance at all) stops the run with one line naming the fields and the fix."""
    dataset_id = "plasticrl/push-v3/scripted-noise0p1-ep2-seed0-random_init_all-v0"
    out = tmp_path / "data"
    shutil.copytree(data_dir / dataset_id, out / dataset_id)
    meta_path = out / dataset_id / "data" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta[collect.PROVENANCE_KEY]["episodes"] = 7
    meta_path.write_text(json.dumps(meta))
    cfg = smoke(data_dir, f"data.out_dir={out}")
    with pytest.raises(ConfigError) as err:
        continual.ensure_datasets(cfg, ["metaworld:push-v3"])
    message = str(err.value)
    assert "episodes: 7 there, 2 wanted" in message and f"remove {out / dataset_id}" in message
    assert "\n" not in message and "noise_std" not in message  # one line, only the differing field
    del meta[collect.PROVENANCE_KEY]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="env_id: not recorded there, metaworld:push-v3 wanted"):
        continual.ensure_datasets(cfg, ["metaworld:push-v3"])


def test_listed_dataset_of_another_task_is_refused(data_dir, l2m_run):
    dataset_id = "plasticrl/push-v3/scripted-noise0p1-ep2-seed0-random_init_all-v0"
    cfg = smoke(data_dir, f"data.dataset_ids={{metaworld:reach-v3: {dataset_id}}}")
    with pytest.raises(ConfigError, match="collected on metaworld:push-v3, not on metaworld:reach-v3"):
        continual.ensure_datasets(cfg, ["metaworld:reach-v3"])


def test_stochastic_evaluation_samples_the_bins_reproducibly(data_dir):
    """eval_deterministic=false samples each action dimension's bin from its softmax, with the evaluator's own
    generator: the same sample seed gives the same episodes, the argmax gives others."""
    agent = L2MAgent(continual.dt_config(smoke(data_dir)), device="cpu", seed=0)
    tasks, seeds, steps = ["metaworld:push-v3"], [1_000_000_000, 1_000_000_001], 12

    def returns(deterministic, sample_seed=0):
        evaluator = continual.Evaluator(tasks, seeds, steps, deterministic=deterministic, sample_seed=sample_seed)
        try:
            return evaluator.run(agent, [0], [500.0])[1]
        finally:
            evaluator.close()

    sampled = returns(False)
    assert np.array_equal(returns(False), sampled)
    assert not np.array_equal(returns(False, sample_seed=1), sampled)
    assert not np.array_equal(returns(True), sampled)
    assert cc.load(SMOKE).sequence.eval_deterministic is True  # L2M's discrete DT decodes by argmax


@pytest.mark.parametrize(("method", "steps_per_optimizer"), [("l2m", 2 * 4), ("reference", 4)])
def test_one_optimizer_serves_the_whole_sequence(data_dir, pretrained, method, steps_per_optimizer, tmp_path):
    """As L2M (reset_optim_on_switch=False): the sequence methods step one AdamW through every task, so after 2
    tasks of 4 steps its step count is 8; the single-task reference starts each task with a fresh one."""
    cfg = smoke(data_dir, f"pretrain.checkpoint={pretrained}", f"sequence.method={method}",
                "sequence.steps_per_task=4", "sequence.eval_every=0", "sequence.probe_batch_size=0")
    run = continual.ContinualRun(cfg, tmp_path)
    run.run()
    steps = {int(state["step"]) for state in run.optimizer.state.values()}
    assert steps == {steps_per_optimizer}
    groups = run.optimizer.param_groups
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in run.method.trainable()}
    # weight decay as L2M's get_optim_groups: the DT's Linear weights only; none for the pool's raw parameters
    if method == "l2m":
        assert [g["weight_decay"] for g in groups] == [0.0]
    else:
        linear = {id(m.weight) for m in run.agent.model.modules() if isinstance(m, torch.nn.Linear)}
        assert [g["weight_decay"] for g in groups] == [0.01, 0.0]
        assert {id(p) for p in groups[0]["params"]} == linear
        assert not linear & {id(p) for p in groups[1]["params"]}
    assert all(g["lr"] == cfg.sequence.learning_rate for g in groups)  # constant over the sequence, as L2M's CW10


def test_paper_config_has_l2ms_sizes_steps_and_evaluation(tmp_path):
    """configs/continual/l2m_cw10_paper.yaml against ml-jku/L2M's configs: dt_mediumplus_64 (6 layers, 12 heads,
    hidden 768, context 5; about 40M parameters), 1M pre-training steps on MT40 + DMC10 (2 x 256 per step), 100k
    steps per CW10 task at batch 256, evaluation every 50k steps on 5 episodes, the l2m_lora pool (30 x rank 8)."""
    cfg = cc.load("configs/continual/l2m_cw10_paper.yaml")
    m, pre, seq, pool = cfg.model, cfg.pretrain, cfg.sequence, cfg.pool
    assert (m.d_model, m.n_layers, m.n_heads, m.context, m.dropout) == (768, 6, 12, 5, 0.1)
    assert (pre.steps, pre.batch_size, pre.learning_rate) == (1_000_000, 512, 1e-4)
    # cdt_pretrain_disc.yaml (warmup_steps 4000, lr_sched_kwargs cosine), lr_sched_kwargs/cosine.yaml (eta_min)
    assert (pre.warmup_steps, pre.lr_schedule, pre.min_learning_rate) == (4000, "cosine", 1e-6)
    assert continual.resolve_task_list(pre.tasks, "pretrain.tasks") == envs.sequence("mt40") + envs.sequence("dmc10")
    assert continual.resolve_task_list(seq.tasks, "sequence.tasks") == envs.sequence("cw10")
    assert (seq.method, seq.steps_per_task, seq.batch_size, seq.learning_rate) == ("l2m", 100_000, 256, 1e-4)
    assert (seq.eval_every, seq.eval_scope, seq.eval_episodes, seq.eval_deterministic) == (50_000, "all", 5, True)
    assert seq.max_episode_steps == 200
    assert (pool.pool_size, pool.rank, pool.kind, pool.placement, pool.top_k, pool.pull_coef, pool.count_penalty) == \
        (30, 8, "lora", "l2m", 1, 0.5, True)
    assert cfg.data.episodes_per_task * 200 == 2_000_000  # L2M's cw10_v2_cwnet_2M: 2M transitions per task
    assert set(cfg.data.dataset_ids) == set(envs.sequence("dmc10"))
    with torch.device("meta"):  # sizes only, no memory
        dt = DecisionTransformer(continual.dt_config(cfg))
    assert 40e6 < sum(p.numel() for p in dt.parameters()) < 45e6
    # without the DMC data the run stops before writing anything, naming every missing dataset and the fix
    with pytest.raises(ConfigError, match="scripts/train_sac_state.sh"):
        continual.check_continual(cc.load("configs/continual/l2m_cw10_paper.yaml", [f"data.out_dir={tmp_path}"]))


def test_paper_config_starts_with_its_model_and_pool(data_dir, l2m_run, tmp_path):
    """The paper config runs as it stands but for data, steps, tasks and evaluation, cut to seconds (the smoke run's
    data): its 43M-parameter DT pre-trains, its L2M pool (30 x rank 8 on L2M's sites) learns a task, and its
    evaluation scores it."""
    cfg = cc.load("configs/continual/l2m_cw10_paper.yaml", [
        f"data.out_dir={data_dir}", "data.episodes_per_task=2", "data.dataset_ids={}", "run.device=cpu",
        "pretrain.tasks=[metaworld:reach-v3]", "pretrain.steps=2", "pretrain.batch_size=4", "pretrain.warmup_steps=1",
        "sequence.tasks=[metaworld:push-v3]", "sequence.steps_per_task=2", "sequence.batch_size=4",
        "sequence.eval_every=0", "sequence.eval_episodes=1", "sequence.max_episode_steps=10",
        "logging.wandb.mode=disabled"])
    run = continual.run_sequence(cfg, tmp_path)
    agent = L2MAgent.load(run / "checkpoints" / "final.pt", device="cpu")
    pool_params = {id(p) for p in agent.pool.parameters()}
    assert 40e6 < sum(p.numel() for p in agent.model.parameters() if id(p) not in pool_params) < 45e6
    assert (agent.model.config.n_layers, agent.model.config.n_heads, agent.model.config.d_model) == (6, 12, 768)
    assert agent.pool.pool_size == 30 and agent.pool.placement == "l2m" and pool_params
    perf = np.array(json.loads((run / "success_matrix.json").read_text())["perf"])
    assert perf.shape == (1, 1) and 0 <= perf[0, 0] <= 1


def test_pool_placement_and_seed_limits_are_validated():
    assert cc.load(SMOKE).pool.placement == "l2m"
    assert cc.load(SMOKE, ["pool.placement=standard"]).pool.placement == "standard"
    with pytest.raises(ConfigError, match="pool.placement: standard is a LoRA placement"):
        cc.load(SMOKE, ["pool.kind=ia3", "pool.placement=standard"])
    with pytest.raises(ConfigError, match="pool.placement"):
        cc.load(SMOKE, ["pool.placement=peft"])
    with pytest.raises(ConfigError, match="sequence.eval_episodes"):
        cc.load(SMOKE, ["sequence.eval_episodes=1001"])  # evaluation seeds of one run: 1000
    with pytest.raises(ConfigError, match="run.seed"):
        cc.load(SMOKE, ["run.seed=1000001"])  # evaluation seeds must stay below 2**32
