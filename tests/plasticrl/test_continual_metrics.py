"""Tests for plasticrl.continual metrics on a hand-worked 3-task example."""

from __future__ import annotations

import math

import numpy as np
import pytest

from plasticrl.continual_metrics import (
    average_performance,
    average_performance_per_task,
    forgetting,
    forgetting_per_task,
    forward_transfer,
    forward_transfer_per_task,
)

# perf[i, j]: score of task j at the end of training task i.
PERF = np.array(
    [
        [0.9, 0.1, 0.0],
        [0.6, 0.8, 0.2],
        [0.5, 0.7, 1.0],
    ]
)


def test_average_performance_hand_worked() -> None:
    # final row: 0.5, 0.7, 1.0 -> AP = 2.2 / 3 = 0.7333...
    np.testing.assert_allclose(average_performance_per_task(PERF), [0.5, 0.7, 1.0])
    assert average_performance(PERF) == pytest.approx(2.2 / 3)


def test_forgetting_hand_worked() -> None:
    # task 0: perf[0,0] - perf[2,0] = 0.9 - 0.5 = 0.4
    # task 1: perf[1,1] - perf[2,1] = 0.8 - 0.7 = 0.1
    # task 2 (last) excluded -> mean = 0.5 / 2 = 0.25
    np.testing.assert_allclose(forgetting_per_task(PERF), [0.4, 0.1])
    assert forgetting(PERF) == pytest.approx(0.25)


def test_forward_transfer_hand_worked() -> None:
    curves = [np.array([0.0, 0.5, 1.0]), np.array([0.2, 0.2]), np.array([0.9, 1.0])]
    refs = [np.array([0.0, 0.0, 0.6]), np.array([0.4, 0.6]), np.array([1.0, 1.0])]
    # task 0: AUC 0.5, ref 0.2 -> (0.5 - 0.2) / (1 - 0.2) = 0.375
    # task 1: AUC 0.2, ref 0.5 -> (0.2 - 0.5) / (1 - 0.5) = -0.6
    # task 2: ref AUC 1 -> 0 by convention
    # mean: (0.375 - 0.6 + 0) / 3 = -0.075
    np.testing.assert_allclose(forward_transfer_per_task(curves, refs), [0.375, -0.6, 0.0])
    assert forward_transfer(curves, refs) == pytest.approx(-0.075)


def test_edge_cases_and_validation() -> None:
    assert math.isnan(forgetting(np.array([[0.7]])))
    assert average_performance(np.array([[0.7]])) == pytest.approx(0.7)
    with pytest.raises(ValueError):
        average_performance(np.zeros((2, 3)))
    with pytest.raises(ValueError):
        forgetting(np.zeros(3))
    with pytest.raises(ValueError):
        forward_transfer([np.ones(2)], [])
    with pytest.raises(ValueError):
        forward_transfer([np.array([])], [np.ones(2)])


def test_data_normalized_score_hand_worked() -> None:
    """(R - R_random) / (R_data - R_random): random 20, data 820 -> 420 is 0.5, 20 is 0, 1220 is 1.5."""
    from plasticrl.continual_metrics import data_normalized_score

    np.testing.assert_allclose(data_normalized_score([420.0, 20.0, 1220.0], 20.0, 820.0), [0.5, 0.0, 1.5])
    with pytest.raises(ValueError, match="must exceed"):
        data_normalized_score(1.0, 5.0, 5.0)


def test_forward_transfer_summary_keeps_dmc_scores_apart() -> None:
    """Success-rate tasks: Continual World's (AUC - AUC_ref) / (1 - AUC_ref); DMC tasks (data-normalised returns,
    unbounded): AUC - AUC_ref, averaged apart; a saturated reference is named."""
    from plasticrl.continual_metrics import forward_transfer_summary

    curves = [[0.2, 0.4], [1.0, 1.0], [1.2, 1.6]]
    refs = [[0.0, 0.2], [1.0, 1.0], [0.9, 1.1]]
    out = forward_transfer_summary(curves, refs, ["success rate", "success rate", "data-normalised return"])
    # task 0: (0.3 - 0.1) / 0.9; task 1: reference AUC 1 -> 0; task 2: 1.4 - 1.0
    assert out["forward_transfer_per_task"] == pytest.approx([0.2 / 0.9, 0.0, 0.4])
    assert out["forward_transfer"] == pytest.approx(0.1 / 0.9)
    assert out["forward_transfer_dmc"] == pytest.approx(0.4)
    assert "tasks [1]" in out["forward_transfer_note"]
    only_dmc = forward_transfer_summary(curves[2:], refs[2:], ["data-normalised return"])
    assert only_dmc["forward_transfer"] is None and only_dmc["forward_transfer_dmc"] == pytest.approx(0.4)
