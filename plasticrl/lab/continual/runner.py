"""The continual-learning runner: an L2M Decision Transformer (or a baseline) trained on a task sequence
(``plasticrl continual CONFIG``, config schema in ``plasticrl.lab.config.continual``)."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import minari
import numpy as np
import torch

import envs
from agents.accel import GraphedUpdate
from agents.l2m import DTConfig, L2MAgent
from plasticrl.continual_metrics import (
    average_performance,
    average_performance_per_task,
    data_normalized_score,
    forgetting,
    forgetting_per_task,
    forward_transfer_summary,
)
from plasticrl.lab.collect import collect_scripted, datasets_path, scripted_dataset_id
from plasticrl.lab.config.base import ConfigError, dump, wandb_settings
from plasticrl.lab.plots import plot_success_matrix
from plasticrl.lab.runtime import resolve_device
from plasticrl.modulation import ModulationPool
from plasticrl.monitor import PlasticityMonitor
from plasticrl.runlog import RunLogger, make_run_dir

METHODS = ("l2m", "l2m_oracle", "lora", "finetune", "ewc", "reference")


# ---- EWC (Kirkpatrick et al., PNAS 2017), "online" form as in Continual World ------------------
# One running Fisher sum over the finished tasks and one anchor, the parameters after the latest task:
#     penalty = lambda/2 * sum_i F_i (theta_i - anchor_i)^2,   F = F_task_0 + ... + F_task_{i-1}.
# Per-task anchors would give sum_t F_t (theta - theta*_t)^2 instead; the single anchor is the common
# simplification (Continual World's EWC keeps the summed Fisher and the latest parameters the same way).

def ewc_fisher(model: Any, batches: Any, loss_fn: Any) -> dict[str, Any]:
    """Diagonal empirical Fisher of ``model``: {name: mean over ``batches`` of grad(loss_fn(model, batch))^2}.

    One squared gradient of the (batch-mean) loss per batch, for every parameter with ``requires_grad``; the
    parameters' ``.grad`` are left untouched (``torch.autograd.grad``). The caller picks train/eval mode."""
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
    params = dict(model.named_parameters())
    total = torch.zeros((), device=next(iter(params.values())).device)
    if lam == 0 or not fisher:
        return total
    for name, f in fisher.items():
        total = total + (f * (params[name] - anchor[name]) ** 2).sum()
    return 0.5 * lam * total


def resolve_task_list(spec: str | list[str], key: str) -> list[str]:
    """Env ids of ``spec`` (``envs.task_ids``: sequence names and env ids, comma-separated or a list, e.g.
    ``"mt40,dmc10"``); duplicates kept (cw20 repeats tasks).

    Raises ``plasticrl.lab.config.ConfigError`` naming ``key`` for an unknown sequence or id."""
    try:
        return envs.task_ids(spec)
    except ValueError as exc:
        sequences = "" if "sequences:" in str(exc) else f" (sequences: {', '.join(envs.SEQUENCES)})"
        raise ConfigError(f"{key}: {exc}{sequences}") from None


def dt_config(cfg: Any) -> Any:
    """The ``agents.l2m.DTConfig`` of a config's ``model`` section (other sizes at their defaults)."""
    m = cfg.model
    return DTConfig(d_model=m.d_model, n_layers=m.n_layers, n_heads=m.n_heads, context=m.context, dropout=m.dropout)


def load_pretrained(cfg: Any) -> dict[str, Any]:
    """The contents of ``pretrain.checkpoint`` (an ``L2MAgent.save`` file); ConfigError if it is missing,
    unreadable or was built with other DT sizes than the ``model`` section."""



    path = Path(cfg.pretrain.checkpoint)
    if not path.is_file():
        raise ConfigError(f"pretrain.checkpoint: {str(path)!r} not found; give the pretrained.pt of an earlier run "
                          "(<run>/checkpoints/pretrained.pt) or pretrain.checkpoint=null to pre-train")
    try:
        data = torch.load(path, map_location="cpu", weights_only=False)
        saved = dict(data["config"])
        if "model" not in data:
            raise KeyError("no 'model' weights")
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same advice
        raise ConfigError(f"pretrain.checkpoint: {str(path)!r} is not an L2MAgent checkpoint ({exc})") from None
    wanted = asdict(dt_config(cfg))
    diff = [f"{k}={saved.get(k)!r} (config: {v!r})" for k, v in wanted.items() if saved.get(k) != v]
    if diff:
        raise ConfigError(f"pretrain.checkpoint: {str(path)!r} was built with other DT sizes: {', '.join(diff)}; "
                          "set the model section to the checkpoint's sizes or pretrain.checkpoint=null")
    return data


def load_reference_curves(cfg: Any, seq_tasks: list[str]) -> list[list[float]] | None:
    """``sequence.reference_curves`` as one curve per task (from the list, or from a reference run's
    ``reference_curves.json``); None when not given. ConfigError for a wrong count, empty curves, a missing file or
    a file made for other tasks."""


    refs = cfg.sequence.reference_curves
    if refs is None:
        return None
    if isinstance(refs, str):
        path = Path(refs)
        if not path.is_file():
            raise ConfigError(f"sequence.reference_curves: {refs!r} not found; run `plasticrl continual CONFIG --set "
                              "sequence.method=reference` first and give its reference_curves.json")
        data = json.loads(path.read_text())
        if data.get("tasks") != seq_tasks:
            raise ConfigError(f"sequence.reference_curves: {refs!r} holds curves of tasks {data.get('tasks')}, "
                              f"not of sequence.tasks {seq_tasks}")
        differ = [f"sequence.{k}: {data[k]} there, {getattr(cfg.sequence, k)} here"
                  for k in ("steps_per_task", "eval_every") if k in data and data[k] != getattr(cfg.sequence, k)]
        kinds = score_kinds(seq_tasks)
        if data.get("score_per_task", ["success rate"] * len(seq_tasks)) != kinds:  # older files: success only
            differ.append(f"scores {data.get('score_per_task', 'success rate only')} there, {kinds} here")
        if differ:  # curves of another length or grid would make the AUCs incomparable
            raise ConfigError(f"sequence.reference_curves: {refs!r} was made with other settings ({'; '.join(differ)}); "
                              "make the reference run with this config's sequence settings")
        refs = data["curves"]
    if len(refs) != len(seq_tasks) or any(len(r) == 0 for r in refs):
        raise ConfigError(f"sequence.reference_curves: need {len(seq_tasks)} non-empty curves (one per task), "
                          f"got {len(refs)}")
    return [list(map(float, r)) for r in refs]


def check_continual(cfg: Any) -> tuple[list[str], list[str]]:
    """(pre-training tasks, sequence tasks) of a validated config; ConfigError for problems needing the registries
    or files (``pretrain.checkpoint``, a ``sequence.reference_curves`` file). No pre-training tasks when
    ``pretrain.steps`` is 0 or ``pretrain.checkpoint`` is given."""
    pretrain = cfg.pretrain.steps > 0 and cfg.pretrain.checkpoint is None
    pre = resolve_task_list(cfg.pretrain.tasks, "pretrain.tasks") if pretrain else []
    seq = resolve_task_list(cfg.sequence.tasks, "sequence.tasks")
    if cfg.sequence.method not in METHODS:
        raise ConfigError(f"sequence.method: {cfg.sequence.method!r} is not allowed; allowed: {', '.join(METHODS)}")
    tasks, out = list(dict.fromkeys(pre + seq)), Path(cfg.data.out_dir)
    how = (f"DMC data comes from trained agents: `scripts/train_sac_state.sh` (all 16 DMC tasks), or per task "
           f"`plasticrl train configs/train/sac_state.yaml --set env.id=ID` then `plasticrl collect --runs RUNS --out {out}` "
           f"(or `plasticrl collect --tasks ID --checkpoint RUN/checkpoints/final.zip --out {out}`)")
    no_id = [t for t in tasks if t.startswith("dmc:") and t not in cfg.data.dataset_ids]
    if no_id:
        raise ConfigError(f"data.dataset_ids: no dataset id for {', '.join(no_id)}: DMC tasks have no scripted "
                          f"policy. {how}; then give each printed id in data.dataset_ids")
    absent = [f"{t}: {cfg.data.dataset_ids[t]}" for t in tasks
              if t in cfg.data.dataset_ids and not (out / cfg.data.dataset_ids[t]).exists()]
    if absent:
        raise ConfigError(f"data.dataset_ids: not found under {out}: {'; '.join(absent)}. {how}")
    load_reference_curves(cfg, seq)
    if cfg.pretrain.checkpoint is not None:
        load_pretrained(cfg)
    if cfg.sequence.method == "l2m_oracle" and cfg.pool.pool_size < len(seq) * cfg.pool.top_k:
        raise ConfigError(f"pool.pool_size: {cfg.pool.pool_size} is too small for l2m_oracle; need at least "
                          f"{len(seq)} tasks x top_k {cfg.pool.top_k} = {len(seq) * cfg.pool.top_k} entries")
    return pre, seq


def ensure_datasets(cfg: Any, tasks: list[str]) -> dict[str, str]:
    """Dataset id per task: ``data.dataset_ids`` entries, else scripted Meta-World data, collected if missing (in
    parallel processes, ``min(missing, os.cpu_count())`` of them, when several are missing)."""


    out, ids, missing = Path(cfg.data.out_dir), {}, []
    for env_id in dict.fromkeys(tasks):
        if env_id in cfg.data.dataset_ids:
            ids[env_id] = cfg.data.dataset_ids[env_id]
            if not (out / ids[env_id]).exists():
                raise ConfigError(f"data.dataset_ids: {ids[env_id]!r} ({env_id}) not found under {out}")
            continue
        ids[env_id] = scripted_dataset_id(env_id, cfg.data.noise_std)
        if not (out / ids[env_id]).exists():
            missing.append(env_id)
    args = [(env_id, cfg.data.episodes_per_task, cfg.data.noise_std, cfg.run.seed, out) for env_id in missing]
    workers = min(len(missing), os.cpu_count() or 1)
    if workers > 1:
        print(f"collecting {len(missing)} scripted datasets with {workers} processes into {out}", flush=True)
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for future in [pool.submit(collect_scripted, *a) for a in args]:
                future.result()  # re-raises a worker's error
    else:
        for a in args:
            collect_scripted(*a)
    return ids


def load_episodes(out_dir: str | Path, dataset_id: str) -> list[dict[str, np.ndarray]]:
    """The episodes of a Minari dataset as dicts of observations, actions, rewards (numpy)."""


    with datasets_path(out_dir):
        dataset = minari.load_dataset(dataset_id)
        return [{"observations": np.asarray(ep.observations), "actions": np.asarray(ep.actions),
                 "rewards": np.asarray(ep.rewards)} for ep in dataset.iterate_episodes()]


def _env_options(env_id: str, seed: int, max_episode_steps: int) -> dict[str, Any]:
    if env_id.startswith("metaworld:"):
        return {"seed": seed, "max_episode_steps": max_episode_steps}
    return {"pixels": False, "seed": seed}


class Evaluator:
    """Lockstep evaluation of an ``L2MAgent`` on tasks x episodes: one env per (task, episode e), built on first use
    with ``seed`` and reset with ``seed + e``, kept for later evaluations; all running envs are stepped together,
    one batched ``predict_batch`` per env step, each until its episode ends (Meta-World: truncated after
    ``max_episode_steps``; DMC: the suite's 1,000 frames; at most ``MAX_EPISODE_STEPS``). Success: ``info["success"] >= 1`` at any step (dmc has
    none: 0)."""
    def __init__(self, tasks: list[str], episodes: int, seed: int, max_episode_steps: int) -> None:
        self.tasks, self.episodes, self.seed, self.max_episode_steps = tasks, episodes, seed, max_episode_steps
        self._envs: dict[int, list[Any]] = {}

    def envs_of(self, task: int) -> list[Any]:
        """The ``episodes`` envs of task index ``task``."""
        if task not in self._envs:
            env_id = self.tasks[task]
            self._envs[task] = [envs.make(env_id, **_env_options(env_id, self.seed, self.max_episode_steps))
                                for _ in range(self.episodes)]
        return self._envs[task]

    def run(self, agent: Any, tasks: list[int], targets: list[float],
            select: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """(success rate, mean return), each (len(tasks),), of ``agent`` on the task indices ``tasks``; ``targets``
        the target return per task (reward units). ``select(states, task_indices)`` -> context manager (see
        ``L2MAgent.predict_batch``), called with the sequence index of each row's task."""
        rows = [(k, e, env) for k, j in enumerate(tasks) for e, env in enumerate(self.envs_of(j))]
        n, width = len(rows), agent.config.state_dim
        task_of_row = np.array([tasks[k] for k, _, _ in rows])
        dims = [int(np.prod(env.action_space.shape)) for _, _, env in rows]
        batch = agent.new_episodes([targets[k] for k, _, _ in rows], dims)
        obs = np.zeros((n, width), np.float32)
        for r, (_, e, env) in enumerate(rows):
            o = np.asarray(env.reset(seed=self.seed + e)[0], np.float32).reshape(-1)
            obs[r, : o.size] = o
        rewards, returns, success = np.zeros(n), np.zeros(n), np.zeros(n, bool)
        active = np.arange(n)
        wrapped = None if select is None else (lambda states, r: select(states, task_of_row[r]))
        for _ in range(MAX_EPISODE_STEPS):
            if active.size == 0:
                break
            actions = agent.predict_batch(batch, obs[active], rewards[active], rows=active, select=wrapped)
            still = []
            for a, r in zip(actions, active):
                o, reward, terminated, truncated, info = rows[r][2].step(a[: dims[r]])
                o = np.asarray(o, np.float32).reshape(-1)
                obs[r] = 0.0
                obs[r, : o.size] = o
                rewards[r] = reward
                returns[r] += float(reward)
                success[r] |= float(info.get("success", 0.0)) >= 1.0
                if not (terminated or truncated):
                    still.append(r)
            active = np.asarray(still, dtype=np.int64)
        per_task = np.array([k for k, _, _ in rows])
        return (np.array([success[per_task == k].mean() for k in range(len(tasks))]),
                np.array([returns[per_task == k].mean() for k in range(len(tasks))]))

    def close(self) -> None:
        for task_envs in self._envs.values():
            for env in task_envs:
                env.close()
        self._envs = {}


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


MAX_EPISODE_STEPS = 10_000  # a hard cap on any episode the runner plays (an env without a time limit ends here)


def score_kinds(seq_tasks: list[str]) -> list[str]:
    """How each task is scored: "data-normalised return" for DMC tasks (no success signal), else "success rate"."""
    return ["data-normalised return" if t.startswith("dmc:") else "success rate" for t in seq_tasks]


def _play_episode(env: Any, act: Any) -> tuple[float, int]:
    """Steps ``env`` (already reset) with ``act()`` until its episode ends (or ``MAX_EPISODE_STEPS``): (return in
    reward units, steps)."""
    total, steps = 0.0, 0
    for steps in range(1, MAX_EPISODE_STEPS + 1):
        _, reward, terminated, truncated, _ = env.step(act())
        total += float(reward)
        if terminated or truncated:
            break
    return total, steps


def random_return(env: Any, episodes: int, seed: int) -> float:
    """Mean return (reward units) of uniform random actions on ``env`` over ``episodes`` episodes, episode ``e``
    reset with ``seed + e`` and its actions drawn from ``action_space`` seeded with ``seed + e``: the 0 of
    ``data_normalized_score``."""
    total = 0.0
    for e in range(episodes):
        env.reset(seed=seed + e)
        env.action_space.seed(seed + e)
        total += _play_episode(env, env.action_space.sample)[0]
    return total / episodes


def check_dmc_episodes(env_id: str, episodes: list[dict[str, np.ndarray]], env: Any) -> None:
    """ConfigError unless the dataset's episodes of DMC task ``env_id`` are as long as an episode of ``env`` (the
    evaluation env, action repeat 2): data recorded at another action repeat would be scored against other
    dynamics."""
    env.reset(seed=0)
    _, steps = _play_episode(env, lambda: np.zeros(env.action_space.shape, np.float32))
    lengths = sorted({len(ep["actions"]) for ep in episodes})
    if lengths != [steps]:
        raise ConfigError(
            f"{env_id}: dataset episodes have {lengths} steps, but the continual runner evaluates DMC at action "
            f"repeat 2 ({steps} steps per episode); collect from agents trained with env.action_repeat=2 (as "
            "configs/train/sac_state.yaml does)")


def dmc_references(cfg: Any, seq_tasks: list[str], dataset_ids: dict[str, str]) -> dict[int, dict[str, float]]:
    """For every DMC task of the sequence (index j): {"random": mean return of seeded uniform random actions over
    ``eval_episodes`` episodes, "data": its dataset's mean episode return}, the references of
    ``data_normalized_score``. ConfigError if the data was recorded at another action repeat or does not beat the
    random policy. Run before anything is written."""
    refs = {}
    for j, (env_id, kind) in enumerate(zip(seq_tasks, score_kinds(seq_tasks))):
        if kind == "success rate":
            continue
        env = envs.make(env_id, **_env_options(env_id, cfg.run.seed, cfg.sequence.max_episode_steps))
        try:
            episodes = load_episodes(cfg.data.out_dir, dataset_ids[env_id])
            check_dmc_episodes(env_id, episodes, env)
            refs[j] = {"random": random_return(env, cfg.sequence.eval_episodes, cfg.run.seed + 50_000),
                       "data": float(np.mean([np.sum(ep["rewards"]) for ep in episodes]))}
        finally:
            env.close()
        if not refs[j]["data"] > refs[j]["random"]:
            raise ConfigError(f"{env_id}: the dataset's mean return {refs[j]['data']:.1f} does not exceed a random "
                              f"policy's {refs[j]['random']:.1f}, so its data-normalised score is undefined: collect "
                              "from a trained agent")
    return refs


def run_sequence(cfg: Any, out_dir: str | Path | None = None) -> Path:
    """Runs one continual-learning experiment from a validated ``ContinualConfig``; returns its run folder.

    Data (scripted Meta-World datasets, collected if missing) -> pre-training of an ``agents.l2m.L2MAgent`` on
    ``pretrain.tasks`` (or its weights from ``pretrain.checkpoint``) -> ``sequence.steps_per_task`` gradient steps
    per task with ``sequence.method``:

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
      during the last task: {"fisher", "anchor", "tasks", "lambda"};
    * ``reference``: per task, from the pre-trained weights (fresh optimizer), ``finetune`` on that task alone,
      evaluating only it at the same points; writes ``reference_curves.json`` (for ``sequence.reference_curves``)
      and summary.json, no success matrix.

    Every ``eval_every`` steps (every task of the sequence, or with ``eval_scope: current`` only the task in
    training) and at the end of each task (every task), tasks are evaluated in lockstep (``Evaluator``;
    task-agnostic selection, ``pool.eval()``). ``out_dir`` overrides ``run.out_dir``. Writes
    config.yaml, metrics.jsonl, success_matrix.json, plots/success_matrix.png, summary.json and
    checkpoints/{pretrained,final}.pt (+ pool.pt for the pool methods, ewc.pt for ewc)."""



    pre_tasks, seq_tasks = check_continual(cfg)
    ref_curves = load_reference_curves(cfg, seq_tasks)
    device = resolve_device(cfg.run.device)
    seq_cfg, method, n = cfg.sequence, cfg.sequence.method, len(seq_tasks)
    dataset_ids = ensure_datasets(cfg, pre_tasks + seq_tasks)
    dmc_refs = dmc_references(cfg, seq_tasks, dataset_ids)  # DMC tasks: scored by data-normalised return
    kinds = score_kinds(seq_tasks)

    run_dir = make_run_dir(out_dir or cfg.run.out_dir, cfg.run.name, cfg.run.seed)
    (run_dir / "config.yaml").write_text(dump(cfg))
    logger = RunLogger(run_dir, cfg.model_dump(mode="json"),
                       wandb_settings(cfg.logging.wandb, cfg.run.name, cfg.run.seed, ["continual", method]))
    print(f"run folder: {run_dir}  (device {device}, method {method})", flush=True)
    evaluator = Evaluator(seq_tasks, seq_cfg.eval_episodes, cfg.run.seed, seq_cfg.max_episode_steps)
    try:
        episodes = {t: load_episodes(cfg.data.out_dir, dataset_ids[t]) for t in dict.fromkeys(pre_tasks + seq_tasks)}
        target = [max(float(np.sum(ep["rewards"])) for ep in episodes[t]) for t in seq_tasks]
        agent = L2MAgent(dt_config(cfg), device=device, precision=cfg.model.precision,
                         cuda_graph=cfg.model.cuda_graph,
                         learning_rate=cfg.pretrain.learning_rate,
                         batch_size=cfg.pretrain.batch_size, seed=cfg.run.seed)
        model = agent.model
        step = 0  # global gradient step, the x-axis of metrics.jsonl

        # ---- pre-training (or its checkpoint) -------------------------------------------
        started = time.time()
        if cfg.pretrain.checkpoint is not None:
            saved = load_pretrained(cfg)
            model.load_state_dict(saved["model"])
            agent.num_steps = saved["num_steps"]
            print(f"pre-trained weights from {cfg.pretrain.checkpoint} ({saved['num_steps']} steps)", flush=True)
        elif pre_tasks:
            data = agent.prepare_episodes([ep for t in pre_tasks for ep in episodes[t]])
            total, last_i, last_t = cfg.pretrain.steps, 0, time.time()
            print_every = max(1, total // 20)
            for i in range(total):
                loss = agent.train_step(agent.sample_batch(data))
                if i % 100 == 0 or (i + 1) % print_every == 0 or i == total - 1:
                    loss_value, now = loss.item(), time.time()  # .item() waits for the device: honest timing
                    rate = (i + 1 - last_i) / max(now - last_t, 1e-9)
                    last_i, last_t = i + 1, now
                    logger.log({"pretrain/loss": loss_value, "pretrain/steps_per_s": rate}, i)
                    if (i + 1) % print_every == 0 or i == total - 1:
                        print(f"pretrain {i + 1}/{total}  loss {loss_value:.4f}  {rate:.1f} steps/s  "
                              f"{now - started:.0f} s", flush=True)
            step = total
            del data
            agent.release_graphs()
            print(f"pre-trained {total} steps on {len(pre_tasks)} tasks", flush=True)
        pretrain_wall = time.time() - started
        model.eval()
        agent.save(run_dir / "checkpoints" / "pretrained.pt")
        print(f"saved {run_dir / 'checkpoints' / 'pretrained.pt'}", flush=True)
        pretrained_state = {k: v.detach().clone() for k, v in model.state_dict().items()}

        # ---- the method ----------------------------------------------------------------
        pool = None
        ewc_fisher_sum: dict[str, Any] = {}  # method ewc: summed Fisher of the finished tasks, and their anchor
        ewc_anchor: dict[str, Any] = {}
        ewc_tasks = 0
        if method not in ("finetune", "ewc", "reference"):
            p = cfg.pool
            lora = method == "lora"
            pool = ModulationPool(pool_size=1 if lora else p.pool_size, key_dim=cfg.model.d_model, rank=p.rank,
                                  kind=p.kind, top_k=1 if lora else p.top_k, pull_coef=p.pull_coef,
                                  count_penalty=False if lora else p.count_penalty).to(agent.device)
            pool.attach(model)
            pool.freeze_backbone(model)
        oracle = method == "l2m_oracle"
        monitor = PlasticityMonitor({"dt": model, **({} if pool is None else {"pool": pool})})
        probe_batches: dict[int, tuple[Any, ...]] = {}  # task index -> its fixed probe batch

        def probe(i: int) -> dict[str, float]:
            """Plasticity metrics of the DT (as it acts: with the pool's selection) and of the pool on task i's
            fixed probe batch; the pool's usage (entries picked so far)."""
            if i not in probe_batches:
                return {}
            states, actions, rtg, timesteps, mask = probe_batches[i]

            def forward() -> Any:
                if pool is None:
                    return model(states, actions, rtg, timesteps, mask)
                idx = pool.select(model.query_embedding(states), i, oracle=oracle, evaluate=True)
                with pool.selected(idx):
                    return model(states, actions, rtg, timesteps, mask)

            out = monitor.probe(forward)
            if pool is not None:
                out["pool/entries_used"] = int(((pool.counts + pool.task_counts) > 0).sum())
            return out

        def select(states: Any, task_indices: np.ndarray) -> Any:
            query = model.query_embedding(states)
            return pool.selected(pool.select(query, torch.as_tensor(task_indices), oracle=oracle, evaluate=True))

        perf = np.full((n, n), np.nan)  # rows filled as tasks end
        columns = ["after task", *[f"{j}-{t}" for j, t in enumerate(seq_tasks)]]
        eval_wall = 0.0

        def evaluate(stage: int, tasks: list[int]) -> np.ndarray:
            """Scores (len(tasks),) of the task indices ``tasks``, logged; for the sequence methods also the
            success matrix so far (finished rows + this evaluation as row ``stage``) as a W&B table and heatmap."""
            nonlocal eval_wall
            began = time.time()
            if pool is not None:
                pool.eval()
            model.eval()
            successes, returns = evaluator.run(agent, tasks, [target[j] for j in tasks],
                                               None if pool is None else select)
            scores = np.array([float(data_normalized_score(ret, dmc_refs[j]["random"], dmc_refs[j]["data"]))
                               if j in dmc_refs else float(success) for j, success, ret in zip(tasks, successes, returns)])
            record: dict[str, float] = {}
            for j, success, ret, score in zip(tasks, successes, returns, scores):
                record[f"eval/{j}-{seq_tasks[j]}/success"] = float(success)
                record[f"eval/{j}-{seq_tasks[j]}/return"] = float(ret)
                record[f"eval/{j}-{seq_tasks[j]}/score"] = float(score)
            record.update({"eval/stage": stage, "eval/n_tasks": len(tasks), **probe(stage)})
            if len(tasks) == n:  # means over the whole sequence only (eval_scope=current evaluates one task)
                record["eval/mean_score"] = float(scores.mean())
                with_success = [k for k, j in enumerate(tasks) if j not in dmc_refs]
                if with_success:
                    record["eval/mean_success"] = float(np.mean(successes[with_success]))
            record["eval/wall_s"] = time.time() - began
            logger.log(record, step)
            if method != "reference" and logger.wandb is not None and len(tasks) == n:
                so_far = perf[: stage + 1].copy()
                so_far[stage] = scores
                logger.log_table("eval/success_matrix", columns,
                                 [[f"{i}-{seq_tasks[i]}", *map(float, row)] for i, row in enumerate(so_far)], step)
                shown = np.full((n, n), np.nan)
                shown[: stage + 1] = so_far
                plot_success_matrix(shown, seq_tasks, run_dir / "plots" / "success_matrix.png")
                logger.log_image("eval/success_matrix_plot", run_dir / "plots" / "success_matrix.png", step)
            eval_wall += time.time() - began
            return scores

        def train_task(i: int, eval_tasks: list[int]) -> list[float]:
            """``steps_per_task`` steps on task ``i`` (fresh optimizer); returns task i's curve at the eval points
            and fills ``perf[i]`` with the last evaluation (sequence methods)."""
            nonlocal step, ewc_anchor, ewc_tasks
            data = agent.prepare_episodes(episodes[seq_tasks[i]])
            if seq_cfg.probe_batch_size:  # fixed for the task, drawn apart from the training batches
                g = torch.Generator(device=agent.device).manual_seed(cfg.run.seed * 1_000 + i)
                probe_batches[i] = agent.sample_batch(data, seq_cfg.probe_batch_size, generator=g)
            params = [q for q in (model.parameters() if pool is None else pool.parameters()) if q.requires_grad]
            optimizer = agent.make_optimizer(params, seq_cfg.learning_rate,
                                             agent.weight_decay if pool is None else 0.0)
            ewc_on = method == "ewc" and bool(ewc_fisher_sum)
            names = ["train/loss", "train/key_loss"] + (["train/dt_loss", "train/ewc_penalty"] if ewc_on else [])

            def gradient_step(batch: tuple[Any, ...]) -> Any:
                """One optimizer step on ``batch``; returns the ``names`` values as one device vector."""
                states, actions, rtg, timesteps, mask = batch
                extra = []
                if pool is None:
                    loss = key_loss = model.loss(states, actions, rtg, timesteps, mask)
                    if ewc_on:
                        penalty = ewc_penalty(model, ewc_fisher_sum, ewc_anchor, seq_cfg.ewc_lambda)
                        extra = [loss, penalty]
                        loss = key_loss = loss + penalty
                else:
                    query = model.query_embedding(states)
                    idx = pool.select(query, i, oracle=oracle)
                    with pool.selected(idx):
                        dt_loss = model.loss(states, actions, rtg, timesteps, mask)
                    key_loss = pool.key_loss(query, idx)
                    loss = dt_loss + key_loss
                agent.optimizer_step(loss, optimizer, params)
                return torch.stack([v.detach().float() for v in (loss, key_loss, *extra)])

            # on CUDA one graph per task (its optimizer, task index and EWC terms are baked in)
            run_step = GraphedUpdate(gradient_step) if agent.uses_graphs else gradient_step
            curve = []
            for k in range(seq_cfg.steps_per_task):
                model.train()
                if pool is not None:
                    pool.train()
                values = run_step(agent.sample_batch(data, seq_cfg.batch_size))
                step += 1
                if k % 100 == 0 or k == seq_cfg.steps_per_task - 1:
                    logger.log({**dict(zip(names, values.tolist())), "train/task": i}, step)
                last = k == seq_cfg.steps_per_task - 1
                if last or (seq_cfg.eval_every and (k + 1) % seq_cfg.eval_every == 0):
                    tasks = eval_tasks if last or seq_cfg.eval_scope == "all" else [i]
                    scores = evaluate(i, tasks)
                    curve.append(float(scores[tasks.index(i)]))
                    if last and method != "reference":
                        perf[i] = scores
            if pool is not None:
                pool.end_task()
            if method == "ewc" and i < n - 1:  # the last task's Fisher would only serve a later task
                model.eval()
                fisher = ewc_fisher(model, [agent.sample_batch(data, seq_cfg.batch_size)
                                            for _ in range(seq_cfg.ewc_fisher_batches)],
                                    lambda mdl, batch: mdl.loss(*batch))
                for name, f in fisher.items():
                    ewc_fisher_sum[name] = ewc_fisher_sum[name] + f if name in ewc_fisher_sum else f
                ewc_anchor = {name: q.detach().clone() for name, q in model.named_parameters() if q.requires_grad}
                ewc_tasks = i + 1
            return curve

        # ---- the sequence --------------------------------------------------------------
        seq_started = time.time()
        curves: list[list[float]] = []
        for i, env_id in enumerate(seq_tasks):
            began, eval_before = time.time(), eval_wall
            if method == "reference":
                model.load_state_dict(pretrained_state)
            curves.append(train_task(i, [i] if method == "reference" else list(range(n))))
            wall, evals = time.time() - began, eval_wall - eval_before
            logger.log({"task/wall_s": wall, "task/train_wall_s": wall - evals, "task/eval_wall_s": evals,
                        "task/index": i}, step)
            done = f"final score {curves[-1][-1]:.2f}" if method == "reference" else \
                f"score {perf[i, i]:.2f}  mean over tasks {perf[i].mean():.2f}"
            print(f"task {i} {env_id}: {done}  ({wall:.0f} s: train {wall - evals:.0f} s, eval {evals:.0f} s)",
                  flush=True)
        sequence_wall = time.time() - seq_started

        # ---- save and score ------------------------------------------------------------
        walls = {"pretrain_wall_s": pretrain_wall, "sequence_wall_s": sequence_wall, "eval_wall_s": eval_wall}
        if method == "reference":
            (run_dir / "reference_curves.json").write_text(json.dumps(
                {"tasks": seq_tasks, "curves": curves, "steps_per_task": seq_cfg.steps_per_task,
                 "eval_every": seq_cfg.eval_every, "eval_episodes": seq_cfg.eval_episodes,
                 "score_per_task": kinds}, indent=2))
            summary: dict[str, Any] = {"method": method, "tasks": seq_tasks,
                                       "reference_auc_per_task": [float(np.mean(c)) for c in curves],
                                       "final_score_per_task": [c[-1] for c in curves],
                                       "score_per_task": kinds, **walls}
            (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
            torch.save(model.state_dict(), run_dir / "checkpoints" / "final.pt")
            logger.log({f"summary/{k}": v for k, v in walls.items()}, step)
            print(f"reference curves -> {run_dir / 'reference_curves.json'}", flush=True)
            return run_dir
        if pool is not None:
            pool.detach()
            torch.save(pool.state_dict(), run_dir / "checkpoints" / "pool.pt")
        torch.save(model.state_dict(), run_dir / "checkpoints" / "final.pt")
        if method == "ewc":
            torch.save({"fisher": ewc_fisher_sum, "anchor": ewc_anchor, "tasks": ewc_tasks,
                        "lambda": seq_cfg.ewc_lambda}, run_dir / "checkpoints" / "ewc.pt")
        summary = {
            "method": method, "tasks": seq_tasks, "average_performance": average_performance(perf),
            "forgetting": _finite(forgetting(perf)),
            "average_performance_per_task": average_performance_per_task(perf).tolist(),
            "forgetting_per_task": forgetting_per_task(perf).tolist(), **walls,
            "score_per_task": kinds,
            "dmc_reference_returns": {seq_tasks[j]: refs for j, refs in dmc_refs.items()},
        }
        if ref_curves is not None:
            summary.update(forward_transfer_summary(curves, ref_curves, kinds))
        else:
            summary["forward_transfer"] = None
            summary["forward_transfer_note"] = "skipped: no sequence.reference_curves given"
        (run_dir / "success_matrix.json").write_text(json.dumps(
            {"tasks": seq_tasks, "perf": perf.tolist(), "curves": curves}, indent=2))
        plot_success_matrix(perf, seq_tasks, run_dir / "plots" / "success_matrix.png")
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        logger.log({f"summary/{k}": v for k, v in summary.items() if isinstance(v, float)}, step)
    finally:
        evaluator.close()
        logger.close()
    print(f"average performance {summary['average_performance']:.3f}  forgetting {summary['forgetting']}  "
          f"forward transfer {summary['forward_transfer']}  -> {run_dir}", flush=True)
    return run_dir
