"""The continual-learning methods of ``sequence.method``, one class each, registered by name (``METHODS``).

A method owns what differs between them: the parameters it trains and their weight decay, its loss on a batch,
the context the DT acts under at evaluation (e.g. the pool's selection), and its work at the start and end of a
task. ``plasticrl.lab.continual.run.ContinualRun`` drives them all through the ``Method`` interface.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from plasticrl.agents.l2m import EpisodeData, L2MAgent
from plasticrl.lab.config.base import ConfigError
from plasticrl.modulation import ModulationPool

Batch = tuple[Tensor, ...]  # ``L2MAgent.sample_batch``'s (states, actions, rtg, timesteps, action_mask)
Select = Callable[[Tensor, Tensor, np.ndarray], Any]  # (context states, timesteps, task index per row) -> context

REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: makes ``cls`` the method named ``cls.name``."""
    REGISTRY[cls.name] = cls
    return cls


def make_method(name: str, agent: L2MAgent, cfg: Any, n_tasks: int) -> Method:
    """The method ``name`` (a key of ``REGISTRY``) on the pre-trained ``agent`` for a sequence of ``n_tasks``."""
    return REGISTRY[name](agent, cfg, n_tasks)


class Method:
    """Fine-tuning interface of one method on a pre-trained ``L2MAgent``; the base trains every DT parameter.

    ``isolated_tasks``: each task is learned alone (not a sequence), with an optimizer of its own, and only it is
    evaluated. The sequence methods keep one optimizer for the whole sequence, as L2M does
    (``reset_optim_on_switch=False``, ml-jku/L2M ``src/algos/decision_transformer_sb3.py``)."""

    name: ClassVar[str]
    isolated_tasks: ClassVar[bool] = False

    def __init__(self, agent: L2MAgent, cfg: Any, n_tasks: int) -> None:
        self.agent, self.model, self.cfg, self.n_tasks = agent, agent.model, cfg, n_tasks

    @classmethod
    def check(cls, cfg: Any, n_tasks: int) -> None:
        """ConfigError if the config does not suit this method for a sequence of ``n_tasks``."""

    def modules(self) -> dict[str, nn.Module]:
        """The networks the plasticity monitor probes, by name."""
        return {"dt": self.model}

    def trainable(self) -> list[nn.Parameter]:
        """The parameters the optimizer trains."""
        return [p for p in self.model.parameters() if p.requires_grad]

    @property
    def weight_decay(self) -> float:
        """AdamW's weight decay of the optimizer."""
        return self.agent.weight_decay

    def stat_names(self) -> list[str]:
        """metrics.jsonl keys of ``loss``'s values, in order."""
        return ["train/loss", "train/key_loss"]

    def loss(self, batch: Batch, task: int) -> tuple[Tensor, ...]:
        """(loss to minimise, *logged terms) on a training batch of task index ``task``: scalar tensors, computed
        without host syncs (the step may be a CUDA graph)."""
        loss = self.model.loss(*batch)
        return loss, loss

    def train(self) -> None:
        """Training mode of everything the method trains."""
        self.model.train()

    def eval(self) -> None:
        """Evaluation mode of everything the method acts with."""
        self.model.eval()

    def forward(self, batch: Batch, task: int) -> Tensor:
        """The DT's logits on ``batch`` as it acts on task index ``task`` (the plasticity probe's forward pass)."""
        return self.model(*batch)

    def select(self) -> Select | None:
        """The acting context of ``Evaluator.run`` (None: the plain DT)."""
        return None

    def probe_stats(self) -> dict[str, float]:
        """Metrics logged with each plasticity probe."""
        return {}

    def start_task(self, task: int) -> None:
        """Work before task index ``task`` trains."""

    def end_task(self, task: int, data: EpisodeData) -> None:
        """Work after task index ``task`` trained on ``data``."""

    def checkpoint_extras(self) -> dict[str, Any]:
        """Method state to keep in the final checkpoint (``L2MAgent.extras``)."""
        return {}


@register
class L2M(Method):
    """L2M: a ``ModulationPool`` on the frozen DT. Per batch, query ``model.query_embedding(states, timesteps)``
    (L2M's: the mean of the LayerNorm-ed state tokens), entries by ``pool.select``; loss = DT loss under
    ``pool.selected(idx)`` + ``pool.key_loss``; ``pool.end_task()`` after each task. At evaluation the selection is
    task-agnostic (``pool.eval()``). The pool trains without weight decay (L2M puts raw parameters in AdamW's
    no-decay group, ``src/algos/models/online_decision_transformer_model.py`` ``get_optim_groups``)."""

    name = "l2m"
    oracle: ClassVar[bool] = False  # select the entries by task index instead of by key similarity

    def __init__(self, agent: L2MAgent, cfg: Any, n_tasks: int) -> None:
        super().__init__(agent, cfg, n_tasks)
        self.pool = self.make_pool(cfg)
        agent.attach_pool(self.pool)

    def make_pool(self, cfg: Any) -> ModulationPool:
        """The pool of the ``pool`` section, keys of the DT's width."""
        p = cfg.pool
        return ModulationPool(pool_size=p.pool_size, key_dim=cfg.model.d_model, rank=p.rank, kind=p.kind,
                              top_k=p.top_k, pull_coef=p.pull_coef, count_penalty=p.count_penalty,
                              placement=p.placement)

    def modules(self) -> dict[str, nn.Module]:
        return {"dt": self.model, "pool": self.pool}

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.pool.parameters() if p.requires_grad]

    @property
    def weight_decay(self) -> float:
        return 0.0

    def loss(self, batch: Batch, task: int) -> tuple[Tensor, ...]:
        query = self.model.query_embedding(batch[0], batch[3])
        idx = self.pool.select(query, task, oracle=self.oracle)
        with self.pool.selected(idx):
            dt_loss = self.model.loss(*batch)
        key_loss = self.pool.key_loss(query, idx)
        return dt_loss + key_loss, key_loss

    def train(self) -> None:
        self.model.train()
        self.pool.train()

    def eval(self) -> None:
        self.pool.eval()
        self.model.eval()

    def forward(self, batch: Batch, task: int) -> Tensor:
        idx = self.pool.select(self.model.query_embedding(batch[0], batch[3]), task, oracle=self.oracle,
                               evaluate=True)
        with self.pool.selected(idx):
            return self.model(*batch)

    def select(self) -> Select:
        def acting(states: Tensor, timesteps: Tensor, task_indices: np.ndarray) -> Any:
            query = self.model.query_embedding(states, timesteps)
            idx = self.pool.select(query, torch.as_tensor(task_indices), oracle=self.oracle, evaluate=True)
            return self.pool.selected(idx)

        return acting

    def probe_stats(self) -> dict[str, float]:
        return {"pool/entries_used": int(((self.pool.counts + self.pool.task_counts) > 0).sum())}

    def end_task(self, task: int, data: EpisodeData) -> None:
        self.pool.end_task()


@register
class L2MOracle(L2M):
    """``l2m`` with the entries of the task index (``oracle=True``), in training and at evaluation."""

    name = "l2m_oracle"
    oracle = True

    @classmethod
    def check(cls, cfg: Any, n_tasks: int) -> None:
        if cfg.pool.pool_size < n_tasks * cfg.pool.top_k:
            raise ConfigError(f"pool.pool_size: {cfg.pool.pool_size} is too small for l2m_oracle; need at least "
                              f"{n_tasks} tasks x top_k {cfg.pool.top_k} = {n_tasks * cfg.pool.top_k} entries")


@register
class LoRA(L2M):
    """One shared LoRA (a pool of one entry, no usage penalty) on the frozen DT."""

    name = "lora"

    def make_pool(self, cfg: Any) -> ModulationPool:
        p = cfg.pool
        return ModulationPool(pool_size=1, key_dim=cfg.model.d_model, rank=p.rank, kind=p.kind, top_k=1,
                              pull_coef=p.pull_coef, count_penalty=False, placement=p.placement)


@register
class Finetune(Method):
    """Every DT parameter trains, no pool."""

    name = "finetune"


# ---- EWC (Kirkpatrick et al., PNAS 2017), "online" form as in Continual World ------------------
# One running Fisher sum over the finished tasks and one anchor, the parameters after the latest task:
#     penalty = lambda/2 * sum_i F_i (theta_i - anchor_i)^2,   F = F_task_0 + ... + F_task_{i-1}.
# Per-task anchors would give sum_t F_t (theta - theta*_t)^2 instead; the single anchor is the common
# simplification (Continual World's EWC keeps the summed Fisher and the latest parameters the same way).

def ewc_fisher(model: nn.Module, batches: Iterable[Any], loss_fn: Callable[[nn.Module, Any], Tensor]
               ) -> dict[str, Tensor]:
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


def ewc_penalty(model: nn.Module, fisher: dict[str, Tensor], anchor: dict[str, Tensor], lam: float) -> Tensor:
    """``lam / 2 * sum_i F_i (theta_i - anchor_i)^2`` over the parameters named in ``fisher`` (a scalar tensor;
    0 when ``fisher`` is empty or ``lam`` is 0)."""
    params = dict(model.named_parameters())
    total = torch.zeros((), device=next(iter(params.values())).device)
    if lam == 0 or not fisher:
        return total
    for name, f in fisher.items():
        total = total + (f * (params[name] - anchor[name]) ** 2).sum()
    return 0.5 * lam * total


@register
class EWC(Finetune):
    """``finetune`` plus the online-EWC penalty ``ewc_penalty`` (weight ``sequence.ewc_lambda``) on the DT loss;
    after each task but the last, its diagonal Fisher (``ewc_fisher``, eval mode, mean over
    ``sequence.ewc_fisher_batches`` batches of its data) is added to the running sum and the anchor becomes the
    current parameters. Pre-training is not consolidated. The final checkpoint keeps the penalty in force during the
    last task: ``extras["ewc"]`` = {"fisher", "anchor", "tasks", "lambda"}."""

    name = "ewc"

    def __init__(self, agent: L2MAgent, cfg: Any, n_tasks: int) -> None:
        super().__init__(agent, cfg, n_tasks)
        self.fisher: dict[str, Tensor] = {}  # summed Fisher of the finished tasks
        self.anchor: dict[str, Tensor] = {}  # the parameters after the latest of them
        self.tasks = 0  # how many tasks the Fisher sums

    def stat_names(self) -> list[str]:
        return super().stat_names() + (["train/dt_loss", "train/ewc_penalty"] if self.fisher else [])

    def loss(self, batch: Batch, task: int) -> tuple[Tensor, ...]:
        dt_loss = self.model.loss(*batch)
        if not self.fisher:
            return dt_loss, dt_loss
        penalty = ewc_penalty(self.model, self.fisher, self.anchor, self.cfg.sequence.ewc_lambda)
        loss = dt_loss + penalty
        return loss, loss, dt_loss, penalty

    def end_task(self, task: int, data: EpisodeData) -> None:
        if task == self.n_tasks - 1:  # the last task's Fisher would only serve a later task
            return
        seq = self.cfg.sequence
        self.model.eval()
        batches = [self.agent.sample_batch(data, seq.batch_size) for _ in range(seq.ewc_fisher_batches)]
        for name, f in ewc_fisher(self.model, batches, lambda mdl, batch: mdl.loss(*batch)).items():
            self.fisher[name] = self.fisher[name] + f if name in self.fisher else f
        self.anchor = {name: p.detach().clone() for name, p in self.model.named_parameters() if p.requires_grad}
        self.tasks = task + 1

    def checkpoint_extras(self) -> dict[str, Any]:
        return {"ewc": {"fisher": self.fisher, "anchor": self.anchor, "tasks": self.tasks,
                        "lambda": self.cfg.sequence.ewc_lambda}}


@register
class Reference(Finetune):
    """Per task, from the pre-trained weights (fresh optimizer), ``finetune`` on that task alone, evaluating only it;
    the run writes ``reference_curves.json`` (for ``sequence.reference_curves``), no success matrix."""

    name = "reference"
    isolated_tasks = True

    def __init__(self, agent: L2MAgent, cfg: Any, n_tasks: int) -> None:
        super().__init__(agent, cfg, n_tasks)
        self.pretrained = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def start_task(self, task: int) -> None:
        self.model.load_state_dict(self.pretrained)


METHODS = tuple(REGISTRY)  # ("l2m", "l2m_oracle", "lora", "finetune", "ewc", "reference")
