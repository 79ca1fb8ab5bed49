"""Replay-ratio controllers: a static ratio and the FAU-adaptive ratio of Ma et al.

Replay ratio (RR) = gradient updates per environment transition (agent step,
i.e. after action repeat). Adaptive RR follows "Revisiting Plasticity in Visual
RL: Data, Modules and Training Stages" (Ma et al., ICLR 2024): train at a low RR
(0.5) while the critic's fraction of active units (FAU, a unitless fraction in
[0, 1]) is still moving, then switch once, for good, to a high RR (2.0).

Typical loop::

    ctrl = AdaptiveReplayRatio()
    for each transition:
        for _ in range(ctrl.step()):
            fau = agent.update(...)          # critic FAU on the training batch
            ctrl.observe(fau)                # float or 0-d tensor, no host sync
        if episode_done:
            ctrl.end_episode()

Only torch and the standard library are imported here.
"""

from __future__ import annotations

import math
from abc import ABC
from fractions import Fraction
from typing import Any

import torch
from torch import Tensor

UNITS = ("episodes", "steps")
WINDOWS = ("last_episode", "since_last_check")
KINDS = ("static", "adaptive")


def _check_positive(name: str, value: Any) -> None:
    """ValueError unless ``value`` is a finite real number > 0."""
    ok = isinstance(value, (int, float, Fraction)) and not isinstance(value, bool)
    if not (ok and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    """ValueError unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _as_fraction(ratio: float | Fraction) -> Fraction:
    """Exact rational for a ratio; a float is read as its shortest repr (0.3 -> 3/10)."""
    return ratio if isinstance(ratio, Fraction) else Fraction(repr(float(ratio)))


def _acc_dtype(device: torch.device) -> torch.dtype:
    """Accumulation dtype: float64 where the device supports it (not on MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _to_host(*values: float | Tensor) -> list[float]:
    """Python floats; all tensor values are read back in one device->host transfer."""
    tensors = [v for v in values if isinstance(v, Tensor)]
    if not tensors:
        return [float(v) for v in values]
    device, dtype = tensors[0].device, tensors[0].dtype
    read = iter(torch.stack([t.to(device, dtype) for t in tensors]).tolist())
    return [next(read) if isinstance(v, Tensor) else float(v) for v in values]


class _Window:
    """Running sum and count of FAU values; the sum is a float, or a 0-d tensor
    kept on the values' device (out-of-place adds, never read back here)."""

    def __init__(self, total: float | Tensor = 0.0, count: int = 0) -> None:
        self.total = total
        self.count = count

    def add(self, value: float | Tensor) -> None:
        self.total = self.total + value
        self.count += 1

    def state(self) -> dict[str, Any]:
        return {"sum": self.total, "count": self.count}


class ReplayRatioController(ABC):
    """Shared interface: how many gradient updates are due per env transition.

    Attributes: ``env_step`` (transitions seen), ``updates`` (updates due so far),
    ``episodes`` (``end_episode`` calls). Fractional ratios are exact: after
    transitions with ratios r_1..r_N in force, ``updates == floor(r_1 + ... + r_N)``.
    """

    def __init__(self, ratio: float | Fraction) -> None:
        self._ratio = _as_fraction(ratio)
        self._credit = Fraction(0)  # updates owed but not yet due, in [0, 1)
        self.env_step = 0
        self.updates = 0
        self.episodes = 0

    @property
    def ratio(self) -> float:
        """Replay ratio in force (updates per transition)."""
        return float(self._ratio)

    def observe(self, fau: float | Tensor) -> None:
        """Record one critic FAU measurement (ignored by the base class)."""

    def end_episode(self, n: int = 1) -> None:
        """Mark the end of ``n`` episodes that ended together (parallel envs, one vector step)."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n={n!r}: the number of episodes that ended must be an int >= 1")
        self.episodes += n

    def step(self, n_transitions: int = 1) -> int:
        """Advance by ``n_transitions`` env transitions; return updates due now."""
        _check_transitions(n_transitions)
        return self._advance(n_transitions)

    def skip(self, n_transitions: int = 1) -> None:
        """Advance by ``n_transitions`` env transitions that get no updates (a warm-up, e.g. SB3's
        ``learning_starts``): ``env_step`` counts them; ``updates`` and the owed fraction of an update do not."""
        _check_transitions(n_transitions)
        self._advance(n_transitions, trained=False)

    def _advance(self, n: int, trained: bool = True) -> int:
        """Add ``n`` transitions, at the current ratio when ``trained``; return the whole updates due."""
        self.env_step += n
        if not trained:
            return 0
        self._credit += self._ratio * n
        due = math.floor(self._credit)
        self._credit -= due
        self.updates += due
        return due

    def log_dict(self) -> dict[str, float]:
        """Scalars for logging (no host sync)."""
        return {"replay_ratio/ratio": self.ratio, "replay_ratio/updates": float(self.updates)}

    def state_dict(self) -> dict[str, Any]:
        """Plain python values (loadable with ``torch.load(weights_only=True)``)."""
        return {
            "ratio": (self._ratio.numerator, self._ratio.denominator),
            "credit": (self._credit.numerator, self._credit.denominator),
            "env_step": self.env_step,
            "updates": self.updates,
            "episodes": self.episodes,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self._ratio = Fraction(*state["ratio"])
        self._credit = Fraction(*state["credit"])
        self.env_step = int(state["env_step"])
        self.updates = int(state["updates"])
        self.episodes = int(state["episodes"])


def _check_transitions(n: Any) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n_transitions must be an int >= 0, got {n!r}")


class StaticReplayRatio(ReplayRatioController):
    """Fixed replay ratio (updates per transition, > 0)."""

    def __init__(self, ratio: float) -> None:
        _check_positive("ratio", ratio)
        super().__init__(ratio)


class AdaptiveReplayRatio(ReplayRatioController):
    """Adaptive replay ratio (Ma et al., ICLR 2024): ``low`` until the critic FAU
    plateaus, then ``high`` for the rest of training (one switch only).

    Every ``check_every`` episodes (``unit="episodes"``) or env transitions
    (``unit="steps"``) the FAU values in the window are averaged and compared
    with the previous check's average; the very first FAU value ever observed
    is the first reference. If ``|current - previous| <= tolerance`` (FAU units)
    the ratio becomes ``high``. The reference is then replaced by the current
    average, switch or not. A check whose window holds no value is skipped
    (nothing recorded, reference kept).

    Windows:
      - ``"since_last_check"``: all values observed since the previous check.
      - ``"last_episode"`` with ``unit="episodes"``: values observed during the
        episode that just ended (the check runs in ``end_episode``).
      - ``"last_episode"`` with ``unit="steps"``: values of the most recently
        completed episode if one ended since the previous check, else all values
        since the previous check (never an already-used or partial episode).

    Defaults: DMC 1000-frame episodes with action repeat 2 are 500 transitions,
    so 50 episodes = 25,000 transitions.
    """

    def __init__(
        self,
        low: float = 0.5,
        high: float = 2.0,
        check_every: int = 50,
        unit: str = "episodes",
        tolerance: float = 1e-3,
        window: str = "last_episode",
    ) -> None:
        _check_positive("low", low)
        _check_positive("high", high)
        if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
            raise ValueError(f"check_every must be an int >= 1, got {check_every!r}")
        _check_choice("unit", unit, UNITS)
        _check_choice("window", window, WINDOWS)
        tol_ok = isinstance(tolerance, (int, float)) and not isinstance(tolerance, bool)
        if not (tol_ok and math.isfinite(tolerance) and tolerance >= 0):
            raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
        super().__init__(low)
        self.low, self.high = float(low), float(high)
        self.check_every, self.unit, self.window = check_every, unit, window
        self.tolerance = float(tolerance)
        self.switched_at: int | None = None
        self.history: list[tuple[int, float, float]] = []  # (env_step, avg FAU, ratio after)
        self._reference: float | Tensor | None = None  # previous average (first FAU at start)
        self._episode = _Window()  # current episode
        self._last_episode: _Window | None = None  # completed episode not yet used by a check
        self._period = _Window()  # since the previous check

    def observe(self, fau: float | Tensor) -> None:
        """Record one critic FAU value (fraction in [0, 1]); tensors stay on device."""
        if isinstance(fau, Tensor):
            if fau.numel() != 1:
                raise ValueError(f"fau must hold one value, got shape {tuple(fau.shape)}")
            fau = fau.detach().reshape(()).to(_acc_dtype(fau.device))
            if self._reference is None:
                self._reference = fau.clone()
        else:
            fau = float(fau)
            if self._reference is None:
                self._reference = fau
        self._episode.add(fau)
        self._period.add(fau)

    def end_episode(self, n: int = 1) -> None:
        """Close ``n`` episodes that ended together (with parallel envs, those of one vector step: their window is
        the values observed since the previous call); with ``unit="episodes"`` a check runs whenever the episode
        count reaches or passes a multiple of ``check_every``."""
        before = self.episodes
        super().end_episode(n)
        self._last_episode, self._episode = self._episode, _Window()
        if self.unit == "episodes" and before // self.check_every != self.episodes // self.check_every:
            self._check()

    def step(self, n_transitions: int = 1) -> int:
        """Advance by ``n_transitions``; return updates due. With ``unit="steps"``
        a check runs whenever ``env_step`` reaches a multiple of ``check_every``;
        transitions after it use the new ratio."""
        _check_transitions(n_transitions)
        return self._advance_checked(n_transitions, trained=True)

    def skip(self, n_transitions: int = 1) -> None:
        """Like ``step`` (checks included) for transitions that get no updates (a warm-up)."""
        _check_transitions(n_transitions)
        self._advance_checked(n_transitions, trained=False)

    def _advance_checked(self, n_transitions: int, trained: bool) -> int:
        due = 0
        while n_transitions > 0:
            k = n_transitions
            if self.unit == "steps":
                k = min(k, self.check_every - self.env_step % self.check_every)
            due += self._advance(k, trained)
            n_transitions -= k
            if self.unit == "steps" and self.env_step % self.check_every == 0:
                self._check()
        return due

    def _check(self) -> None:
        """Compare the window average with the reference; maybe switch to ``high``."""
        use_episode = self.window == "last_episode" and self._last_episode is not None
        win = self._last_episode if use_episode else self._period
        self._last_episode, self._period = None, _Window()
        if win.count == 0:
            return
        current, previous = _to_host(win.total / win.count, self._reference)  # one sync
        if self.switched_at is None and abs(current - previous) <= self.tolerance:
            self._ratio = _as_fraction(self.high)
            self.switched_at = self.env_step
        self._reference = current
        self.history.append((self.env_step, current, self.ratio))

    def log_dict(self) -> dict[str, float]:
        """Ratio, last check's average FAU (nan before any check) and total updates."""
        out = super().log_dict()
        out["replay_ratio/critic_fau_avg"] = self.history[-1][1] if self.history else math.nan
        return out

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(
            switched_at=self.switched_at,
            history=list(self.history),
            reference=self._reference,
            episode=self._episode.state(),
            last_episode=None if self._last_episode is None else self._last_episode.state(),
            period=self._period.state(),
        )
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.switched_at = state["switched_at"]
        self.history = [(int(s), float(f), float(r)) for s, f, r in state["history"]]
        self._reference = state["reference"]
        self._episode = _Window(state["episode"]["sum"], state["episode"]["count"])
        last = state["last_episode"]
        self._last_episode = None if last is None else _Window(last["sum"], last["count"])
        self._period = _Window(state["period"]["sum"], state["period"]["count"])


def make_controller(kind: str, **kwargs: Any) -> ReplayRatioController:
    """Build a controller: ``kind="static"`` (ratio=...) or ``"adaptive"`` (low=..., ...)."""
    if kind == "static":
        return StaticReplayRatio(**kwargs)
    if kind == "adaptive":
        return AdaptiveReplayRatio(**kwargs)
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
