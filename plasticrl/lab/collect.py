"""Offline-RL datasets in Minari format from Meta-World's scripted policies or a trained agent checkpoint.

One dataset per task, written by ``minari.create_dataset_from_buffers`` (no jax: only ``minari[hdf5]`` is needed) under
a folder of your choice (``MINARI_DATASETS_PATH`` is pointed there while collecting). Dataset ids:
``plasticrl/<task>/scripted-noise<std>-ep<episodes>-seed<seed>-<randomization>-v0`` (everything that made it) and
``plasticrl/<task>/<agent>-<checkpoint>-<deterministic|stochastic>-v0``, where ``<task>`` is the env id without its
prefix (``push-v3``, ``walker-walk``) and ``.`` in numbers is written ``p`` (Minari names allow only ``[-_\\w]``).
Every dataset's ``metadata.json`` also records its provenance under ``PROVENANCE_KEY``: env id, policy or checkpoint
(path and SHA-256), noise, episodes, reset seeds, Meta-World randomization and episode length
(``read_provenance``).
Load with ``with datasets_path(out_dir): minari.load_dataset(dataset_id)``.

A dataset is written under ``<out>/.incomplete/<pid>-<n>/`` (a hidden folder: minari does not list it) and moved to
its id only once every episode is in, so an interrupted or killed collect never leaves a short dataset under the
final id; SIGTERM and Ctrl-C remove the partial one, and a killed process's is removed by the next collect.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import minari
import numpy as np
from minari.data_collector import EpisodeBuffer
from minari.data_collector.callbacks import EpisodeMetadataCallback
from minari.namespace import create_namespace, list_local_namespaces
from minari.utils import parse_dataset_id

from plasticrl import envs
from plasticrl.envs import metaworld_env
from plasticrl.lab.config.base import ConfigError
from plasticrl.lab.config.train import load as load_train_config
from plasticrl.lab.runtime import resolve_device
from plasticrl.lab.train import env_options, load_agent

DEFAULT_OUT = Path("data")
Policy = Callable[[np.ndarray], np.ndarray]
PROVENANCE_KEY = "plasticrl_provenance"  # the metadata.json entry that records how a dataset was made
RANDOMIZATION = "random_init_all"  # Meta-World starts of every collected episode (Continual World's protocol)
MAX_EPISODE_STEPS = 200  # Meta-World episodes of collected data (Continual World's horizon)
STAGING = ".incomplete"  # <out>/.incomplete/<pid>-<n>/: datasets being written, moved to <out>/<id> when complete


@contextlib.contextmanager
def datasets_path(out_dir: str | Path) -> Iterator[Path]:
    """Points minari (``MINARI_DATASETS_PATH``) at ``out_dir`` inside the block; restores the previous value."""
    out = Path(out_dir).resolve()
    previous = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(out)
    try:
        yield out
    finally:
        if previous is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = previous


def resolve_tasks(spec: str) -> list[str]:
    """Env ids of ``spec`` (``plasticrl.envs.task_ids``: sequence names and env ids, comma-separated, e.g.
    ``mt40,dmc10``); duplicates dropped, order kept.

    Raises ValueError (the registry's message, with close matches) for an unknown part.
    """
    return list(dict.fromkeys(envs.task_ids(spec)))


def _number(x: float) -> str:
    return f"{x:g}".replace(".", "p")


def _task(env_id: str) -> str:
    return env_id.partition(":")[2]


def scripted_dataset_id(env_id: str, noise_std: float, episodes: int, seed: int) -> str:
    """``plasticrl/<task>/scripted-noise<std>-ep<episodes>-seed<seed>-random_init_all-v0``, e.g.
    ``plasticrl/push-v3/scripted-noise0p1-ep100-seed0-random_init_all-v0``: another setting is another dataset."""
    return f"plasticrl/{_task(env_id)}/scripted-noise{_number(noise_std)}-ep{episodes}-seed{seed}-{RANDOMIZATION}-v0"


def scripted_provenance(env_id: str, noise_std: float, episodes: int, seed: int) -> dict[str, Any]:
    """What a scripted dataset's provenance records (``collect_scripted`` writes it, the continual runner checks it
    on reuse): episode i resets with seed ``seed + i``, the noise generator is seeded with ``seed``."""
    return {"env_id": env_id, "policy": "metaworld-scripted", "noise_std": float(noise_std), "episodes": episodes,
            "reset_seeds": [seed, seed + episodes - 1], "noise_seed": seed, "randomization": RANDOMIZATION,
            "max_episode_steps": MAX_EPISODE_STEPS}


def read_provenance(out_dir: str | Path, dataset_id: str) -> dict[str, Any] | None:
    """The provenance recorded in dataset ``dataset_id``'s metadata.json under ``out_dir`` (None if it has none)."""
    metadata = json.loads((Path(out_dir) / dataset_id / "data" / "metadata.json").read_text())
    return metadata.get(PROVENANCE_KEY)


def provenance_differences(recorded: dict[str, Any] | None, wanted: dict[str, Any]) -> list[str]:
    """``"key: <recorded> there, <wanted> wanted"`` for every entry of ``wanted`` the recorded provenance does not
    match (every entry when there is none)."""
    recorded = recorded or {}
    return [f"{k}: {recorded.get(k, 'not recorded')} there, {v} wanted" for k, v in wanted.items()
            if recorded.get(k) != v]


def _sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def agent_dataset_id(env_id: str, agent: str, checkpoint: str | Path, deterministic: bool) -> str:
    """``plasticrl/<task>/<agent>-<checkpoint stem>-<deterministic|stochastic>-v0``."""
    stem = re.sub(r"[^-\w]", "_", Path(checkpoint).stem)
    mode = "deterministic" if deterministic else "stochastic"
    return f"plasticrl/{_task(env_id)}/{agent}-{stem}-{mode}-v0"


def check_new(dataset_id: str, out_dir: str | Path) -> None:
    """Raises ValueError if ``dataset_id`` already exists under ``out_dir`` (Minari never overwrites)."""
    if (Path(out_dir) / dataset_id).exists():
        raise ValueError(f"dataset {dataset_id!r} already exists in {out_dir}; remove it or choose another --out")


def check_scripted(env_id: str, episodes: int, noise_std: float) -> None:
    """Raises ValueError unless ``env_id`` is a Meta-World id with a scripted policy and the arguments are valid."""
    envs.check_id(env_id)
    if not env_id.startswith("metaworld:"):
        raise ValueError(f"{env_id!r}: scripted policies exist only for metaworld:<task>-v3 tasks; "
                         "use --checkpoint for other envs")

    metaworld_env.scripted_policy(_task(env_id))  # raises for a task without one
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if not noise_std >= 0:
        raise ValueError(f"noise std must be >= 0, got {noise_std}")


def noisy_scripted_policy(task: str, noise_std: float, seed: int) -> Policy:
    """Meta-World's scripted policy for ``task`` plus N(0, noise_std^2) noise per action dimension (action units,
    the action space is [-1, 1]), clipped to [-1, 1]; the noise comes from ``np.random.default_rng(seed)``."""

    policy = metaworld_env.scripted_policy(task)
    rng = np.random.default_rng(seed)

    def act(obs: np.ndarray) -> np.ndarray:
        action = np.asarray(policy.get_action(obs), dtype=np.float64)
        return np.clip(action + rng.normal(0.0, noise_std, action.shape), -1.0, 1.0).astype(np.float32)

    return act


def _info_filter(env_id: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Infos need the same keys at reset and every step. Meta-World's reset info is empty and its step info has 7
    reward terms, so only ``success`` is kept (0.0 at reset); dmc's ``{"frames"}`` is kept as is."""
    if env_id.startswith("metaworld:"):
        return lambda info: {"success": float(info.get("success", 0.0))}
    return dict


def _stack(items: list[Any]) -> Any:
    """Per-step values -> the layout minari's ``EpisodeBuffer`` holds: one list per leaf, dicts and tuples kept as
    nested structure (what ``minari.DataCollector`` built with jax's tree_map)."""
    first = items[0]
    if isinstance(first, dict):
        return {key: _stack([item[key] for item in items]) for key in first}
    if isinstance(first, tuple):
        return tuple(_stack([item[i] for item in items]) for i in range(len(first)))
    return list(items)


def record_episodes(env: Any, act: Policy, episodes: int, seed: int, label: str,
                    info_filter: Callable[[dict[str, Any]], dict[str, Any]] = dict
                    ) -> Iterator[tuple[Any, float, bool]]:
    """Runs ``episodes`` episodes of ``act`` on ``env`` (episode i reset with seed ``seed + i``) and yields each as
    ``(buffer, return, success)``: ``buffer`` a ``minari.data_collector.EpisodeBuffer`` with observations (T+1),
    actions, rewards, terminations, truncations (T) and ``info_filter(info)`` from reset and every step (T+1).
    Prints each episode's steps, return (sum of rewards) and success (``info["success"]`` = 1 at any step)."""

    for episode in range(episodes):
        obs, info = env.reset(seed=seed + episode)
        observations, infos = [obs], [info_filter(info)]
        actions: list[Any] = []
        rewards: list[Any] = []
        terminations: list[Any] = []
        truncations: list[Any] = []
        ret, success, done = 0.0, False, False
        while not done:
            action = act(obs)
            obs, reward, terminated, truncated, info = env.step(action)
            observations.append(obs)
            actions.append(action)
            rewards.append(reward)
            terminations.append(terminated)
            truncations.append(truncated)
            infos.append(info_filter(info))
            ret += float(reward)
            success = success or float(info.get("success", 0.0)) >= 1.0
            done = terminated or truncated
        steps = len(actions)
        print(f"{label} episode {episode}: steps {steps}  return {ret:.3f}  success {int(success)}", flush=True)
        yield EpisodeBuffer(id=episode, seed=seed + episode, observations=_stack(observations),
                            actions=_stack(actions), rewards=rewards, terminations=terminations,
                            truncations=truncations, infos=_stack(infos)), ret, success


def _remove_stale_staging(out_dir: Path) -> None:
    """Removes the staging folders (``STAGING``) that processes no longer running left behind (killed collects)."""
    for folder in sorted((out_dir / STAGING).glob("*-*")):
        pid = folder.name.split("-")[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:  # alive, another user's
            pass


def _publish(staging: Path, out_dir: Path, dataset_id: str) -> None:
    """Moves the complete dataset ``dataset_id`` from root ``staging`` to root ``out_dir`` (one rename) and registers
    its namespace there, as ``minari.create_dataset_from_buffers`` does."""
    final = out_dir / dataset_id
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        raise ValueError(f"dataset {dataset_id!r} appeared in {out_dir} while this one was collected; remove one")
    (staging / dataset_id).rename(final)
    namespace = parse_dataset_id(dataset_id)[0]
    with datasets_path(out_dir):
        if namespace is not None and namespace not in list_local_namespaces():
            with contextlib.suppress(ValueError):  # another process created it meanwhile
                create_namespace(namespace)


def _collect(env_id: str, env: Any, act: Policy, episodes: int, seed: int, out_dir: Path, dataset_id: str,
             algorithm: str, description: str, provenance: dict[str, Any] | None = None) -> str:
    """Collects ``episodes`` episodes of ``act`` on ``env`` into Minari dataset ``dataset_id`` under ``out_dir``;
    ``provenance``, if given, goes into its metadata under ``PROVENANCE_KEY``.

    The dataset is created (``minari.create_dataset_from_buffers``) from the first episode and each later episode is
    appended as it ends, so only one episode is held in memory. It is written in a staging folder
    (``STAGING``) and moved to ``out_dir`` when complete; if collection fails, the staging folder is removed."""

    returns: list[float] = []
    successes: list[bool] = []
    dataset = None
    check_new(dataset_id, out_dir)
    _remove_stale_staging(out_dir)
    (out_dir / STAGING).mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=out_dir / STAGING))
    try:
        with datasets_path(staging), warnings.catch_warnings():
            # metaworld's policies warn that their gains exceed [-1, 1] (actions are clipped); minari warns about
            # metadata plasticrl doesn't have (author_email, code_permalink, a gymnasium env spec).
            warnings.filterwarnings("ignore", message="Constant", category=UserWarning)
            warnings.filterwarnings("ignore", category=UserWarning, module=r"minari\.")
            for buffer, ret, success in record_episodes(env, act, episodes, seed, _task(env_id),
                                                        _info_filter(env_id)):
                if dataset is None:
                    dataset = minari.create_dataset_from_buffers(
                        dataset_id, [buffer], env=env, algorithm_name=algorithm, author="plasticrl",
                        description=description, jpeg_encoding=False)
                else:
                    dataset.storage.update_episodes([buffer])
                returns.append(ret)
                successes.append(success)
            # per-episode rewards_sum/mean/std/max/min attributes, as minari.DataCollector writes them
            dataset.storage.update_episode_metadata(dataset.storage.apply(EpisodeMetadataCallback()))
            if provenance is not None:
                dataset.storage.update_metadata({PROVENANCE_KEY: provenance})
        _publish(staging, out_dir, dataset_id)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        with contextlib.suppress(OSError):
            (out_dir / STAGING).rmdir()  # when no other collect is writing
        env.close()
    print(f"{_task(env_id)}: {episodes} episodes  mean return {np.mean(returns):.3f}  "
          f"success rate {np.mean(successes):.2f}  -> {dataset_id} in {out_dir}", flush=True)
    return dataset_id


def collect_scripted(task_id: str, episodes: int, noise_std: float, seed: int,
                     out_dir: str | Path = DEFAULT_OUT) -> str:
    """Writes ``episodes`` episodes of Meta-World's scripted policy on ``task_id`` (``metaworld:<task>-v3``) with
    Gaussian action noise of std ``noise_std`` (action units, clipped to [-1, 1]) as a Minari dataset under
    ``out_dir``; returns its id (``scripted_dataset_id``). Episode i resets with seed ``seed + i``: new object and
    goal positions from that seed (random_init_all); the noise comes from ``seed``. The provenance
    (``scripted_provenance``) goes into the metadata. Validates before writing anything."""
    check_scripted(task_id, episodes, noise_std)
    dataset_id = scripted_dataset_id(task_id, noise_std, episodes, seed)
    check_new(dataset_id, out_dir)
    env = envs.make(task_id, seed=seed, max_episode_steps=MAX_EPISODE_STEPS, randomization=RANDOMIZATION)
    act = noisy_scripted_policy(_task(task_id), noise_std, seed)
    return _collect(task_id, env, act, episodes, seed, Path(out_dir), dataset_id, algorithm="metaworld-scripted",
                    description=f"Meta-World scripted policy on {task_id}, {RANDOMIZATION} starts from reset seeds "
                                f"{seed}..{seed + episodes - 1}, action noise std {noise_std}",
                    provenance=scripted_provenance(task_id, noise_std, episodes, seed))


def run_config(checkpoint: str | Path) -> Any:
    """The ``plasticrl train`` config of the run a checkpoint in ``<run>/checkpoints/`` belongs to, else None."""
    config = Path(checkpoint).resolve().parent.parent / "config.yaml"
    if not config.is_file():
        return None
    return load_train_config(config)


def agent_env_options(env_id: str, checkpoint: str | Path) -> dict[str, Any]:
    """Env options the agent was trained with: from ``<run>/config.yaml`` when the checkpoint sits in
    ``<run>/checkpoints/``, else ``plasticrl.envs.make``'s defaults."""
    cfg = run_config(checkpoint) if env_id.startswith("dmc:") else None
    if cfg is None:
        return {}
    return env_options(cfg)


def run_checkpoints(runs_dir: str | Path) -> list[tuple[str, str, Path]]:
    """``(env id, agent kind, checkpoints/final.zip)`` of each ``plasticrl train`` run folder under ``runs_dir``
    (any depth), read from its ``config.yaml``. ValueError when there is none, or two runs share an env id."""
    found: dict[str, tuple[str, str, Path]] = {}
    for checkpoint in sorted(Path(runs_dir).rglob("checkpoints/final.zip")):
        cfg = run_config(checkpoint)
        if cfg is None:
            continue
        if cfg.env.id in found:
            raise ValueError(f"two runs of {cfg.env.id} under {runs_dir}: {found[cfg.env.id][2].parent.parent} and "
                             f"{checkpoint.parent.parent}; keep one there or use --checkpoint")
        found[cfg.env.id] = (cfg.env.id, cfg.agent.kind, checkpoint)
    if not found:
        raise ValueError(f"no run folder (config.yaml, checkpoints/final.zip) under {str(runs_dir)!r}")
    return list(found.values())


def collect_agent(task_id: str, checkpoint: str | Path, episodes: int, seed: int, out_dir: str | Path = DEFAULT_OUT,
                  agent: str = "drq", deterministic: bool = True, device: str = "auto") -> str:
    """Writes ``episodes`` episodes of the agent in ``checkpoint`` acting on ``task_id`` (deterministic: the mean
    action; else sampled, torch seeded with ``seed``) as a Minari dataset under ``out_dir``; returns its id.
    dmc envs are built with the run's env options (see ``agent_env_options``) and seed ``seed``."""
    envs.check_id(task_id)
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    dataset_id = agent_dataset_id(task_id, agent, checkpoint, deterministic)
    check_new(dataset_id, out_dir)
    model = load_agent(agent, checkpoint, device)
    model.set_random_seed(seed)
    env = envs.make(task_id, seed=seed, **agent_env_options(task_id, checkpoint))
    if env.observation_space != model.observation_space or env.action_space != model.action_space:
        env.close()
        raise ValueError(f"{checkpoint} was trained on observations {model.observation_space} and actions "
                         f"{model.action_space}; {task_id} gives {env.observation_space} and {env.action_space}")

    def act(obs: np.ndarray) -> np.ndarray:
        return model.predict(obs, deterministic=deterministic)[0]

    options = agent_env_options(task_id, checkpoint)
    provenance = {"env_id": task_id, "policy": f"{agent} checkpoint", "checkpoint": str(Path(checkpoint).resolve()),
                  "checkpoint_sha256": _sha256(checkpoint), "deterministic": deterministic, "episodes": episodes,
                  "reset_seeds": [seed, seed + episodes - 1], "env_options": options,
                  "randomization": RANDOMIZATION if task_id.startswith("metaworld:") else None}
    return _collect(task_id, env, act, episodes, seed, Path(out_dir), dataset_id, algorithm=f"plasticrl-{agent}",
                    description=f"{agent} checkpoint {Path(checkpoint).name} on {task_id} (reset seeds {seed}.."
                                f"{seed + episodes - 1}), {'deterministic' if deterministic else 'stochastic'} actions",
                    provenance=provenance)


def plan_jobs(tasks: str | None, runs: str | None, checkpoint: str | None, agent: str | None, episodes: int,
              noise_std: float, out: str | Path, stochastic: bool, seed: int = 0) -> list[tuple[str, str | None, str]]:
    """``(task, checkpoint or None for the scripted policy, agent)`` per dataset to write; ValueError for an unknown
    task, a dataset that exists, a checkpoint that doesn't load, an ``--agent`` that isn't the run's, an ``--out`` or
    ``--runs`` that is not a folder."""
    if Path(out).exists() and not Path(out).is_dir():
        raise ValueError(f"--out {out}: is a file; give a folder for the datasets (created if missing)")
    existing = next(p for p in [Path(out).absolute(), *Path(out).absolute().parents] if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK):  # a read-only mount, a file: before collecting
        raise ValueError(f"--out {out}: {existing} is not a writable folder; give a folder where the datasets can be "
                         "written")
    if runs is not None and not Path(runs).is_dir():
        raise ValueError(f"--runs {runs}: no such folder; give the folder of `plasticrl train` runs (run.out_dir)")
    if runs is not None:
        if checkpoint is not None:
            raise ValueError("--runs and --checkpoint exclude each other: --runs takes each run's final.zip")
        found = {task: (str(ckpt), kind) for task, kind, ckpt in run_checkpoints(runs)}
        wanted = resolve_tasks(tasks) if tasks else list(found)
        missing = [task for task in wanted if task not in found]
        if missing:
            raise ValueError(f"no run under {runs} trained on {', '.join(missing)}")
        jobs: list[tuple[str, str | None, str]] = [(task, *found[task]) for task in wanted]
    elif tasks is None:
        raise ValueError("give --tasks (scripted policies, or with --checkpoint) or --runs")
    elif checkpoint is None:
        jobs = [(task, None, "scripted") for task in resolve_tasks(tasks)]
    else:
        cfg = run_config(checkpoint)
        kind = agent or (cfg.agent.kind if cfg is not None else "drq")
        jobs = [(task, checkpoint, kind) for task in resolve_tasks(tasks)]
    for task, job_checkpoint, job_agent in jobs:
        if job_checkpoint is None:
            check_scripted(task, episodes, noise_std)
            check_new(scripted_dataset_id(task, noise_std, episodes, seed), out)
            continue
        cfg = run_config(job_checkpoint)
        if agent is not None and cfg is not None and cfg.agent.kind != agent:
            raise ValueError(f"--agent {agent}: {job_checkpoint} is from a run with agent.kind={cfg.agent.kind}")
        check_new(agent_dataset_id(task, job_agent, job_checkpoint, not stochastic), out)
        load_agent(job_agent, job_checkpoint, "cpu")
    return jobs


def collect_all(tasks: str | None = None, runs: str | None = None, checkpoint: str | None = None,
                agent: str | None = None, episodes: int = 10, noise_std: float = 0.0, seed: int = 0,
                out: str | Path = DEFAULT_OUT, stochastic: bool = False, device: str = "auto") -> dict[str, str]:
    """``plasticrl collect``: checks every job (``plan_jobs``) before writing anything, then writes the datasets;
    prints and returns the ids of the agent datasets by task (what a continual config's ``data.dataset_ids`` takes).
    ConfigError for a job that can't be done."""
    try:  # validate every task before anything is written
        jobs = plan_jobs(tasks, runs, checkpoint, agent, episodes, noise_std, out, stochastic, seed)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    written: dict[str, str] = {}
    done: list[str] = []
    terminate = _on_sigterm_interrupt()
    try:
        for task, job_checkpoint, job_agent in jobs:
            if job_checkpoint is None:
                collect_scripted(task, episodes, noise_std, seed, out)
            else:
                written[task] = collect_agent(task, job_checkpoint, episodes, seed, out, agent=job_agent,
                                              deterministic=not stochastic, device=resolve_device(device))
            done.append(task)
    except KeyboardInterrupt as exc:
        rest = [task for task, _, _ in jobs if task not in done]
        print(f"collect interrupted: the dataset of {rest[0]} was not written (a dataset is moved into {out} only "
              f"when complete){'; written: ' + ', '.join(done) if done else ''}; to write the rest: --tasks "
              f"{','.join(rest)}", file=sys.stderr, flush=True)
        raise SystemExit(128 + getattr(exc, "signum", signal.SIGINT)) from None
    finally:
        if terminate is not None:
            signal.signal(signal.SIGTERM, terminate)
    if written:  # what a continual config names them by
        print(f"data.dataset_ids (data.out_dir: {out}):")
        for task, dataset_id in written.items():
            print(f"  {task}: {dataset_id}")
    return written


class Terminated(KeyboardInterrupt):
    """SIGTERM during ``collect_all``, raised as an interrupt so that the dataset being written is removed."""

    signum = signal.SIGTERM


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


def _on_sigterm_interrupt() -> Any:
    """Makes SIGTERM raise ``Terminated`` (in the main thread only: where Python runs signal handlers); the previous
    handler, to restore, or None when not installed."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)
