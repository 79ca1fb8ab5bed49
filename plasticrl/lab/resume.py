"""``plasticrl resume``'s pieces: the RNG states a checkpoint carries, and the newest full-state checkpoint of a run.

A full-state checkpoint is ``checkpoints/<name>.zip`` (SB3's: parameters, optimizers, counters) with
``<name>.state.pt`` beside it (callbacks' clocks, the replay-ratio controller, the interventions' schedules, RNG
states, the W&B run id) and, with ``run.save_replay``, ``<name>.replay.pkl`` (the replay buffer).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from plasticrl.lab.config.base import ConfigError
from plasticrl.sb3 import state_path, step_checkpoints


def rng_state() -> dict[str, Any]:
    """The RNG states of torch (CPU, and CUDA once initialised), numpy's global RNG and Python's ``random``."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return {"torch": torch.get_rng_state(), "cuda": cuda, "numpy": np.random.get_state(), "random": random.getstate()}


def restore_rng(state: dict[str, Any]) -> None:
    """Sets the RNG states that ``rng_state`` returned."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(state["numpy"])
    random.setstate(state["random"])


def read_state(checkpoint: Path) -> dict[str, Any]:
    """The full state saved beside ``checkpoint`` (``<name>.state.pt``)."""
    return torch.load(state_path(checkpoint), map_location="cpu", weights_only=False)


def latest_checkpoint(run_dir: Path) -> tuple[Path, dict[str, Any]]:
    """The run's full-state checkpoint of the most env steps (``interrupted.zip`` or a ``step_<N>.zip``) and its
    state; ConfigError if the run has finished or has none."""
    folder = run_dir / "checkpoints"
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir}: not a run folder (no config.yaml); pass a folder that `plasticrl train` made")
    if (folder / "final.zip").is_file():
        raise ConfigError(f"{run_dir}: the run has finished ({folder / 'final.zip'}); nothing to resume")
    candidates = [p for p in [*step_checkpoints(folder), folder / "interrupted.zip"]
                  if p.is_file() and state_path(p).is_file()]
    if not candidates:
        raise ConfigError(f"{run_dir}: no checkpoint to resume from (checkpoints/interrupted.zip or step_<N>.zip with "
                          "its .state.pt); set run.checkpoint_every to save step checkpoints")
    found = [(read_state(p), p) for p in candidates]
    state, path = max(found, key=lambda sp: (sp[0]["num_timesteps"], sp[1].name == "interrupted.zip"))
    return path, state
