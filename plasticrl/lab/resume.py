"""``plasticrl resume``'s pieces: the RNG states and the envs' states a checkpoint carries, and the newest full-state
checkpoint of a run.

A full-state checkpoint is ``checkpoints/<name>.zip`` (SB3's: parameters, optimizers, counters) with
``<name>.state.pt`` beside it (callbacks' clocks, the replay-ratio controller, the interventions' schedules, RNG
states, the envs' states, the W&B run id) and, with ``run.save_replay``, ``<name>.replay.pkl`` (the replay buffer).
"""

from __future__ import annotations

import json
import os
import random
import socket
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from plasticrl.agents.drq.prefetch import PrefetchVecEnv
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


# The envs' state, so that a resumed run continues their episodes where they stopped. Per env of an SB3 VecEnv: its
# own state (``get_state()``, e.g. ``plasticrl.envs.dmc.DMCEnv``: MuJoCo's integration state, the task's
# RandomState, the frame stack) and the rewards its ``Monitor`` has summed for the episode so far; with
# ``PrefetchVecEnv`` (DrQ's async env step) also the step already started, finished first and kept with its results.
# Envs without ``get_state`` (Meta-World, other gymnasium envs) save nothing: a resumed run starts new episodes there.


def save_env_state(venv: Any) -> dict[str, Any] | None:
    """The state of every env of ``venv`` (picklable), or None when its envs cannot save theirs."""
    if venv is None:
        return None
    step = venv.settle() if isinstance(venv, PrefetchVecEnv) else None  # first: no query while a step is in flight
    if not venv.has_attr("get_state"):
        return None
    monitored = venv.has_attr("rewards")
    return {"envs": venv.env_method("get_state"),
            "episode_rewards": [list(r) for r in venv.get_attr("rewards")] if monitored else None,
            "started_step": step, "reset_seeds": list(venv.unwrapped._seeds)}  # SB3's, for its next reset()


def restore_env_state(venv: Any, state: dict[str, Any]) -> None:
    """Puts ``venv`` (built with the same config) in the saved state: each env continues its episode, its Monitor
    its episode return, and SB3's next ``reset()`` applies the seeds it would have applied (none once it has reset,
    as the saved RandomStates already follow from them)."""
    envs = state["envs"]
    if len(envs) != venv.num_envs:
        raise ConfigError(f"the checkpoint holds the state of {len(envs)} envs, the run has {venv.num_envs}: "
                          "resume with the run's own env.n_envs (its config.yaml was changed)")
    for i, env_state in enumerate(envs):
        try:
            venv.env_method("set_state", env_state, indices=i)
        except ValueError as exc:  # another env.id, env.pixels or MuJoCo than the checkpoint's
            raise ConfigError(f"{exc} (the run's config.yaml or installation changed)") from None
        if state["episode_rewards"] is not None:
            venv.set_attr("rewards", list(state["episode_rewards"][i]), indices=i)
            venv.set_attr("needs_reset", False, indices=i)
    venv.unwrapped._seeds = list(state["reset_seeds"])
    if state["started_step"] is not None:
        if not isinstance(venv, PrefetchVecEnv):
            raise ConfigError("the checkpoint was taken with an env step in flight (agent.async_env_step) and the "
                              "resumed run steps synchronously: resume with the run's own agent.async_env_step")
        venv.hold(*state["started_step"])


def read_state(checkpoint: Path) -> dict[str, Any]:
    """The full state saved beside ``checkpoint`` (``<name>.state.pt``)."""
    return torch.load(state_path(checkpoint), map_location="cpu", weights_only=False)


def check_run_folder(run_dir: Path) -> None:
    """ConfigError unless ``run_dir`` is a folder that ``plasticrl train`` made (it holds ``config.yaml``)."""
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir}: not a run folder (no config.yaml); pass a folder that `plasticrl train` made")


def latest_checkpoint(run_dir: Path) -> tuple[Path, dict[str, Any]]:
    """The run's full-state checkpoint of the most env steps (``interrupted.zip`` or a ``step_<N>.zip``) and its
    state; ConfigError if the run has finished or has none."""
    folder = run_dir / "checkpoints"
    check_run_folder(run_dir)
    if (folder / "final.zip").is_file():
        raise ConfigError(f"{run_dir}: the run has finished ({folder / 'final.zip'}); nothing to resume")
    remove_stale_temporaries(folder)
    candidates = [p for p in [*step_checkpoints(folder), folder / "interrupted.zip"]
                  if p.is_file() and state_path(p).is_file()]
    if not candidates:
        raise ConfigError(f"{run_dir}: no checkpoint to resume from (checkpoints/interrupted.zip or step_<N>.zip with "
                          "its .state.pt); set run.checkpoint_every to save step checkpoints")
    # a pair whose two files are of different steps (a kill between writing a new .state.pt and its .zip over an
    # older interrupted.zip) is not a checkpoint
    found = [(state, p) for p in candidates if (state := read_state(p))["num_timesteps"] == zip_num_timesteps(p)]
    if not found:
        raise ConfigError(f"{run_dir}: no whole checkpoint to resume from: each .zip in {folder} is damaged or has a "
                          ".state.pt of another step beside it (a kill during a save); start the run again")
    state, path = max(found, key=lambda sp: (sp[0]["num_timesteps"], sp[1].name == "interrupted.zip"))
    return path, state


def remove_stale_temporaries(folder: Path) -> None:
    """Deletes the partial files that a process killed mid-save left in ``folder`` (``plasticrl.sb3.atomic_write``'s
    ``.<name>.tmp-<host>-<pid>``, of a process of this host no longer running; another host's are kept, as this
    one cannot tell whether it still writes them)."""
    here = socket.gethostname()
    for tmp in folder.glob(".*.tmp-*"):
        host, _, pid = tmp.name.rsplit(".tmp-", 1)[-1].rpartition("-")
        if host in ("", here) and pid.isdigit() and not _running(int(pid)):
            tmp.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def zip_num_timesteps(checkpoint: Path) -> int | None:
    """The env steps an SB3 checkpoint was saved at (its ``data`` entry's ``num_timesteps``), without loading it;
    None for a file that is not a whole SB3 zip."""
    try:
        with zipfile.ZipFile(checkpoint) as archive:
            return int(json.loads(archive.read("data"))["num_timesteps"])
    except (zipfile.BadZipFile, KeyError, ValueError, OSError):
        return None
