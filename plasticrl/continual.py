"""Continual-learning metrics of Continual World (Wolczyk et al., NeurIPS 2021).

Only the metrics live here for now; a continual-training runner comes later.

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

Pure functions on numpy arrays; only numpy and the standard library are imported.
"""

from __future__ import annotations

from collections.abc import Sequence

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
