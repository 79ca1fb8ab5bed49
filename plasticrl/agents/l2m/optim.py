"""The Decision Transformer's optimisation as L2M (ml-jku/L2M) sets it up: the learning rate at each gradient step
(linear warmup, then constant or a single cosine cycle) and AdamW's weight decay on ``nn.Linear`` weights only.

L2M's sources: ``src/algos/decision_transformer_sb3.py`` (``_setup_policy``: a warmup ``LambdaLR`` then, with
``lr_sched_kwargs``, the scheduler of ``src/schedulers/lr_schedulers.py`` joined by ``SequentialLR``; one scheduler
step per update), ``configs/agent_params/lr_sched_kwargs/cosine.yaml`` (``T_max`` = the run's total steps,
``eta_min`` 1e-6) and ``src/algos/models/online_decision_transformer_model.py`` (``get_optim_groups``)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from torch import nn

__all__ = ["LR_SCHEDULES", "learning_rate_at", "weight_decay_groups"]

LR_SCHEDULES = ("constant", "cosine")


def learning_rate_at(step: int, base: float, schedule: str = "constant", warmup_steps: int = 0,
                     total_steps: int | None = None, final: float = 0.0) -> float:
    """The learning rate of gradient step ``step`` (0-based).

    Warmup: ``base * (step + 1) / warmup_steps`` for ``step < warmup_steps`` (the first step already has
    ``base / warmup_steps``). After it, ``constant``: ``base``; ``cosine``: with ``c = step - warmup_steps``,
    ``final + (base - final) * (1 + cos(pi * c / total_steps)) / 2`` while ``c < total_steps``, then ``final``
    (one cycle, it does not rise again). As in L2M the cosine starts at the warmup's end and its period is the
    whole run's length ``total_steps``, so a run of ``total_steps`` steps ends just above ``final``."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr schedule {schedule!r}: allowed are {', '.join(map(repr, LR_SCHEDULES))}")
    if step < warmup_steps:
        return base * (step + 1) / warmup_steps
    if schedule == "constant":
        return base
    if not total_steps or total_steps < 1:
        raise ValueError(f"the cosine schedule needs total_steps >= 1, got {total_steps}")
    c = step - warmup_steps
    if c >= total_steps:
        return final
    return final + (base - final) * (1 + math.cos(math.pi * c / total_steps)) / 2


def weight_decay_groups(model: nn.Module, params: Iterable[nn.Parameter], weight_decay: float
                        ) -> list[dict[str, Any]]:
    """AdamW parameter groups of ``params``: the weights of ``model``'s ``nn.Linear`` modules with ``weight_decay``,
    every other parameter (biases, LayerNorm and Embedding weights, parameters of no Linear such as a modulation
    pool's LoRA factors and keys, or ones outside ``model``) with 0. Empty groups are left out; order as given."""
    decayed = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    params = list(params)
    groups = [{"params": [p for p in params if id(p) in decayed], "weight_decay": weight_decay},
              {"params": [p for p in params if id(p) not in decayed], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]
