"""Continual-learning metrics of Continual World (Wolczyk et al., NeurIPS 2021).

Conventions (scores are success rates in [0, 1] for Meta-World tasks and data-normalised returns for DMC tasks,
``data_normalized_score``):

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

Pure functions on numpy arrays (numpy and the standard library only); the continual runner of the lab,
``plasticrl.lab.continual``, computes its summaries with them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _check_perf(perf: np.ndarray) -> np.ndarray:
    """``perf`` as a float array; ValueError unless square (n_tasks, n_tasks) with n_tasks >= 1."""
    perf = np.asarray(perf, dtype=np.float64)
    if perf.ndim != 2 or perf.shape[0] != perf.shape[1] or perf.shape[0] == 0:
        raise ValueError(f"perf must be a square (n_tasks, n_tasks) matrix, got shape {perf.shape}")
    return perf


def data_normalized_score(returns: np.ndarray | float, random_return: float, data_return: float) -> np.ndarray:
    """DMC task score (L2M's "data-normalised" score): ``(R - R_random) / (R_data - R_random)``, 0 = a uniform
    random policy, 1 = the mean episode return of the task's dataset; can leave [0, 1]. Returns in reward units."""
    if not data_return > random_return:
        raise ValueError(f"the dataset's mean return {data_return} must exceed the random policy's {random_return}")
    return (np.asarray(returns, dtype=np.float64) - random_return) / (data_return - random_return)


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


def forward_transfer_summary(curves: Sequence[np.ndarray], ref_curves: Sequence[np.ndarray],
                             kinds: Sequence[str] | None = None) -> dict[str, Any]:
    """summary.json's forward-transfer entries. Success-rate tasks (default: all) use Continual World's
    ``forward_transfer_per_task``, averaged in ``forward_transfer`` (None if there are none), with a
    ``forward_transfer_note`` naming tasks whose reference AUC is 1 (FT 0 by definition). Tasks scored by
    data-normalised return (DMC; ``kinds[j] != "success rate"``, see ``score_kinds``), which is not bounded by 1, get
    ``AUC - AUC_ref`` instead, averaged in ``forward_transfer_dmc``."""
    kinds = list(kinds) if kinds is not None else ["success rate"] * len(curves)
    per_task = forward_transfer_per_task(curves, ref_curves)
    rate = [j for j, kind in enumerate(kinds) if kind == "success rate"]
    other = [j for j in range(len(kinds)) if j not in rate]
    for j in other:
        per_task[j] = float(np.mean(curves[j])) - float(np.mean(ref_curves[j]))
    out: dict[str, Any] = {"forward_transfer": float(per_task[rate].mean()) if rate else None,
                           "forward_transfer_per_task": per_task.tolist()}
    if other:
        out["forward_transfer_dmc"] = float(per_task[other].mean())
    saturated = [j for j in rate if float(np.mean(ref_curves[j])) >= 1.0]
    if saturated:
        out["forward_transfer_note"] = (
            f"tasks {saturated}: the reference's AUC is 1, so their forward transfer is 0 by definition (no room "
            "to improve on the reference); more evaluation points per task would resolve it")
    return out


