"""The lab's errors, standard library only, so that the CLI can report them before any dependency is imported."""

from __future__ import annotations

# the distributions `pip install "plasticrl[lab]"` adds, by the top-level module a missing one leaves unimportable
LAB_MODULES = {"stable_baselines3": "stable-baselines3", "gymnasium": "gymnasium", "dm_control": "dm-control",
               "mujoco": "mujoco", "metaworld": "metaworld", "minari": "minari", "wandb": "wandb",
               "pydantic": "pydantic", "yaml": "pyyaml", "matplotlib": "matplotlib", "tqdm": "tqdm", "h5py": "h5py",
               "ray": "ray", "rliable": "rliable", "rich": "rich", "arch": "arch", "pandas": "pandas"}


class ConfigError(ValueError):
    """A config that can't be used: the message lists every problem, one per line."""


def missing_dependency(exc: ModuleNotFoundError) -> str | None:
    """A one-line fix for a missing lab dependency (``pip install "plasticrl[lab]"``), or None when ``exc`` is about
    another module."""
    top = (exc.name or "").split(".")[0]
    if top not in LAB_MODULES:
        return None
    return (f"{LAB_MODULES[top]} is not installed (module {top!r}); the plasticrl command needs the lab's "
            "dependencies: pip install \"plasticrl[lab]\" (from a clone: pip install -e \".[lab]\")")
