"""Tests for plasticrl.replay_ratio (static and FAU-adaptive replay ratio)."""

from __future__ import annotations

import io
import math
import os
import subprocess
import sys
from fractions import Fraction

import pytest
import torch

from plasticrl.replay_ratio import (
    AdaptiveReplayRatio,
    ReplayRatioController,
    StaticReplayRatio,
    make_controller,
)

STEPS_PER_EPISODE = 4


def run_episodes(ctrl: ReplayRatioController, episodes: list[list[float]], as_tensor: bool = False) -> list[int]:
    """Each episode: per value, one transition then one observed FAU; then end_episode."""
    due = []
    for values in episodes:
        for v in values:
            due.append(ctrl.step())
            ctrl.observe(torch.tensor(v) if as_tensor else v)
        ctrl.end_episode()
    return due


def drive(ctrl: ReplayRatioController, events: list[tuple]) -> list[int]:
    """Replay events ("obs", v) / ("step", n) / ("end",); return step() results."""
    out = []
    for ev in events:
        if ev[0] == "obs":
            ctrl.observe(ev[1])
        elif ev[0] == "step":
            out.append(ctrl.step(ev[1]))
        else:
            ctrl.end_episode()
    return out


def const(v: float, n: int = STEPS_PER_EPISODE) -> list[float]:
    return [v] * n


# --------------------------------------------------------------------------- switching


def test_switches_exactly_once_at_first_plateau_check():
    ctrl = AdaptiveReplayRatio(check_every=2)
    fau = [0.5, 0.45, 0.44, 0.42, 0.43, 0.4205, 0.3, 0.4207, 0.1, 0.9, 0.2, 0.1]
    # checks after episodes 2, 4, 6, 8, 10, 12 see 0.45, 0.42, 0.4205, 0.4207, 0.9, 0.1
    run_episodes(ctrl, [const(v) for v in fau[:5]])
    assert ctrl.ratio == 0.5 and ctrl.switched_at is None
    run_episodes(ctrl, [const(v) for v in fau[5:6]])
    assert ctrl.ratio == 2.0
    assert ctrl.switched_at == 6 * STEPS_PER_EPISODE
    run_episodes(ctrl, [const(v) for v in fau[6:]])
    assert ctrl.switched_at == 6 * STEPS_PER_EPISODE  # no second switch
    assert ctrl.ratio == 2.0  # large later changes never switch back
    steps = [s for s, _, _ in ctrl.history]
    avgs = [a for _, a, _ in ctrl.history]
    ratios = [r for _, _, r in ctrl.history]
    assert steps == [k * 2 * STEPS_PER_EPISODE for k in range(1, 7)]
    assert avgs == pytest.approx([0.45, 0.42, 0.4205, 0.4207, 0.9, 0.1])
    assert ratios == [0.5, 0.5, 2.0, 2.0, 2.0, 2.0]


def test_low_ratio_in_force_until_switch():
    ctrl = AdaptiveReplayRatio(check_every=1)
    due = run_episodes(ctrl, [const(0.5), const(0.5005), const(0.7)])
    # episode 1 check: 0.5 vs first value 0.5 -> switch after 4 transitions at 0.5
    assert ctrl.switched_at == 4
    assert due[:4] == [0, 1, 0, 1]
    assert due[4:] == [2] * 8
    assert ctrl.updates == 2 + 16


@pytest.mark.parametrize(
    "ep1, ep2, switches",
    [
        # first value 0.45 is within tolerance of episode-2 avg; ep1 average (0.6125) is not
        ([0.45, 0.7, 0.6, 0.7], 0.4505, True),
        # ep1 average 0.5 equals episode-2 avg, but the very first value 0.8 does not
        ([0.8, 0.2, 0.5, 0.5], 0.5, False),
    ],
)
def test_first_reference_is_first_value_ever(ep1, ep2, switches):
    ctrl = AdaptiveReplayRatio(check_every=2)
    run_episodes(ctrl, [ep1, const(ep2)])
    assert len(ctrl.history) == 1
    assert (ctrl.switched_at is not None) is switches


def test_window_last_episode_ignores_earlier_episodes_of_period():
    # checks after ep2 and ep4; last-episode averages 0.3 then 0.3005 -> switch at ep4;
    # averaging the whole period would give 0.4 then 0.20025 -> no switch.
    eps = [const(0.5), const(0.3), const(0.1), const(0.3005)]
    last = AdaptiveReplayRatio(check_every=2, window="last_episode")
    run_episodes(last, eps)
    assert [a for _, a, _ in last.history] == pytest.approx([0.3, 0.3005])
    assert last.switched_at == 4 * STEPS_PER_EPISODE

    period = AdaptiveReplayRatio(check_every=2, window="since_last_check")
    run_episodes(period, eps)
    assert [a for _, a, _ in period.history] == pytest.approx([0.4, 0.20025])
    assert period.switched_at is None


def test_empty_window_skips_check():
    ctrl = AdaptiveReplayRatio(check_every=1)
    ctrl.step(10)
    ctrl.end_episode()  # no updates yet (e.g. seed frames): nothing to compare
    assert ctrl.history == [] and ctrl.switched_at is None
    run_episodes(ctrl, [const(0.4)])
    assert ctrl.history == [(14, pytest.approx(0.4), 2.0)]


# --------------------------------------------------------------------------- ratio arithmetic


@pytest.mark.parametrize("ratio", [0.5, 1, 2, 1.5, 0.25, 0.3, 1 / 3])
def test_fractional_ratios_exact(ratio):
    ctrl = StaticReplayRatio(ratio)
    exact = Fraction(repr(float(ratio)))
    total = 0
    for n in range(1, 2001):
        total += ctrl.step()
        assert total == ctrl.updates == math.floor(n * exact)
    assert ctrl.env_step == 2000
    chunked = StaticReplayRatio(ratio)
    assert sum(chunked.step(k) for k in [1, 7, 0, 992, 1000]) == ctrl.updates


def test_half_ratio_pattern_and_others():
    half = StaticReplayRatio(0.5)
    assert [half.step() for _ in range(8)] == [0, 1, 0, 1, 0, 1, 0, 1]
    one_half = StaticReplayRatio(1.5)
    assert [one_half.step() for _ in range(4)] == [1, 2, 1, 2]
    quarter = StaticReplayRatio(0.25)
    assert [quarter.step() for _ in range(8)] == [0, 0, 0, 1, 0, 0, 0, 1]
    two = StaticReplayRatio(2)
    assert [two.step() for _ in range(3)] == [2, 2, 2]


def test_ratio_change_mid_stream_keeps_bookkeeping():
    ctrl = AdaptiveReplayRatio(low=0.5, high=1.5, check_every=7, unit="steps")
    ctrl.observe(0.4)
    got = ctrl.step(10)  # 7 transitions at 0.5, check (0.4 vs 0.4 -> switch), 3 at 1.5
    assert ctrl.switched_at == 7
    assert got == math.floor(7 * Fraction(1, 2) + 3 * Fraction(3, 2))
    total = got
    for n in range(11, 200):
        total += ctrl.step()
        assert total == ctrl.updates == math.floor(7 * Fraction(1, 2) + (n - 7) * Fraction(3, 2))


# --------------------------------------------------------------------------- unit="steps"


def test_unit_steps_checks_every_n_transitions():
    ctrl = AdaptiveReplayRatio(check_every=10, unit="steps", window="since_last_check")
    values = [0.9, 0.7, 0.6, 0.5, 0.5004, 0.1]
    for v in values[:3]:
        ctrl.observe(v)
        ctrl.step(10)
    ctrl.observe(values[3])
    ctrl.step(25)  # crosses 40 (check) and 50 (empty window -> skipped)
    assert ctrl.env_step == 55
    ctrl.observe(values[4])
    ctrl.step(5)
    ctrl.observe(values[5])
    ctrl.step(10)
    assert [s for s, _, _ in ctrl.history] == [10, 20, 30, 40, 60, 70]
    assert [a for _, a, _ in ctrl.history] == pytest.approx([0.9, 0.7, 0.6, 0.5, 0.5004, 0.1])
    assert ctrl.switched_at == 10  # first average 0.9 equals the first value 0.9
    assert ctrl.episodes == 0


def test_unit_steps_last_episode_window():
    ctrl = AdaptiveReplayRatio(check_every=10, unit="steps", window="last_episode")
    drive(ctrl, [("obs", 0.5), ("end",), ("obs", 0.3), ("obs", 0.3), ("end",), ("obs", 0.9), ("step", 10)])
    assert ctrl.history[-1] == (10, pytest.approx(0.3), 0.5)  # last completed episode
    drive(ctrl, [("obs", 0.7), ("step", 10)])  # no episode ended: values since check 10
    assert ctrl.history[-1] == (20, pytest.approx(0.7), 0.5)  # 0.9 came before check 10
    drive(ctrl, [("obs", 0.7003), ("step", 10)])
    assert ctrl.history[-1] == (30, pytest.approx(0.7003), 2.0)
    assert ctrl.switched_at == 30


# --------------------------------------------------------------------------- tensors


def dyadic_episodes() -> list[list[float]]:
    vals = [512, 400, 300, 301, 100, 300, 200, 300]  # /1024: exact in float32 and float64
    return [[v / 1024, (v + 2) / 1024, (v - 2) / 1024, v / 1024] for v in vals]


def test_tensor_inputs_match_floats():
    floats = AdaptiveReplayRatio(check_every=2, tolerance=2 / 1024)
    tensors = AdaptiveReplayRatio(check_every=2, tolerance=2 / 1024)
    d_f = run_episodes(floats, dyadic_episodes())
    d_t = run_episodes(tensors, dyadic_episodes(), as_tensor=True)
    assert d_f == d_t
    assert floats.history == tensors.history
    assert floats.switched_at == tensors.switched_at == 6 * STEPS_PER_EPISODE
    assert all(type(a) is float for _, a, _ in tensors.history)
    assert floats.log_dict() == tensors.log_dict()


def test_tensor_inputs_read_back_once_per_check(monkeypatch):
    reads = []
    for name in ("item", "tolist", "__float__", "cpu", "numpy"):
        orig = getattr(torch.Tensor, name)

        def spy(self, *a, _orig=orig, _name=name, **k):
            reads.append(_name)
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, spy)
    ctrl = AdaptiveReplayRatio(check_every=2)
    episodes = [[torch.tensor(v) for v in ep] for ep in dyadic_episodes()]
    for ep in episodes:
        for v in ep:
            ctrl.step()
            ctrl.observe(v)
        ctrl.end_episode()
    monkeypatch.undo()
    assert len(ctrl.history) == 4
    assert reads == ["tolist"] * 4


def test_tensor_shape_validation():
    with pytest.raises(ValueError, match="fau"):
        AdaptiveReplayRatio().observe(torch.ones(3))


# --------------------------------------------------------------------------- state


def roundtrip(state: dict) -> dict:
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def scripted_events(as_tensor: bool) -> list[tuple]:
    """check_every=2 episodes; the 4th episode is split by the save point."""
    mk = (lambda v: torch.tensor(v, dtype=torch.float64)) if as_tensor else float
    ev: list[tuple] = []
    for v in [0.5, 0.41]:
        ev += [("step", 1), ("obs", mk(v))] * 3 + [("end",)]
    ev += [("step", 1), ("obs", mk(0.9))] * 3 + [("end",)]
    ev += [("step", 1), ("obs", mk(0.40))] * 3 + [("step", 1)]  # save here: mid-episode
    ev += [("obs", mk(0.4209))] * 3 + [("step", 2), ("end",)]
    # ep4 average (3*0.40 + 3*0.4209)/6 = 0.41045 is within 1e-3 of 0.41; 0.4209 alone is not
    ev += [("step", 1), ("obs", mk(0.2))] * 5 + [("end",)]
    return ev


@pytest.mark.parametrize("as_tensor", [False, True])
def test_state_roundtrip_mid_episode_continues_identically(as_tensor):
    events = scripted_events(as_tensor)
    cut = 3 * 7 + 6 + 1  # after the 4th episode's pending observations and odd env_step
    ref = AdaptiveReplayRatio(check_every=2)
    ref_out = drive(ref, events)
    assert ref.switched_at == 15 and ref.history[1][1] == pytest.approx(0.41045)

    first = AdaptiveReplayRatio(check_every=2)
    out = drive(first, events[:cut])
    assert first.env_step == 13 and first._credit != 0  # fractional update pending
    resumed = AdaptiveReplayRatio(check_every=2)
    resumed.load_state_dict(roundtrip(first.state_dict()))
    out += drive(resumed, events[cut:])
    assert out == ref_out
    assert resumed.history == ref.history
    assert resumed.switched_at == ref.switched_at
    assert resumed.updates == ref.updates and resumed.env_step == ref.env_step
    assert resumed.episodes == ref.episodes
    assert resumed.log_dict() == ref.log_dict()


def test_state_roundtrip_unit_steps_and_static():
    events = [("obs", 0.5), ("step", 3), ("end",), ("obs", 0.45), ("step", 4), ("obs", 0.2), ("step", 6)]
    events += [("obs", 0.4504), ("step", 3), ("end",), ("obs", 0.1), ("step", 20)]
    for cut in range(len(events) + 1):
        ref = AdaptiveReplayRatio(check_every=5, unit="steps", low=0.25, high=1.5)
        ref_out = drive(ref, events)
        a = AdaptiveReplayRatio(check_every=5, unit="steps", low=0.25, high=1.5)
        out = drive(a, events[:cut])
        b = AdaptiveReplayRatio(check_every=5, unit="steps", low=0.25, high=1.5)
        b.load_state_dict(roundtrip(a.state_dict()))
        out += drive(b, events[cut:])
        assert (out, b.history, b.switched_at, b.updates) == (ref_out, ref.history, ref.switched_at, ref.updates)
    static = StaticReplayRatio(0.25)
    static.step(3)
    again = StaticReplayRatio(0.25)
    again.load_state_dict(roundtrip(static.state_dict()))
    assert again.step() == 1 and again.updates == 1


# --------------------------------------------------------------------------- misc API


def test_log_dict():
    ctrl = AdaptiveReplayRatio(check_every=1)
    d = ctrl.log_dict()
    assert d["replay_ratio/ratio"] == 0.5 and d["replay_ratio/updates"] == 0
    assert math.isnan(d["replay_ratio/critic_fau_avg"])
    run_episodes(ctrl, [const(0.25)])
    assert ctrl.log_dict() == {
        "replay_ratio/ratio": 2.0,
        "replay_ratio/critic_fau_avg": 0.25,
        "replay_ratio/updates": 2.0,
    }
    assert StaticReplayRatio(1.5).log_dict() == {"replay_ratio/ratio": 1.5, "replay_ratio/updates": 0.0}


def test_make_controller():
    s = make_controller("static", ratio=1.5)
    a = make_controller("adaptive", low=0.25, check_every=3, unit="steps")
    assert isinstance(s, StaticReplayRatio) and s.ratio == 1.5
    assert isinstance(a, AdaptiveReplayRatio) and a.ratio == 0.25 and a.unit == "steps"
    with pytest.raises(ValueError, match=r"kind.*'static'.*'adaptive'.*'dynamic'"):
        make_controller("dynamic")


@pytest.mark.parametrize(
    "make, pattern",
    [
        (lambda: StaticReplayRatio(0), r"ratio.*> 0.*got 0"),
        (lambda: StaticReplayRatio(-1.5), r"ratio.*> 0.*got -1.5"),
        (lambda: AdaptiveReplayRatio(low=0.0), r"low.*> 0.*got 0.0"),
        (lambda: AdaptiveReplayRatio(high=float("nan")), r"high.*> 0.*got nan"),
        (lambda: AdaptiveReplayRatio(check_every=0), r"check_every.*>= 1.*got 0"),
        (lambda: AdaptiveReplayRatio(check_every=2.5), r"check_every.*>= 1.*got 2.5"),
        (lambda: AdaptiveReplayRatio(unit="epochs"), r"unit.*'episodes', 'steps'.*got 'epochs'"),
        (lambda: AdaptiveReplayRatio(window="all"), r"window.*'last_episode', 'since_last_check'.*got 'all'"),
        (lambda: AdaptiveReplayRatio(tolerance=-1e-3), r"tolerance.*>= 0.*got -0.001"),
        (lambda: StaticReplayRatio(1).step(-1), r"n_transitions.*>= 0.*got -1"),
    ],
)
def test_validation_errors(make, pattern):
    with pytest.raises(ValueError, match=pattern):
        make()


def test_import_does_not_pull_stable_baselines3():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = "import sys, plasticrl.replay_ratio; print('stable_baselines3' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": root}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"


def test_episodes_ending_together_share_one_window_and_cross_the_check():
    """Parallel envs: 3 episodes end in one vector step. The check at episode 4 (check_every=4) is passed by the
    jump from 3 to 6 episodes and uses the values observed since the previous end_episode call."""
    c = AdaptiveReplayRatio(check_every=4, tolerance=0.01)
    c.observe(0.5)          # first reference
    c.end_episode(3)        # episodes 1-3: no check yet
    assert c.history == []
    c.observe(0.9)
    c.observe(0.7)          # window of the next call: mean 0.8
    c.end_episode(3)        # episodes 4-6: crosses 4 -> check
    assert len(c.history) == 1 and c.history[0][1] == pytest.approx(0.8)
    assert c.switched_at is None  # |0.8 - 0.5| > 0.01
    c.observe(0.805)
    c.end_episode(2)        # episodes 7-8: reaches 8 -> check, |0.805 - 0.8| <= 0.01 -> switch
    assert c.switched_at == 0 and c.ratio == 2.0
    with pytest.raises(ValueError, match="episodes that ended"):
        c.end_episode(0)


def test_skip_counts_transitions_without_owing_updates():
    """A warm-up of 3 transitions at ratio 0.5, then 5 trained ones: env_step 8, updates floor(0.5 * 5) = 2 (not
    floor(0.5 * 8) = 4); with unit="steps" a check still falls on a multiple crossed during the warm-up, and the
    4 transitions after it owe 2 x 4 updates."""
    ctrl = StaticReplayRatio(0.5)
    ctrl.skip(3)
    assert (ctrl.env_step, ctrl.updates) == (3, 0)
    assert [ctrl.step(1) for _ in range(5)] == [0, 1, 0, 1, 0]
    assert (ctrl.env_step, ctrl.updates) == (8, 2)
    adaptive = AdaptiveReplayRatio(low=0.5, high=2.0, check_every=4, unit="steps", tolerance=1.0)
    adaptive.observe(0.5)
    adaptive.skip(4)  # the check at env step 4 runs during the warm-up (within tolerance: switch to 2)
    assert adaptive.switched_at == 4 and adaptive.updates == 0
    assert adaptive.step(4) == 8 and adaptive.updates == 8
    with pytest.raises(ValueError, match="n_transitions must be an int >= 0"):
        ctrl.skip(-1)
