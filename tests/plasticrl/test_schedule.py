"""Tests for plasticrl.interventions.schedule: when interventions fire, checked against hand-listed steps."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from plasticrl.interventions import Reset, Schedule, ScheduledIntervention, ShrinkPerturb, Target, Trigger


def fired(schedule: Schedule, steps, **kwargs) -> list[int]:
    """The steps at which ``due`` says True, calling it at each of ``steps``."""
    return [s for s in steps if schedule.due(s, **kwargs)]


def test_every_fires_at_each_crossing_of_a_multiple_with_jumping_counters():
    # 4 envs: the counter jumps by 4; multiples of 10 are crossed at 12, 20, 32, 40, 52, 60
    assert fired(Schedule(every=10), range(0, 61, 4)) == [12, 20, 32, 40, 52, 60]
    assert fired(Schedule(every=10), range(0, 61, 10)) == [10, 20, 30, 40, 50, 60]  # step 0 is no crossing
    assert fired(Schedule(every=10), [0, 5, 35, 36, 39, 40]) == [35, 40]  # a jump over 10, 20, 30 fires once


def test_at_fires_once_at_each_listed_step_when_reached_or_passed():
    schedule = Schedule(at=[25, 0, 100])
    assert fired(schedule, [0, 10, 30, 90, 110, 120, 200]) == [0, 30, 110]
    assert schedule.n_fired == 3 and schedule.last_fired == 110 and schedule.reasons == ("at",)
    assert fired(Schedule(at=(5, 7)), [0, 8, 9]) == [8]  # two listed steps passed in one jump: once


def test_start_and_stop_bound_every_source_inclusively():
    assert fired(Schedule(every=10, start=25, stop=50), range(0, 101, 5)) == [30, 40, 50]
    assert fired(Schedule(at=(10, 30), start=20), [0, 10, 20, 30]) == [30]  # 10 was crossed before start: dropped
    assert fired(Schedule(on_task_switch=True, stop=10), [5, 15], task_switch=True) == [5]


def test_min_gap_drops_events_too_close_to_the_last_firing():
    assert fired(Schedule(every=10, min_gap=25), range(0, 101, 10)) == [10, 40, 70, 100]
    s = Schedule(when="m > 0.1", min_gap=100)
    assert fired(s, range(0, 301, 50), metrics={"m": 0.5}) == [0, 100, 200, 300]


def test_metric_trigger_fires_only_on_given_metrics_that_hold():
    s = Schedule(when=Trigger("plasticity/critic/dormant_ratio", ">", 0.1))
    key = "plasticity/critic/dormant_ratio"
    assert not s.due(10)  # no metrics given: not checked
    assert not s.due(20, {key: 0.05})
    assert not s.due(25, {key: 0.1})  # strict
    assert s.due(30, {key: torch.tensor(0.2)}) and s.reasons == ("when",)  # 0-dim tensors are read too
    assert s.due(40, {key: 0.3})  # no min_gap: fires at every check that holds
    assert not s.due(50, {key: float("nan")})
    assert not s.due(60)
    s2 = Schedule(when="x <= -1")
    assert s2.when == Trigger("x", "<=", -1.0)
    assert fired(s2, [1, 2, 3], metrics={"x": -1}) == [1, 2, 3]
    with pytest.raises(ValueError, match="'x' is 'high', not a number"):
        s2.due(4, {"x": "high"})


def test_a_missing_metric_key_warns_once_naming_it_and_the_keys_there_are():
    s = Schedule(when="plasticity/critic/dormant_ratio > 0.1")
    with pytest.warns(RuntimeWarning, match=r"'plasticity/critic/dormant_ratio' is not in the metrics.*"
                                            r"plasticity/actor/fau, plasticity/critic/fau"):
        assert not s.due(10, {"plasticity/critic/fau": 0.5, "plasticity/actor/fau": 0.4})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not s.due(20, {"plasticity/critic/fau": 0.5})  # once
        assert s.due(30, {"plasticity/critic/dormant_ratio": 0.5})


def test_task_switch_fires_only_when_asked_for():
    s = Schedule(on_task_switch=True)
    assert s.due(5, task_switch=True) and s.reasons == ("task_switch",)
    assert not s.due(6)
    assert not Schedule(every=100).due(5, task_switch=True)
    both = Schedule(every=10, on_task_switch=True)
    assert both.due(10, task_switch=True) and both.reasons == ("every", "task_switch")


def test_state_dict_round_trip_resumes_without_firing_twice():
    steps = list(range(0, 121, 5))
    config = {"every": 20, "at": (55,), "min_gap": 10}
    whole = fired(Schedule(**config), steps)
    assert whole == [20, 40, 55, 80, 100, 120]
    first = Schedule(**config)
    before = fired(first, [s for s in steps if s <= 60])
    state = first.state_dict()
    assert before == [20, 40, 55]  # 60 is 5 steps after 55: dropped by min_gap
    assert state == {"last_step": 60, "last_fired": 55, "n_fired": 3}
    resumed = Schedule(**config)
    resumed.load_state_dict(state)
    after = fired(resumed, [s for s in steps if s >= 60])  # the resumed run calls again at the saved step
    assert before + after == whole
    fresh = Schedule(**config)  # without the state the resumed run would fire at 60 and 55 again
    assert fired(fresh, [60])
    with pytest.raises(ValueError, match="missing"):
        resumed.load_state_dict({"last_step": 1})


def test_the_counter_must_not_go_back_and_reset_starts_a_new_clock():
    s = Schedule(every=10)
    assert s.due(20)
    with pytest.raises(ValueError, match="env_step 10 is before"):
        s.due(10)
    s.reset()
    assert s.due(10) and s.n_fired == 1
    with pytest.raises(ValueError, match="env_step"):
        s.due(-1)


@pytest.mark.parametrize("kwargs, field", [
    ({"every": -5}, "every"), ({"every": 0}, "every"), ({"every": 2.5}, "every"), ({"every": True}, "every"),
    ({"at": (10, -1)}, "at"), ({"at": 7}, "at"), ({"start": -1}, "start"), ({"stop": -3}, "stop"),
    ({"start": 100, "stop": 50}, "stop"), ({"min_gap": -1}, "min_gap"), ({"when": 0.1}, "when"),
    ({"when": "dormant_ratio ~ 0.1"}, "when"), ({"when": "m > high"}, "when"),
    ({"on_task_switch": 1}, "on_task_switch"),
])
def test_bad_schedule_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}"):
        Schedule(**kwargs)


@pytest.mark.parametrize("args, field", [(("m", "==", 0.1), "when.op"), (("m", "=>", 0.1), "when.op"),
                                         (("", ">", 0.1), "when.metric"), (("m", ">", float("nan")), "when.threshold"),
                                         (("m", ">", "0.1"), "when.threshold")])
def test_bad_triggers_name_the_field(args, field):
    with pytest.raises(ValueError, match=f"^{field}"):
        Trigger(*args)


def test_scheduled_intervention_applies_when_due_and_prefixes_its_log():
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    scheduled = ScheduledIntervention(Reset("last1"), "critic", Schedule(every=10))
    target = Target(net)
    assert scheduled.maybe_apply(target, 5) is None
    outcome = scheduled.maybe_apply(target, 12)
    assert outcome is not None and outcome.log["layers_reset"] == 1.0
    assert scheduled.log_keys(outcome) == {"intervention/reset/critic/fired": 1.0,
                                           "intervention/reset/critic/layers_reset": 1.0,
                                           "intervention/reset/critic/params_reset": 10.0}
    assert scheduled.state_dict() == {"schedule": {"last_step": 12, "last_fired": 12, "n_fired": 1}}


def test_scheduled_intervention_state_carries_the_shrink_snapshot():
    net = nn.Sequential(nn.Linear(3, 4))
    scheduled = ScheduledIntervention(ShrinkPerturb(alpha=0.5, towards="initial"), "actor", Schedule(at=(100,)))
    scheduled.bind(Target(net))
    ScheduledIntervention(Reset(), "actor", Schedule()).bind(Target(net))  # nothing to bind: a no-op
    state = scheduled.state_dict()
    assert set(state["intervention"]["initial"]) == {"0.weight", "0.bias"}
    other = ScheduledIntervention(ShrinkPerturb(alpha=0.5, towards="initial"), "actor", Schedule(at=(100,)))
    other.load_state_dict(state)
    assert torch.equal(other.intervention.state_dict()["initial"]["0.weight"], net[0].weight)
    assert repr(other.schedule) == "Schedule(at=(100,))"
