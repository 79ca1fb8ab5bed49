"""Named task sequences for continual RL (lists of `plasticrl.envs.make` ids).

Meta-World sequences follow Continual World (CW10/CW20); MT40 is the rest of MT50.
DMC sequences are meant to be used with state observations (`pixels=False`).
"""

from __future__ import annotations

_CW10_TASKS = [
    "hammer",
    "push-wall",
    "faucet-close",
    "push-back",
    "stick-pull",
    "handle-press-side",
    "push",
    "shelf-place",
    "window-close",
    "peg-unplug-side",
]

# The 50 Meta-World (MT50) task names, v3, in metaworld's MT50 order.
_MT50_TASKS = [
    "assembly", "basketball", "bin-picking", "box-close", "button-press-topdown",
    "button-press-topdown-wall", "button-press", "button-press-wall", "coffee-button",
    "coffee-pull", "coffee-push", "dial-turn", "disassemble", "door-close", "door-lock",
    "door-open", "door-unlock", "hand-insert", "drawer-close", "drawer-open",
    "faucet-open", "faucet-close", "hammer", "handle-press-side", "handle-press",
    "handle-pull-side", "handle-pull", "lever-pull", "pick-place-wall",
    "pick-out-of-hole", "pick-place", "plate-slide", "plate-slide-side",
    "plate-slide-back", "plate-slide-back-side", "peg-insert-side", "peg-unplug-side",
    "soccer", "stick-push", "stick-pull", "push", "push-wall", "push-back", "reach",
    "reach-wall", "shelf-place", "sweep-into", "sweep", "window-open", "window-close",
]  # fmt: skip

_DMC10_TASKS = [
    "cartpole-balance",
    "finger-turn_easy",
    "finger-turn_hard",
    "fish-upright",
    "hopper-stand",
    "pendulum-swingup",
    "point_mass-easy",
    "reacher-hard",
    "walker-stand",
    "walker-run",
]

_DMC6_TASKS = [
    "ball_in_cup-catch",
    "cartpole-swingup",
    "cheetah-run",
    "finger-spin",
    "reacher-easy",
    "walker-walk",
]


def _mw(names: list[str]) -> list[str]:
    return [f"metaworld:{name}-v3" for name in names]


def _dmc(names: list[str]) -> list[str]:
    return [f"dmc:{name}" for name in names]


SEQUENCES: dict[str, list[str]] = {
    "cw10": _mw(_CW10_TASKS),
    "cw20": _mw(_CW10_TASKS) * 2,
    "mt40": _mw([t for t in _MT50_TASKS if t not in _CW10_TASKS]),
    "dmc10": _dmc(_DMC10_TASKS),
    "dmc6": _dmc(_DMC6_TASKS),
}


def sequence(name: str) -> list[str]:
    """Return a copy of the env-id list of sequence `name` (e.g. "cw10")."""
    if name not in SEQUENCES:
        raise ValueError(
            f"Unknown sequence {name!r}; valid names: {', '.join(SEQUENCES)}"
        )
    return list(SEQUENCES[name])
