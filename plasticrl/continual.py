"""Continual-learning metrics of Continual World (Wolczyk et al., NeurIPS 2021).

The metrics come first; below them, ``run_sequence`` trains an L2M Decision Transformer on a task sequence
(``plasticrl continual CONFIG``, config schema in ``plasticrl.continual_config``).

Conventions (scores are success rates in [0, 1]):

* ``perf`` (n_tasks, n_tasks): ``perf[i, j]`` = score of task ``j`` evaluated at
  the end of training task ``i`` (row = training stage, column = evaluated task).
* ``curves[j]`` (n_checkpoints_j,): task ``j``'s score at regular, equally spaced
  checkpoints during its own training; ``ref_curves[j]`` the same for a
  single-task reference run. AUC = mean of a curve, i.e. the normalised area
  under it for uniform checkpoints (a value in [0, 1]).

Metrics:

* average performance: mean over tasks of the final scores ``perf[-1, j]``;
* forgetting of task ``j < n-1``: ``perf[j, j] - perf[-1, j]``;
* forward transfer of task ``j``: ``(AUC_j - AUC_ref_j) / (1 - AUC_ref_j)``, and
  0 for a task whose reference AUC is 1 (a perfect reference leaves nothing to transfer).

The metrics are pure functions on numpy arrays; at import only numpy and the standard library are loaded (the
runner imports torch, minari, envs and agents.l2m inside its functions).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _check_perf(perf: np.ndarray) -> np.ndarray:
    """``perf`` as a float array; ValueError unless square (n_tasks, n_tasks) with n_tasks >= 1."""
    perf = np.asarray(perf, dtype=np.float64)
    if perf.ndim != 2 or perf.shape[0] != perf.shape[1] or perf.shape[0] == 0:
        raise ValueError(f"perf must be a square (n_tasks, n_tasks) matrix, got shape {perf.shape}")
    return perf


def average_performance_per_task(perf: np.ndarray) -> np.ndarray:
    """Final score of every task: ``perf[-1]``, shape (n_tasks,)."""
    return _check_perf(perf)[-1].copy()


def average_performance(perf: np.ndarray) -> float:
    """Mean over tasks of the final scores (last row of ``perf``)."""
    return float(average_performance_per_task(perf).mean())


def forgetting_per_task(perf: np.ndarray) -> np.ndarray:
    """``perf[j, j] - perf[-1, j]`` for tasks j = 0 .. n-2, shape (n_tasks - 1,)."""
    perf = _check_perf(perf)
    return np.diag(perf)[:-1] - perf[-1, :-1]


def forgetting(perf: np.ndarray) -> float:
    """Mean forgetting over all tasks but the last; NaN for a single task (nothing to forget yet)."""
    per_task = forgetting_per_task(perf)
    return float(per_task.mean()) if per_task.size else float("nan")


def forward_transfer_per_task(curves: Sequence[np.ndarray], ref_curves: Sequence[np.ndarray]) -> np.ndarray:
    """``(AUC - AUC_ref) / (1 - AUC_ref)`` per task (0 where AUC_ref >= 1), shape (n_tasks,).

    ``curves[j]`` and ``ref_curves[j]`` are 1-D score curves at uniform checkpoints;
    their lengths may differ (each AUC is the mean of its own curve).
    """
    if len(curves) != len(ref_curves) or len(curves) == 0:
        raise ValueError(f"need as many curves as ref_curves (>= 1), got {len(curves)} and {len(ref_curves)}")
    out = np.zeros(len(curves))
    for j, (curve, ref) in enumerate(zip(curves, ref_curves)):
        curve, ref = np.asarray(curve, dtype=np.float64), np.asarray(ref, dtype=np.float64)
        if curve.ndim != 1 or ref.ndim != 1 or curve.size == 0 or ref.size == 0:
            raise ValueError(f"task {j}: curves must be non-empty 1-D arrays")
        auc, auc_ref = curve.mean(), ref.mean()
        out[j] = 0.0 if auc_ref >= 1.0 else (auc - auc_ref) / (1.0 - auc_ref)
    return out


def forward_transfer(curves: Sequence[np.ndarray], ref_curves: Sequence[np.ndarray]) -> float:
    """Mean forward transfer over tasks (see ``forward_transfer_per_task``)."""
    return float(forward_transfer_per_task(curves, ref_curves).mean())


# ---- continual-learning runner (L2M) --------------------------------------------------
# Everything below imports torch, minari, envs and agents.l2m lazily, inside the functions, so the metric
# functions above stay numpy-only. No stable_baselines3 anywhere.

METHODS = ("l2m", "l2m_oracle", "lora", "finetune", "ewc")


# ---- EWC (Kirkpatrick et al., PNAS 2017), "online" form as in Continual World ------------------
# One running Fisher sum over the finished tasks and one anchor, the parameters after the latest task:
#     penalty = lambda/2 * sum_i F_i (theta_i - anchor_i)^2,   F = F_task_0 + ... + F_task_{i-1}.
# Per-task anchors would give sum_t F_t (theta - theta*_t)^2 instead; the single anchor is the common
# simplification (Continual World's EWC keeps the summed Fisher and the latest parameters the same way).

def ewc_fisher(model: Any, batches: Any, loss_fn: Any) -> dict[str, Any]:
    """Diagonal empirical Fisher of ``model``: {name: mean over ``batches`` of grad(loss_fn(model, batch))^2}.

    One squared gradient of the (batch-mean) loss per batch, for every parameter with ``requires_grad``; the
    parameters' ``.grad`` are left untouched (``torch.autograd.grad``). The caller picks train/eval mode."""
    import torch

    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    fisher = {name: torch.zeros_like(p) for name, p in named}
    count = 0
    for batch in batches:
        grads = torch.autograd.grad(loss_fn(model, batch), [p for _, p in named], allow_unused=True)
        for (name, _), g in zip(named, grads):
            if g is not None:
                fisher[name] += g.detach() ** 2
        count += 1
    if count == 0:
        raise ValueError("ewc_fisher needs at least one batch")
    return {name: f / count for name, f in fisher.items()}


def ewc_penalty(model: Any, fisher: dict[str, Any], anchor: dict[str, Any], lam: float) -> Any:
    """``lam / 2 * sum_i F_i (theta_i - anchor_i)^2`` over the parameters named in ``fisher`` (a scalar tensor;
    0 when ``fisher`` is empty or ``lam`` is 0)."""
    import torch

    params = dict(model.named_parameters())
    total = torch.zeros((), device=next(iter(params.values())).device)
    if lam == 0 or not fisher:
        return total
    for name, f in fisher.items():
        total = total + (f * (params[name] - anchor[name]) ** 2).sum()
    return 0.5 * lam * total


def resolve_task_list(spec: str | list[str], key: str) -> list[str]:
    """Env ids of ``spec`` (a sequence name, comma-separated ids or a list); duplicates kept (cw20 repeats tasks).

    Raises ``plasticrl.config.ConfigError`` naming ``key`` for an unknown sequence or id."""
    import envs
    from plasticrl.config import ConfigError

    if isinstance(spec, str):
        ids = envs.sequence(spec) if spec in envs.SEQUENCES else [p.strip() for p in spec.split(",") if p.strip()]
    else:
        ids = list(spec)
    for env_id in ids:
        try:
            envs.check_id(env_id)
        except ValueError as exc:
            raise ConfigError(f"{key}: {exc} (sequences: {', '.join(envs.SEQUENCES)})") from None
    return ids


def check_continual(cfg: Any) -> tuple[list[str], list[str]]:
    """(pre-training tasks, sequence tasks) of a validated config; ConfigError for problems needing the registries."""
    from plasticrl.config import ConfigError

    pre = resolve_task_list(cfg.pretrain.tasks, "pretrain.tasks") if cfg.pretrain.steps > 0 else []
    seq = resolve_task_list(cfg.sequence.tasks, "sequence.tasks")
    if not seq:
        raise ConfigError("sequence.tasks: no tasks; give a sequence name (cw10, ...) or env ids")
    if cfg.sequence.method not in METHODS:
        raise ConfigError(f"sequence.method: {cfg.sequence.method!r} is not allowed; allowed: {', '.join(METHODS)}")
    for env_id in dict.fromkeys(pre + seq):
        if env_id.startswith("dmc:") and env_id not in cfg.data.dataset_ids:
            raise ConfigError(f"{env_id}: DMC tasks have no scripted policy; collect their data first with "
                              f"`plasticrl collect --tasks {env_id} --checkpoint RUN/checkpoints/final.zip "
                              f"--out {cfg.data.out_dir}` and give the dataset id in data.dataset_ids")
    refs = cfg.sequence.reference_curves
    if refs is not None and (len(refs) != len(seq) or any(len(r) == 0 for r in refs)):
        raise ConfigError(f"sequence.reference_curves: need {len(seq)} non-empty curves (one per task), "
                          f"got {len(refs)}")
    if cfg.sequence.method == "l2m_oracle" and cfg.pool.pool_size < len(seq) * cfg.pool.top_k:
        raise ConfigError(f"pool.pool_size: {cfg.pool.pool_size} is too small for l2m_oracle; need at least "
                          f"{len(seq)} tasks x top_k {cfg.pool.top_k} = {len(seq) * cfg.pool.top_k} entries")
    return pre, seq


def ensure_datasets(cfg: Any, tasks: list[str]) -> dict[str, str]:
    """Dataset id per task: ``data.dataset_ids`` entries, else scripted Meta-World data (collected if missing)."""
    from plasticrl.collect import collect_scripted, scripted_dataset_id
    from plasticrl.config import ConfigError

    out, ids = Path(cfg.data.out_dir), {}
    for env_id in dict.fromkeys(tasks):
        if env_id in cfg.data.dataset_ids:
            ids[env_id] = cfg.data.dataset_ids[env_id]
            if not (out / ids[env_id]).exists():
                raise ConfigError(f"data.dataset_ids: {ids[env_id]!r} ({env_id}) not found under {out}")
            continue
        ids[env_id] = scripted_dataset_id(env_id, cfg.data.noise_std)
        if not (out / ids[env_id]).exists():
            collect_scripted(env_id, cfg.data.episodes_per_task, cfg.data.noise_std, cfg.run.seed, out)
    return ids


def load_episodes(out_dir: str | Path, dataset_id: str) -> list[dict[str, np.ndarray]]:
    """The episodes of a Minari dataset as dicts of observations, actions, rewards (numpy)."""
    import minari

    from plasticrl.collect import datasets_path

    with datasets_path(out_dir):
        dataset = minari.load_dataset(dataset_id)
        return [{"observations": np.asarray(ep.observations), "actions": np.asarray(ep.actions),
                 "rewards": np.asarray(ep.rewards)} for ep in dataset.iterate_episodes()]


def _env_options(env_id: str, seed: int, max_episode_steps: int) -> dict[str, Any]:
    if env_id.startswith("metaworld:"):
        return {"seed": seed, "max_episode_steps": max_episode_steps}
    return {"pixels": False, "seed": seed}


def evaluate_task(agent: Any, env_id: str, episodes: int, target_return: float, seed: int, max_episode_steps: int,
                  select: Any = None) -> tuple[float, float]:
    """(success rate, mean return) of ``agent`` (an L2MAgent) on ``env_id`` over ``episodes`` episodes.

    Success: ``info["success"] >= 1`` at any step (dmc has no success signal: 0). ``select(states)`` -> entry
    indices (1, top_k) is called before every action with the context's states (T, S) when given, and the action
    is taken under that selection (``select`` returns a context manager)."""
    import envs

    env = envs.make(env_id, **_env_options(env_id, seed, max_episode_steps))
    action_dim = int(np.prod(env.action_space.shape))
    successes, returns = [], []
    try:
        for episode in range(episodes):
            obs, _ = env.reset(seed=seed + episode)
            agent.reset(target_return, action_dim)
            reward, ret, success = 0.0, 0.0, False
            for _ in range(max_episode_steps):
                if select is None:
                    action, _ = agent.predict(obs, reward=reward)
                else:
                    context = [*agent._states[-(agent.config.context - 1):], np.asarray(obs, np.float32).reshape(-1)]
                    with select(np.stack(context)):
                        action, _ = agent.predict(obs, reward=reward)
                obs, reward, terminated, truncated, info = env.step(action)
                ret += float(reward)
                success = success or float(info.get("success", 0.0)) >= 1.0
                if terminated or truncated:
                    break
            successes.append(success)
            returns.append(ret)
    finally:
        env.close()
    return float(np.mean(successes)), float(np.mean(returns))


def _plot_matrix(perf: np.ndarray, tasks: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(tasks)
    labels = [t.partition(":")[2] or t for t in tasks]
    fig, ax = plt.subplots(figsize=(3.5 + 0.6 * n, 2.5 + 0.5 * n))
    im = ax.imshow(perf, vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(n), labels, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(n), labels, fontsize=7)
    ax.set_xlabel("evaluated task")
    ax.set_ylabel("after training task")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{perf[i, j]:.2f}", ha="center", va="center", fontsize=6,
                    color="white" if perf[i, j] < 0.5 else "black")
    fig.colorbar(im, ax=ax, label="success rate")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def run_sequence(cfg: Any, out_dir: str | Path | None = None) -> Path:
    """Runs one continual-learning experiment from a validated ``ContinualConfig``; returns its run folder.

    Data (scripted Meta-World datasets, collected if missing) -> pre-training of an ``agents.l2m.L2MAgent`` on
    ``pretrain.tasks`` -> ``sequence.steps_per_task`` gradient steps per task with ``sequence.method``:

    * ``l2m``: a ``ModulationPool`` on the frozen DT; per-batch query ``model.query_embedding(states)``, entries by
      ``pool.select``, loss = DT loss under ``pool.selected(idx)`` + ``pool.key_loss``; ``pool.end_task()`` after
      each task;
    * ``l2m_oracle``: the same with ``oracle=True`` and the task index (also at evaluation);
    * ``lora``: one shared LoRA (pool_size 1, no usage penalty) on the frozen DT;
    * ``finetune``: every DT parameter trains, no pool;
    * ``ewc``: ``finetune`` plus the online-EWC penalty ``ewc_penalty`` (weight ``sequence.ewc_lambda``) on the
      DT loss; after each task but the last, its diagonal Fisher (``ewc_fisher``, eval mode, mean over
      ``sequence.ewc_fisher_batches`` batches of its data) is added to the running sum and the anchor becomes the
      current parameters. Pre-training is not consolidated. ``checkpoints/ewc.pt`` keeps the penalty in force
      during the last task: {"fisher", "anchor", "tasks", "lambda"}.

    Every ``eval_every`` steps and at the end of each task, every task of the sequence is evaluated (task-agnostic
    selection, ``pool.eval()``). ``out_dir`` overrides ``run.out_dir``. Writes config.yaml, metrics.jsonl,
    success_matrix.json, plots/success_matrix.png, summary.json and checkpoints/{pretrained,final}.pt (+ pool.pt
    for the pool methods, ewc.pt for ewc)."""
    import json

    import torch

    from agents.l2m import DTConfig, L2MAgent
    from plasticrl.cli import resolve_device
    from plasticrl.config import dump, wandb_settings
    from plasticrl.logging import RunLogger, make_run_dir
    from plasticrl.modulation import ModulationPool

    pre_tasks, seq_tasks = check_continual(cfg)
    device = resolve_device(cfg.run.device)
    seq_cfg, method, n = cfg.sequence, cfg.sequence.method, len(seq_tasks)
    dataset_ids = ensure_datasets(cfg, pre_tasks + seq_tasks)

    run_dir = make_run_dir(out_dir or cfg.run.out_dir, cfg.run.name, cfg.run.seed)
    (run_dir / "config.yaml").write_text(dump(cfg))
    logger = RunLogger(run_dir, cfg.model_dump(mode="json"),
                       wandb_settings(cfg.logging.wandb, cfg.run.name, cfg.run.seed, ["continual", method]))
    print(f"run folder: {run_dir}  (device {device}, method {method})", flush=True)
    try:
        episodes = {t: load_episodes(cfg.data.out_dir, dataset_ids[t]) for t in dict.fromkeys(pre_tasks + seq_tasks)}
        target = {t: max(float(np.sum(ep["rewards"])) for ep in eps) for t, eps in episodes.items()}
        m = cfg.model
        dt_config = DTConfig(d_model=m.d_model, n_layers=m.n_layers, n_heads=m.n_heads, context=m.context,
                             dropout=m.dropout)
        agent = L2MAgent(dt_config, device=device, learning_rate=cfg.pretrain.learning_rate,
                         batch_size=cfg.pretrain.batch_size, seed=cfg.run.seed)
        model = agent.model
        step = 0  # global gradient step, the x-axis of metrics.jsonl

        # ---- pre-training -------------------------------------------------------------
        if pre_tasks:
            def log_pretrain(i: int, loss: float) -> None:
                if i % 100 == 0 or i == cfg.pretrain.steps - 1:
                    logger.log({"pretrain/loss": loss}, i)

            agent.learn([ep for t in pre_tasks for ep in episodes[t]], cfg.pretrain.steps, callback=log_pretrain)
            step = cfg.pretrain.steps
            print(f"pre-trained {cfg.pretrain.steps} steps on {len(pre_tasks)} tasks", flush=True)
        agent.save(run_dir / "checkpoints" / "pretrained.pt")

        # ---- the method ----------------------------------------------------------------
        pool = None
        ewc_fisher_sum: dict[str, Any] = {}  # method ewc: summed Fisher of the finished tasks, and their anchor
        ewc_anchor: dict[str, Any] = {}
        ewc_tasks = 0
        if method not in ("finetune", "ewc"):
            p = cfg.pool
            lora = method == "lora"
            pool = ModulationPool(pool_size=1 if lora else p.pool_size, key_dim=m.d_model, rank=p.rank,
                                  kind=p.kind, top_k=1 if lora else p.top_k, pull_coef=p.pull_coef,
                                  count_penalty=False if lora else p.count_penalty).to(agent.device)
            pool.attach(model)
            pool.freeze_backbone(model)
        oracle = method == "l2m_oracle"

        def selector(task_index: int) -> Any:
            def select(states: np.ndarray) -> Any:
                query = model.query_embedding(torch.as_tensor(states, device=agent.device).unsqueeze(0))
                return pool.selected(pool.select(query, task_index, oracle=oracle, evaluate=True))

            return select

        def evaluate_all(stage: int) -> np.ndarray:
            if pool is not None:
                pool.eval()
            model.eval()
            scores, record = np.zeros(n), {}
            for j, env_id in enumerate(seq_tasks):
                success, ret = evaluate_task(agent, env_id, seq_cfg.eval_episodes, target[env_id], cfg.run.seed,
                                             seq_cfg.max_episode_steps, None if pool is None else selector(j))
                scores[j] = success
                record[f"eval/{j}-{env_id}/success"] = success
                record[f"eval/{j}-{env_id}/return"] = ret
            record.update({"eval/stage": stage, "eval/mean_success": float(scores.mean())})
            logger.log(record, step)
            return scores

        # ---- the sequence --------------------------------------------------------------
        perf = np.zeros((n, n))
        curves: list[list[float]] = []
        agent.batch_size = seq_cfg.batch_size
        for i, env_id in enumerate(seq_tasks):
            data = agent._prepare(episodes[env_id])
            params = [q for q in (model.parameters() if pool is None else pool.parameters()) if q.requires_grad]
            optimizer = torch.optim.AdamW(params, lr=seq_cfg.learning_rate,
                                          weight_decay=agent.weight_decay if pool is None else 0.0)
            curve = []
            for k in range(seq_cfg.steps_per_task):
                model.train()
                if pool is not None:
                    pool.train()
                states, actions, rtg, timesteps, mask = agent._batch(data)
                extra = {}
                if pool is None:
                    loss = key_loss = model.loss(states, actions, rtg, timesteps, mask)
                    if method == "ewc" and ewc_fisher_sum:
                        penalty = ewc_penalty(model, ewc_fisher_sum, ewc_anchor, seq_cfg.ewc_lambda)
                        extra = {"train/dt_loss": loss.item(), "train/ewc_penalty": penalty.item()}
                        loss = key_loss = loss + penalty
                else:
                    query = model.query_embedding(states)
                    idx = pool.select(query, i, oracle=oracle)
                    with pool.selected(idx):
                        dt_loss = model.loss(states, actions, rtg, timesteps, mask)
                    key_loss = pool.key_loss(query, idx)
                    loss = dt_loss + key_loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, agent.max_grad_norm)
                optimizer.step()
                step += 1
                if k % 100 == 0 or k == seq_cfg.steps_per_task - 1:
                    logger.log({"train/loss": loss.item(), "train/key_loss": key_loss.item(), "train/task": i,
                                **extra}, step)
                last = k == seq_cfg.steps_per_task - 1
                if last or (seq_cfg.eval_every and (k + 1) % seq_cfg.eval_every == 0):
                    scores = evaluate_all(i)
                    curve.append(float(scores[i]))
                    if last:
                        perf[i] = scores
            if pool is not None:
                pool.end_task()
            if method == "ewc" and i < n - 1:  # the last task's Fisher would only serve a later task
                model.eval()
                fisher = ewc_fisher(model, [agent._batch(data) for _ in range(seq_cfg.ewc_fisher_batches)],
                                    lambda mdl, batch: mdl.loss(*batch))
                for name, f in fisher.items():
                    ewc_fisher_sum[name] = ewc_fisher_sum[name] + f if name in ewc_fisher_sum else f
                ewc_anchor = {name: q.detach().clone() for name, q in model.named_parameters() if q.requires_grad}
                ewc_tasks = i + 1
            curves.append(curve)
            print(f"task {i} {env_id}: success {perf[i, i]:.2f}  mean over tasks {perf[i].mean():.2f}", flush=True)

        # ---- save and score ------------------------------------------------------------
        if pool is not None:
            pool.detach()
            torch.save(pool.state_dict(), run_dir / "checkpoints" / "pool.pt")
        torch.save(model.state_dict(), run_dir / "checkpoints" / "final.pt")
        if method == "ewc":
            torch.save({"fisher": ewc_fisher_sum, "anchor": ewc_anchor, "tasks": ewc_tasks,
                        "lambda": seq_cfg.ewc_lambda}, run_dir / "checkpoints" / "ewc.pt")
        summary: dict[str, Any] = {
            "method": method, "tasks": seq_tasks, "average_performance": average_performance(perf),
            "forgetting": _finite(forgetting(perf)),
            "average_performance_per_task": average_performance_per_task(perf).tolist(),
            "forgetting_per_task": forgetting_per_task(perf).tolist(),
        }
        if seq_cfg.reference_curves is not None:
            summary["forward_transfer"] = forward_transfer(curves, seq_cfg.reference_curves)
        else:
            summary["forward_transfer"] = None
            summary["forward_transfer_note"] = "skipped: no sequence.reference_curves given"
        (run_dir / "success_matrix.json").write_text(json.dumps(
            {"tasks": seq_tasks, "perf": perf.tolist(), "curves": curves}, indent=2))
        _plot_matrix(perf, seq_tasks, run_dir / "plots" / "success_matrix.png")
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        logger.log({f"summary/{k}": v for k, v in summary.items() if isinstance(v, float)}, step)
    finally:
        logger.close()
    print(f"average performance {summary['average_performance']:.3f}  forgetting {summary['forgetting']}  "
          f"-> {run_dir}", flush=True)
    return run_dir
