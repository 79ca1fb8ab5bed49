"""One continual-learning run (``plasticrl continual CONFIG``): data, pre-training of an ``L2MAgent`` (or its
checkpoint), ``sequence.steps_per_task`` gradient steps per task with a method of ``methods``, evaluations, the
run folder and Continual World's scores."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from plasticrl.agents.l2m import L2MAgent
from plasticrl.continual_metrics import (
    average_performance,
    average_performance_per_task,
    forgetting,
    forgetting_per_task,
    forward_transfer_summary,
)
from plasticrl.lab.config.base import dump, wandb_settings
from plasticrl.lab.continual.checks import check_inputs, dt_config
from plasticrl.lab.continual.data import best_return, dmc_references, ensure_datasets, load_episodes
from plasticrl.lab.continual.evaluation import Evaluator, eval_seeds, return_scale, score_kinds, task_scores
from plasticrl.lab.continual.methods import Batch, Method, make_method
from plasticrl.lab.plots import plot_success_matrix
from plasticrl.lab.runtime import configure_torch, resolve_device
from plasticrl.monitor import PlasticityMonitor
from plasticrl.runlog import RunLogger, make_run_dir

LOG_EVERY = 100  # gradient steps between training records in metrics.jsonl


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


class PretrainProgress:
    """``L2MAgent.learn``'s callback during pre-training: every ``LOG_EVERY`` steps a record of ``pretrain/loss``,
    ``pretrain/steps_per_s`` (steps since the last record / seconds) and ``pretrain/lr`` (the step's learning rate,
    ``lr_at(step)``), and a printed line every 1/20 of the steps and at the last one."""

    def __init__(self, logger: RunLogger, total: int, started: float, lr_at: Callable[[int], float]) -> None:
        self.logger, self.total, self.started, self.lr_at = logger, total, started, lr_at
        self.print_every = max(1, total // 20)
        self.last_step, self.last_time = 0, time.time()

    def due(self, i: int) -> bool:
        """Whether step ``i`` (0-based) is reported (the loss is read then: a host sync)."""
        return i % LOG_EVERY == 0 or self.printed(i)

    def printed(self, i: int) -> bool:
        return (i + 1) % self.print_every == 0 or i == self.total - 1

    def __call__(self, i: int, loss: float) -> None:
        now = time.time()  # after the loss was read, which waits for the device: honest timing
        rate = (i + 1 - self.last_step) / max(now - self.last_time, 1e-9)
        self.last_step, self.last_time = i + 1, now
        self.logger.log({"pretrain/loss": loss, "pretrain/steps_per_s": rate, "pretrain/lr": self.lr_at(i)}, i)
        if self.printed(i):
            print(f"pretrain {i + 1}/{self.total}  loss {loss:.4f}  {rate:.1f} steps/s  {now - self.started:.0f} s",
                  flush=True)


class ContinualRun:
    """A continual-learning experiment from a validated ``ContinualConfig``; see ``run_sequence``.

    Building one checks the config against the files and registries, gets the datasets (collected if missing) and
    the DMC references: everything that can fail before the run folder exists. ``run()`` does the rest."""

    def __init__(self, cfg: Any, out_dir: str | Path | None = None) -> None:
        self.cfg, self.seq = cfg, cfg.sequence
        self.inputs = check_inputs(cfg)
        self.device = resolve_device(cfg.run.device)
        self.tasks = self.inputs.sequence_tasks
        self.n = len(self.tasks)
        self.dataset_ids = ensure_datasets(cfg, self.inputs.pretrain_tasks + self.tasks)
        self.dmc_refs = dmc_references(cfg, self.tasks, self.dataset_ids)  # DMC tasks: data-normalised return
        self.kinds = score_kinds(self.tasks)
        self.out_dir = out_dir or cfg.run.out_dir
        self.step = 0  # global gradient step, the x-axis of metrics.jsonl
        self.perf = np.full((self.n, self.n), np.nan)  # rows filled as tasks end (sequence methods)
        self.curves: list[list[float]] = []  # per task, its score at its own evaluation points
        self.probe_batches: dict[int, Batch] = {}  # task index -> its fixed probe batch
        self.pretrain_wall = self.sequence_wall = self.eval_wall = 0.0

    # ---- the run ---------------------------------------------------------------------
    def run(self) -> Path:
        """Runs the experiment; returns its run folder."""
        cfg, method_name = self.cfg, self.seq.method
        configure_torch(self.device)  # the lab's process-wide torch flags (TF32 matmuls on CUDA), as `plasticrl train`
        self.run_dir = make_run_dir(self.out_dir, cfg.run.name, cfg.run.seed)
        (self.run_dir / "config.yaml").write_text(dump(cfg))
        wandb = wandb_settings(cfg.logging.wandb, cfg.run.name, cfg.run.seed, ["continual", method_name])
        self.logger = RunLogger(self.run_dir, cfg.model_dump(mode="json"), wandb)
        print(f"run folder: {self.run_dir}  (device {self.device}, method {method_name})", flush=True)
        self.evaluator = Evaluator(self.tasks, eval_seeds(cfg.run.seed, self.seq.eval_episodes),
                                   self.seq.max_episode_steps, deterministic=self.seq.eval_deterministic,
                                   sample_seed=cfg.run.seed)
        try:
            self.episodes = {t: load_episodes(cfg.data.out_dir, self.dataset_ids[t])
                             for t in dict.fromkeys(self.inputs.pretrain_tasks + self.tasks)}
            self.targets = [best_return(self.episodes[t]) for t in self.tasks]
            torch.manual_seed(cfg.run.seed)  # dropout masks and the pool's keys draw from torch's global generator
            self.agent = self.pretrained_agent()
            self.method: Method = make_method(method_name, self.agent, cfg, self.n)
            modules = self.method.modules()  # the pool's modulators are linear by design
            self.monitor = PlasticityMonitor(modules, linear_groups=[g for g in modules if g == "pool"])
            self.train_sequence()
            summary = self.save_reference() if self.method.isolated_tasks else self.save_sequence()
        finally:
            self.evaluator.close()
            self.logger.close()
        if not self.method.isolated_tasks:
            print(f"average performance {summary['average_performance']:.3f}  forgetting {summary['forgetting']}  "
                  f"forward transfer {summary['forward_transfer']}  -> {self.run_dir}", flush=True)
        return self.run_dir

    # ---- pre-training ------------------------------------------------------------------
    def pretrained_agent(self) -> L2MAgent:
        """The agent after pre-training on ``pretrain.tasks`` (or from ``pretrain.checkpoint``), saved as
        checkpoints/pretrained.pt."""
        cfg, started = self.cfg, time.time()
        hparams = {"precision": cfg.model.precision, "cuda_graph": cfg.model.cuda_graph, "seed": cfg.run.seed,
                   "learning_rate": cfg.pretrain.learning_rate, "batch_size": cfg.pretrain.batch_size}
        if self.inputs.pretrained is not None:  # the checkpoint keeps the schedule it was pre-trained with
            agent = L2MAgent.from_checkpoint(self.inputs.pretrained, self.device, **hparams)
            print(f"pre-trained weights from {cfg.pretrain.checkpoint} ({agent.num_steps} steps)", flush=True)
        else:
            if self.inputs.pretrain_tasks and cfg.pretrain.steps:  # L2M's warmup and schedule over the run
                hparams.update(lr_schedule=cfg.pretrain.lr_schedule, warmup_steps=cfg.pretrain.warmup_steps,
                               schedule_steps=cfg.pretrain.steps, min_learning_rate=cfg.pretrain.min_learning_rate)
            agent = L2MAgent(dt_config(cfg), device=self.device, **hparams)
            if self.inputs.pretrain_tasks:
                self.pretrain(agent, started)
        self.pretrain_wall = time.time() - started
        agent.model.eval()
        path = self.run_dir / "checkpoints" / "pretrained.pt"
        agent.save(path)
        print(f"saved {path}", flush=True)
        return agent

    def pretrain(self, agent: L2MAgent, started: float) -> None:
        """``pretrain.steps`` steps of ``agent.learn`` on the episodes of every pre-training task (returns-to-go
        scaled per domain)."""
        tasks, total = self.inputs.pretrain_tasks, self.cfg.pretrain.steps
        data = agent.prepare_episodes([ep for t in tasks for ep in self.episodes[t]],
                                      [return_scale(t) for t in tasks for _ in self.episodes[t]])
        progress = PretrainProgress(self.logger, total, started, agent.lr_at)
        agent.learn(data, total, callback=progress, callback_steps=progress.due)
        self.step = total
        del data
        agent.release_graphs()
        print(f"pre-trained {total} steps on {len(tasks)} tasks", flush=True)

    # ---- the sequence ------------------------------------------------------------------
    def train_sequence(self) -> None:
        """Every task in turn (``train_task``), with its wall time logged and printed. One optimizer serves the whole
        sequence (L2M's ``reset_optim_on_switch=False``); a method with ``isolated_tasks`` gets a fresh one per
        task."""
        seq_started = time.time()
        self.optimizer = self.make_optimizer()
        for i, env_id in enumerate(self.tasks):
            began, eval_before = time.time(), self.eval_wall
            self.method.start_task(i)
            if self.method.isolated_tasks and i > 0:
                self.optimizer = self.make_optimizer()
            self.curves.append(self.train_task(i, [i] if self.method.isolated_tasks else list(range(self.n))))
            wall, evals = time.time() - began, self.eval_wall - eval_before
            self.logger.log({"task/wall_s": wall, "task/train_wall_s": wall - evals, "task/eval_wall_s": evals,
                             "task/index": i}, self.step)
            done = f"final score {self.curves[-1][-1]:.2f}" if self.method.isolated_tasks else \
                f"score {self.perf[i, i]:.2f}  mean over tasks {self.perf[i].mean():.2f}"
            print(f"task {i} {env_id}: {done}  ({wall:.0f} s: train {wall - evals:.0f} s, eval {evals:.0f} s)",
                  flush=True)
        self.sequence_wall = time.time() - seq_started

    def make_optimizer(self) -> torch.optim.Optimizer:
        """AdamW over the method's trainable parameters (``sequence.learning_rate``, constant; the method's weight
        decay on the DT's Linear weights, none on the rest, as L2M's ``get_optim_groups``)."""
        return self.agent.make_optimizer(self.method.trainable(), self.seq.learning_rate, self.method.weight_decay)

    def train_task(self, i: int, eval_tasks: list[int]) -> list[float]:
        """``steps_per_task`` steps on task ``i`` with ``self.optimizer``; returns task i's curve at the eval points
        and fills ``perf[i]`` with the last evaluation (sequence methods)."""
        agent, method, seq = self.agent, self.method, self.seq
        env_id = self.tasks[i]
        data = agent.prepare_episodes(self.episodes[env_id], return_scale(env_id))
        if seq.probe_batch_size:  # fixed for the task, drawn apart from the training batches
            g = torch.Generator(device=agent.device).manual_seed(self.cfg.run.seed * 1_000 + i)
            self.probe_batches[i] = agent.sample_batch(data, seq.probe_batch_size, generator=g)
        params = method.trainable()
        names = method.stat_names()
        # on CUDA one graph per task (its task index and EWC terms are baked in), all stepping the one optimizer
        update = agent.make_update(lambda batch: method.loss(batch, i), self.optimizer, params)
        curve = []
        for k in range(seq.steps_per_task):
            method.train()
            values = update(agent.sample_batch(data, seq.batch_size))
            self.step += 1
            last = k == seq.steps_per_task - 1
            if k % LOG_EVERY == 0 or last:
                self.logger.log({**dict(zip(names, values.tolist())), "train/task": i}, self.step)
            if last or (seq.eval_every and (k + 1) % seq.eval_every == 0):
                tasks = eval_tasks if last or seq.eval_scope == "all" else [i]
                scores = self.evaluate(i, tasks)
                curve.append(float(scores[tasks.index(i)]))
                if last and not method.isolated_tasks:
                    self.perf[i] = scores
        method.end_task(i, data)
        return curve

    # ---- evaluation --------------------------------------------------------------------
    def evaluate(self, stage: int, tasks: list[int]) -> np.ndarray:
        """Scores (len(tasks),) of the task indices ``tasks``, logged with the plasticity probe of task ``stage``;
        for the sequence methods also the success matrix so far as a W&B table and heatmap."""
        began = time.time()
        self.method.eval()
        successes, returns = self.evaluator.run(self.agent, tasks, [self.targets[j] for j in tasks],
                                                self.method.select())
        scores = task_scores(tasks, successes, returns, self.dmc_refs)
        record: dict[str, float] = {}
        for j, success, ret, score in zip(tasks, successes, returns, scores):
            record[f"eval/{j}-{self.tasks[j]}/success"] = float(success)
            record[f"eval/{j}-{self.tasks[j]}/return"] = float(ret)
            record[f"eval/{j}-{self.tasks[j]}/score"] = float(score)
        record.update({"eval/stage": stage, "eval/n_tasks": len(tasks), **self.probe(stage)})
        if len(tasks) == self.n:  # means over the whole sequence only (eval_scope=current evaluates one task)
            record["eval/mean_score"] = float(scores.mean())
            with_success = [k for k, j in enumerate(tasks) if j not in self.dmc_refs]
            if with_success:
                record["eval/mean_success"] = float(np.mean(successes[with_success]))
        record["eval/wall_s"] = time.time() - began
        self.logger.log(record, self.step)
        if not self.method.isolated_tasks and self.logger.wandb is not None and len(tasks) == self.n:
            self.log_matrix(stage, scores)
        self.eval_wall += time.time() - began
        return scores

    def probe(self, i: int) -> dict[str, float]:
        """Plasticity metrics of the method's networks on task i's fixed probe batch, the DT as it acts (e.g. with
        the pool's selection); none without a probe batch."""
        if i not in self.probe_batches:
            return {}
        batch = self.probe_batches[i]
        return {**self.monitor.probe(lambda: self.method.forward(batch, i)), **self.method.probe_stats()}

    def log_matrix(self, stage: int, scores: np.ndarray) -> None:
        """The success matrix so far (finished rows + ``scores`` as row ``stage``) as a W&B table and heatmap."""
        so_far = self.perf[: stage + 1].copy()
        so_far[stage] = scores
        columns = ["after task", *[f"{j}-{t}" for j, t in enumerate(self.tasks)]]
        self.logger.log_table("eval/success_matrix", columns,
                              [[f"{i}-{self.tasks[i]}", *map(float, row)] for i, row in enumerate(so_far)], self.step)
        shown = np.full((self.n, self.n), np.nan)
        shown[: stage + 1] = so_far
        plot = self.run_dir / "plots" / "success_matrix.png"
        plot_success_matrix(shown, self.tasks, plot)
        self.logger.log_image("eval/success_matrix_plot", plot, self.step)

    # ---- saving and scoring ------------------------------------------------------------
    def walls(self) -> dict[str, float]:
        return {"pretrain_wall_s": self.pretrain_wall, "sequence_wall_s": self.sequence_wall,
                "eval_wall_s": self.eval_wall}

    def save_final(self) -> None:
        """checkpoints/final.pt: the agent (``L2MAgent.save``) with the method's pool and extra state."""
        self.agent.extras.update(self.method.checkpoint_extras())
        self.agent.save(self.run_dir / "checkpoints" / "final.pt")

    def save_reference(self) -> dict[str, Any]:
        """reference_curves.json, summary.json and final.pt of a reference run; returns the summary."""
        walls = self.walls()
        (self.run_dir / "reference_curves.json").write_text(json.dumps(
            {"tasks": self.tasks, "curves": self.curves, "steps_per_task": self.seq.steps_per_task,
             "eval_every": self.seq.eval_every, "eval_episodes": self.seq.eval_episodes,
             "score_per_task": self.kinds}, indent=2))
        summary = {"method": self.seq.method, "tasks": self.tasks,
                   "reference_auc_per_task": [float(np.mean(c)) for c in self.curves],
                   "final_score_per_task": [c[-1] for c in self.curves], "score_per_task": self.kinds, **walls}
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        self.save_final()
        self.logger.log({f"summary/{k}": v for k, v in walls.items()}, self.step)
        print(f"reference curves -> {self.run_dir / 'reference_curves.json'}", flush=True)
        return summary

    def save_sequence(self) -> dict[str, Any]:
        """final.pt, success_matrix.json, plots/success_matrix.png and summary.json (Continual World's average
        performance, forgetting and, with reference curves, forward transfer); returns the summary."""
        perf = self.perf
        self.save_final()
        summary = {
            "method": self.seq.method, "tasks": self.tasks, "average_performance": average_performance(perf),
            "forgetting": _finite(forgetting(perf)),
            "average_performance_per_task": average_performance_per_task(perf).tolist(),
            "forgetting_per_task": forgetting_per_task(perf).tolist(), **self.walls(),
            "score_per_task": self.kinds,
            "dmc_reference_returns": {self.tasks[j]: refs for j, refs in self.dmc_refs.items()},
        }
        if self.inputs.reference_curves is not None:
            summary.update(forward_transfer_summary(self.curves, self.inputs.reference_curves, self.kinds))
        else:
            summary["forward_transfer"] = None
            summary["forward_transfer_note"] = "skipped: no sequence.reference_curves given"
        (self.run_dir / "success_matrix.json").write_text(json.dumps(
            {"tasks": self.tasks, "perf": perf.tolist(), "curves": self.curves}, indent=2))
        plot_success_matrix(perf, self.tasks, self.run_dir / "plots" / "success_matrix.png")
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        self.logger.log({f"summary/{k}": v for k, v in summary.items() if isinstance(v, float)}, self.step)
        return summary


def run_sequence(cfg: Any, out_dir: str | Path | None = None) -> Path:
    """Runs one continual-learning experiment from a validated ``ContinualConfig``; returns its run folder.

    Data (scripted Meta-World datasets from random_init_all starts, collected if missing, checked against their
    provenance if not) -> pre-training of an ``plasticrl.agents.l2m.L2MAgent`` on ``pretrain.tasks`` (or the agent
    of ``pretrain.checkpoint``) -> ``sequence.steps_per_task`` gradient steps per task with ``sequence.method``
    (``methods.METHODS``: l2m, l2m_oracle, lora, finetune, ewc, reference; each class there says what it does), one
    optimizer for the sequence.

    Every ``eval_every`` steps (every task of the sequence, or with ``eval_scope: current`` only the task in
    training) and at the end of each task (every task), tasks are evaluated in lockstep (``Evaluator``, from the
    held-out starts of ``eval_seeds``; task-agnostic selection, ``pool.eval()``). ``out_dir`` overrides
    ``run.out_dir``. Writes config.yaml, metrics.jsonl, success_matrix.json, plots/success_matrix.png, summary.json
    (reference: reference_curves.json and summary.json, no success matrix) and checkpoints/pretrained.pt and
    final.pt, both ``L2MAgent.save`` files (``L2MAgent.load`` reads them); final.pt also holds the pool of the pool
    methods and, for ewc, its Fisher sum and anchor in ``extras["ewc"]``."""
    return ContinualRun(cfg, out_dir).run()
