"""DrQ-v2's exploration-noise schedules (``utils.schedule`` of facebookresearch/drqv2), parsed once.

The syntax is DrQ-v2's: a number (a constant std, e.g. ``0.2``), ``"linear(init,final,duration)"`` (from ``init`` at
step 0 to ``final`` at step ``duration``, then constant) or ``"step_linear(init,final1,duration1,final2,duration2)"``
(two linear pieces). The step is the agent step: DrQ-v2 evaluates its schedule at ``global_step`` in both ``act``
and ``update``, so ``linear(1.0,0.1,500000)`` reaches 0.1 after 500k agent steps (1M frames at action repeat 2).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_NUMBER = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
_LINEAR = re.compile(rf"^linear\({_NUMBER},{_NUMBER},{_NUMBER}\)$")
_STEP_LINEAR = re.compile(rf"^step_linear\({_NUMBER},{_NUMBER},{_NUMBER},{_NUMBER},{_NUMBER}\)$")
SYNTAX = "a number (e.g. 0.2), 'linear(init,final,duration)' or 'step_linear(init,final1,duration1,final2,duration2)'"


def _mix(start: float, end: float, step: float, duration: float) -> float:
    """``start`` at step 0 to ``end`` at ``duration``, constant after (DrQ-v2's ``np.clip(step / duration, 0, 1)``)."""
    mix = min(max(step / duration, 0.0), 1.0)
    return (1.0 - mix) * start + mix * end


@dataclass(frozen=True)
class StdSchedule:
    """A parsed schedule: ``values`` are the numbers of ``kind`` in the order the syntax gives them.

    :param kind: ``constant``, ``linear`` or ``step_linear``.
    :param values: (std,); (init, final, duration); or (init, final1, duration1, final2, duration2). Durations in
        agent steps.
    """

    kind: str
    values: tuple[float, ...]

    def __call__(self, step: float) -> float:
        """The std at agent step ``step``."""
        v = self.values
        if self.kind == "constant":
            return v[0]
        if self.kind == "linear":
            return _mix(v[0], v[1], step, v[2])
        if step <= v[2]:  # step_linear, as DrQ-v2: the first piece includes its last step
            return _mix(v[0], v[1], step, v[2])
        return _mix(v[1], v[3], step - v[2], v[4])


def parse_std_schedule(spec: str | float) -> StdSchedule:
    """The ``StdSchedule`` of ``spec`` (see the module docstring). ValueError for another string, a negative std or a
    duration that is not positive; TypeError for a value that is neither a number nor a string."""
    if isinstance(spec, bool) or not isinstance(spec, (str, int, float)):
        raise TypeError(f"std_schedule={spec!r} ({type(spec).__name__}): give {SYNTAX}")
    text = str(spec).replace(" ", "")
    linear, step_linear = _LINEAR.match(text), _STEP_LINEAR.match(text)
    if linear is not None:
        schedule, stds, durations = _numbers("linear", linear), [0, 1], [2]
    elif step_linear is not None:
        schedule, stds, durations = _numbers("step_linear", step_linear), [0, 1, 3], [2, 4]
    else:
        try:
            schedule, stds, durations = StdSchedule("constant", (float(text),)), [0], []
        except ValueError:
            raise ValueError(f"std_schedule={spec!r} is not DrQ-v2's syntax: give {SYNTAX}") from None
    v = schedule.values
    if not all(math.isfinite(x) for x in v):
        raise ValueError(f"std_schedule={spec!r}: every number must be finite")
    if any(v[i] < 0 for i in stds):
        raise ValueError(f"std_schedule={spec!r}: a std must be >= 0")
    if any(v[i] <= 0 for i in durations):
        raise ValueError(f"std_schedule={spec!r}: a duration (agent steps) must be > 0")
    return schedule


def _numbers(kind: str, match: re.Match[str]) -> StdSchedule:
    return StdSchedule(kind, tuple(float(g) for g in match.groups()))
