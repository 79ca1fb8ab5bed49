"""When an intervention fires: ``Schedule`` (env-step periods, listed steps, a metric trigger, task switches) and
``ScheduledIntervention``, an intervention paired with the group it acts on and its schedule.

The clock is the env-step counter (SB3's ``num_timesteps``: transitions over all envs), which may jump by
``n_envs`` between calls. ``Schedule.due`` is called once per check (e.g. each rollout end) with the counter, the
latest monitor metrics when there are new ones, and whether the task just switched; it says whether to fire and
records the firing. ``state_dict``/``load_state_dict`` carry that record across a resume, so nothing fires twice.

torch and the standard library only.
"""

from __future__ import annotations

import math
import operator
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from plasticrl.interventions.base import Intervention, Outcome, Target

__all__ = ["OPS", "Schedule", "ScheduledIntervention", "Trigger"]

OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
_TRIGGER = re.compile(r"\s*(\S+)\s*(>=|<=|>|<)\s*(\S+)\s*")


@dataclass(frozen=True)
class Trigger:
    """``metrics[metric] <op> threshold``, e.g. ``Trigger("plasticity/critic/dormant_ratio", ">", 0.1)``.

    :param metric: a key of the monitor's metrics dict.
    :param op: ``">"``, ``">="``, ``"<"`` or ``"<="``.
    :param threshold: a finite number.
    """

    metric: str
    op: str
    threshold: float

    def __post_init__(self) -> None:
        if not isinstance(self.metric, str) or not self.metric:
            raise ValueError(f"when.metric {self.metric!r}: a metric key, e.g. 'plasticity/critic/dormant_ratio'")
        if self.op not in OPS:
            raise ValueError(f"when.op {self.op!r}: allowed are {', '.join(map(repr, OPS))}")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) or \
                not math.isfinite(self.threshold):
            raise ValueError(f"when.threshold {self.threshold!r}: a finite number")
        object.__setattr__(self, "threshold", float(self.threshold))

    @classmethod
    def parse(cls, text: str) -> Trigger:
        """``"plasticity/critic/dormant_ratio > 0.1"`` -> ``Trigger(...)``."""
        match = _TRIGGER.fullmatch(text) if isinstance(text, str) else None
        if match is None:
            raise ValueError(f"when {text!r}: write '<metric> <op> <threshold>', op one of {', '.join(OPS)}, e.g. "
                             "'plasticity/critic/dormant_ratio > 0.1'")
        try:
            threshold = float(match.group(3))
        except ValueError:
            raise ValueError(f"when {text!r}: threshold {match.group(3)!r} is not a number") from None
        return cls(match.group(1), match.group(2), threshold)

    def holds(self, value: float) -> bool:
        """The comparison on ``value`` (False for NaN)."""
        return OPS[self.op](value, self.threshold)

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.threshold:g}"


def _count(field: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{field} {value!r}: an integer >= {minimum} (env steps)")
    return value


class Schedule:
    """When an intervention fires, in env steps.

    :param every: fire each time the counter crosses a multiple of ``every`` (a jump over several multiples fires
        once). None: no period.
    :param at: fire once at each listed step, when the counter reaches or passes it (steps passed in one jump fire
        once together).
    :param start: fire nothing before this step.
    :param stop: fire nothing after this step (inclusive; None: no end).
    :param when: a ``Trigger`` (or its text, ``"plasticity/critic/dormant_ratio > 0.1"``), checked each time
        ``due`` is given metrics: it fires when the metrics hold its key and the comparison holds. A missing key
        warns once, naming the key and the keys there are.
    :param min_gap: env steps that must pass since the last firing; an event closer than that is dropped, not
        deferred (it keeps a metric trigger from firing at every check).
    :param on_task_switch: fire when ``due`` is told the task switched.

    ``start``, ``stop`` and ``min_gap`` bound every source, and are read at the counter of the call: a period or
    listed step crossed while outside them is dropped. The counter starts at 0 (a first call at step 0 fires
    ``at=(0,)`` and no period); it must not go back (ValueError; ``reset()`` for a new clock).
    """

    def __init__(self, every: int | None = None, at: Any = (), start: int = 0, stop: int | None = None,
                 when: Trigger | str | None = None, min_gap: int = 0, on_task_switch: bool = False):
        self.every = None if every is None else _count("every", every, 1)
        try:
            steps = tuple(at)
        except TypeError:
            raise ValueError(f"at {at!r}: a list of env steps (integers >= 0)") from None
        self.at = tuple(sorted({_count("at", s, 0) for s in steps}))
        self.start = _count("start", start, 0)
        self.stop = None if stop is None else _count("stop", stop, 0)
        if self.stop is not None and self.stop < self.start:
            raise ValueError(f"stop {stop!r}: before start {start!r}")
        if isinstance(when, str):
            when = Trigger.parse(when)
        if when is not None and not isinstance(when, Trigger):
            raise ValueError(f"when {when!r}: a Trigger, its text ('<metric> <op> <threshold>') or None")
        self.when = when
        self.min_gap = _count("min_gap", min_gap, 0)
        if not isinstance(on_task_switch, bool):
            raise ValueError(f"on_task_switch {on_task_switch!r}: True or False")
        self.on_task_switch = on_task_switch
        self._warned: set[str] = set()
        self.reset()

    def reset(self) -> None:
        """Forgets the record: a new clock from step 0."""
        self.last_step: int | None = None  # the counter at the last call
        self.last_fired: int | None = None  # the counter at the last firing
        self.n_fired = 0
        self.reasons: tuple[str, ...] = ()  # what made the last call fire: "every", "at", "when", "task_switch"

    def __repr__(self) -> str:
        fields = {"every": self.every, "at": self.at, "start": self.start, "stop": self.stop,
                  "when": str(self.when) if self.when else None, "min_gap": self.min_gap,
                  "on_task_switch": self.on_task_switch}
        defaults = {"every": None, "at": (), "start": 0, "stop": None, "when": None, "min_gap": 0,
                    "on_task_switch": False}
        return "Schedule(" + ", ".join(f"{k}={v!r}" for k, v in fields.items() if v != defaults[k]) + ")"

    def _metric_holds(self, metrics: Mapping[str, Any]) -> bool:
        key = self.when.metric
        if key not in metrics:
            if key not in self._warned:
                self._warned.add(key)
                there = sorted(map(str, metrics))
                shown = ", ".join(there[:30]) + (f", ... ({len(there)} keys)" if len(there) > 30 else "")
                warnings.warn(f"Schedule: trigger metric {key!r} is not in the metrics given; they hold: "
                              f"{shown or 'nothing'}", RuntimeWarning, stacklevel=3)
            return False
        try:
            value = float(metrics[key])
        except (TypeError, ValueError):
            raise ValueError(f"Schedule: metric {key!r} is {metrics[key]!r}, not a number") from None
        return self.when.holds(value)

    def due(self, env_step: int, metrics: Mapping[str, Any] | None = None, task_switch: bool = False) -> bool:
        """Whether the intervention fires now, at env step ``env_step``; a True is recorded as a firing."""
        step = int(env_step)
        if step < 0:
            raise ValueError(f"env_step {env_step!r}: the env-step counter is >= 0")
        if self.last_step is not None and step < self.last_step:
            raise ValueError(f"env_step {step} is before the last call's {self.last_step}: the counter must not go "
                             "back (call reset() to start a new clock)")
        prev = -1 if self.last_step is None else self.last_step  # steps in (prev, step] were crossed now
        self.last_step = step
        reasons = []
        if self.every is not None and step // self.every > max(prev, 0) // self.every:
            reasons.append("every")
        if any(prev < s <= step for s in self.at):
            reasons.append("at")
        if self.when is not None and metrics is not None and self._metric_holds(metrics):
            reasons.append("when")
        if task_switch and self.on_task_switch:
            reasons.append("task_switch")
        if not reasons or step < self.start or (self.stop is not None and step > self.stop):
            return False
        if self.last_fired is not None and step - self.last_fired < self.min_gap:
            return False
        self.last_fired = step
        self.n_fired += 1
        self.reasons = tuple(reasons)
        return True

    def state_dict(self) -> dict[str, Any]:
        """The record (plain Python values): the last call's and the last firing's step, the number of firings."""
        return {"last_step": self.last_step, "last_fired": self.last_fired, "n_fired": self.n_fired}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        missing = {"last_step", "last_fired", "n_fired"} - set(state)
        if missing:
            raise ValueError(f"Schedule.load_state_dict: missing {', '.join(sorted(missing))}")
        self.last_step = None if state["last_step"] is None else int(state["last_step"])
        self.last_fired = None if state["last_fired"] is None else int(state["last_fired"])
        self.n_fired = int(state["n_fired"])


@dataclass
class ScheduledIntervention:
    """An intervention, the name of the group it acts on (a monitor group name, e.g. ``"critic"``) and its
    schedule. The caller builds the ``Target`` for the group and adds ``log_keys`` to its logs."""

    intervention: Intervention
    group: str
    schedule: Schedule

    @property
    def prefix(self) -> str:
        """``intervention/<kind>/<group>/``: the prefix of this intervention's log keys."""
        return f"intervention/{self.intervention.kind}/{self.group}/"

    def log_keys(self, outcome: Outcome) -> dict[str, float]:
        """``outcome.log`` under ``prefix``, plus ``fired`` (1.0)."""
        return {self.prefix + "fired": 1.0, **{self.prefix + k: float(v) for k, v in outcome.log.items()}}

    def bind(self, target: Target) -> None:
        """Lets an intervention that keeps a reference to the weights (``ShrinkPerturb(towards="initial")``) take
        it now, from the group's ``target``: call it once, after the networks are built and before training."""
        if getattr(self.intervention, "towards", None) == "initial" and hasattr(self.intervention, "bind"):
            self.intervention.bind(target)

    def maybe_apply(self, target: Target, env_step: int, metrics: Mapping[str, Any] | None = None,
                    task_switch: bool = False, forward_fn: Any = None) -> Outcome | None:
        """Applies the intervention if the schedule is due; the ``Outcome``, or None when it did not fire."""
        if not self.schedule.due(env_step, metrics, task_switch):
            return None
        return self.intervention.apply(target, forward_fn)

    def state_dict(self) -> dict[str, Any]:
        """The schedule's record, and the intervention's state if it has one (``ShrinkPerturb``'s snapshot)."""
        state: dict[str, Any] = {"schedule": self.schedule.state_dict()}
        if hasattr(self.intervention, "state_dict"):
            state["intervention"] = self.intervention.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.schedule.load_state_dict(state["schedule"])
        if "intervention" in state and hasattr(self.intervention, "load_state_dict"):
            self.intervention.load_state_dict(state["intervention"])
