"""Environment registry: `make(env_id, **options)` is the one way to build envs.

Ids: `dmc:<domain>-<task>` (e.g. "dmc:walker-walk", "dmc:finger-turn_easy") and
`metaworld:<task>-v3` (e.g. "metaworld:push-v3"). `list_ids()` lists them all.
dm_control and metaworld are imported only when needed.
"""

from __future__ import annotations

import difflib
from typing import Any

import gymnasium as gym

from .sequences import SEQUENCES, sequence

__all__ = ["SEQUENCES", "check_id", "list_ids", "make", "sequence", "task_ids"]

PREFIXES = ("dmc", "metaworld")


def list_ids(prefix: str | None = None) -> list[str]:
    """All valid env ids, optionally only those of `prefix` ("dmc" or "metaworld")."""
    if prefix is not None and prefix not in PREFIXES:
        raise ValueError(f"Unknown prefix {prefix!r}; valid prefixes: {PREFIXES}")
    ids: list[str] = []
    if prefix in (None, "dmc"):
        from . import dmc

        ids += [f"dmc:{domain}-{task}" for domain, task in dmc.all_tasks()]
    if prefix in (None, "metaworld"):
        from . import metaworld_env

        ids += [f"metaworld:{name}" for name in metaworld_env.task_names()]
    return ids


def _unknown_id(env_id: str) -> ValueError:
    matches = difflib.get_close_matches(env_id, list_ids(), n=5, cutoff=0.6)
    hint = f"Did you mean: {', '.join(matches)}?" if matches else "No close matches."
    return ValueError(
        f"Unknown env id {env_id!r}. {hint} "
        f"List valid ids with envs.list_ids() or envs.list_ids('dmc'|'metaworld')."
    )


def _check_options(env_id: str, options: dict[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(
            f"Unknown option(s) {unknown} for {env_id!r}; allowed: {', '.join(allowed)}"
        )


def make(env_id: str, **options: Any) -> gym.Env:
    """Build the env `env_id`.

    dmc options: pixels=True, size=84, frame_stack=3, action_repeat=2,
    camera=None (2 for quadruped, else 0), seed=None.
    metaworld options: seed=0, max_episode_steps=200, randomization="random_init_all" (new object and goal
    positions at every reset, drawn from the reset seed, as Continual World and L2M).
    Raises ValueError for unknown ids and TypeError for unknown options.
    """
    prefix, _, name = env_id.partition(":")
    if prefix == "dmc":
        from . import dmc

        domain, _, task = name.partition("-")
        if (domain, task) not in dmc.all_tasks():
            raise _unknown_id(env_id)
        _check_options(env_id, options, dmc.OPTIONS)
        return dmc.DMCEnv(domain, task, **options)
    if prefix == "metaworld":
        from . import metaworld_env

        if name not in metaworld_env.task_names():
            raise _unknown_id(env_id)
        _check_options(env_id, options, metaworld_env.OPTIONS)
        return metaworld_env.MetaWorldEnv(name, **options)
    raise _unknown_id(env_id)


def check_id(env_id: str) -> None:
    """Raises ValueError (with close matches) unless ``env_id`` is a valid id; builds nothing, and imports only the
    suite of its prefix (a Meta-World id does not need dm_control)."""
    prefix = env_id.partition(":")[0]
    if env_id not in list_ids(prefix if prefix in PREFIXES else None):
        raise _unknown_id(env_id)


def task_ids(spec: str | list[str]) -> list[str]:
    """Env ids of ``spec``: comma-separated parts (or list items), each a sequence name, expanded in place, or an env
    id, e.g. ``"mt40,dmc10"`` (50 ids) or ``"cw10,dmc:walker-walk"``. Order and duplicates kept (cw20 repeats tasks).

    Raises ValueError (the registry's message, with close matches) for an unknown part, or for no parts at all."""
    parts = [p.strip() for p in spec.split(",")] if isinstance(spec, str) else [str(p).strip() for p in spec]
    parts = [p for p in parts if p]
    if not parts:
        raise ValueError(f"no tasks in {spec!r}: give sequence names or env ids, comma-separated (sequences: "
                         f"{', '.join(SEQUENCES)})")
    ids: list[str] = []
    for part in parts:
        if part in SEQUENCES:
            ids += sequence(part)
            continue
        close = difflib.get_close_matches(part, list(SEQUENCES), n=1)
        if close and ":" not in part:
            raise ValueError(f"unknown sequence {part!r}; did you mean {close[0]!r}? (sequences: "
                             f"{', '.join(SEQUENCES)}; or env ids like metaworld:push-v3)")
        check_id(part)
        ids.append(part)
    return ids
