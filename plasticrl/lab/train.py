"""``plasticrl train``: a validated config -> envs, agent, callbacks -> ``model.learn`` -> a run folder.

The run folder ``<out_dir>/<name>/<seed>-<time>/`` (or exactly ``run.dir``, a folder that holds no run yet) holds the
resolved ``config.yaml``, ``metrics.jsonl``, ``checkpoints/`` (``step_<N>.zip``, ``final.zip``; ``interrupted.zip``
on Ctrl-C or SIGTERM, each with its ``.state.pt``), ``wandb/`` and ``plots/``. ``resume_run`` (``plasticrl resume``)
continues a run from its newest full-state checkpoint.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from stable_baselines3 import SAC
from stable_baselines3.common.env_util import make_vec_env as sb3_make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

from plasticrl import envs
from plasticrl import sb3 as adapters
from plasticrl.agents import DrQ, DrQV2
from plasticrl.lab.config.base import ConfigError, check_problems, dump, wandb_settings
from plasticrl.lab.config.train import WHEN, Config, InterventionSpec, device_problems, env_problems, load
from plasticrl.lab.fast_path import resolve_auto
from plasticrl.lab.plots import plot_runs
from plasticrl.lab.resume import (
    check_run_folder,
    latest_checkpoint,
    restore_env_state,
    restore_rng,
    rng_state,
    save_env_state,
)
from plasticrl.lab.runtime import configure_torch, resolve_device
from plasticrl.replay_ratio import AdaptiveReplayRatio, StaticReplayRatio
from plasticrl.runlog import RunLogger, make_run_dir
from plasticrl.sb3 import REPLAY_STEP, TrainingInterrupted, replay_path, save_model, step_checkpoints

AGENT_CLASSES = {"drq": DrQ, "drqv2": DrQV2, "sac": SAC}  # agent.kind -> its class (plasticrl's DrQ, DrQV2; SB3's SAC)
AGENTS = tuple(AGENT_CLASSES)  # agent.kind and collect --agent


def env_options(cfg: Config) -> dict[str, Any]:
    """``plasticrl.envs.make`` options of ``cfg.env`` (Meta-World takes none of them: state only, no action repeat)."""
    e = cfg.env
    if e.id.startswith("metaworld:"):
        return {}
    if not e.pixels:
        return {"pixels": False, "action_repeat": e.action_repeat}
    return {"pixels": True, "size": e.size, "frame_stack": e.frame_stack, "action_repeat": e.action_repeat}


def make_vec_env(cfg: Config, seed: int, n_envs: int | None = None) -> Any:
    """SB3 VecEnv of ``n_envs`` monitored ``plasticrl.envs.make`` envs; seeds seed, seed+1, ..."""
    n = n_envs or (cfg.env.n_envs if cfg.env.n_envs != "auto" else 1)  # auto: see lab.fast_path
    kind = cfg.env.vec_env if cfg.env.vec_env != "auto" else ("subproc" if n > 1 else "dummy")
    options = env_options(cfg)
    env_id = cfg.env.id
    parent = os.getpid()

    def make() -> Any:
        if os.getpid() != parent:  # a SubprocVecEnv worker: Ctrl-C/SIGTERM are the trainer's to handle
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return envs.make(env_id, **options)

    return sb3_make_vec_env(make, n_envs=n, seed=seed, vec_env_cls=SubprocVecEnv if kind == "subproc" else DummyVecEnv)


def build_controller(cfg: Config) -> Any:
    rr = cfg.replay_ratio
    if rr.kind == "static":
        return StaticReplayRatio(rr.ratio)
    return AdaptiveReplayRatio(low=rr.low, high=rr.high, check_every=rr.check_every, unit=rr.unit,
                               tolerance=rr.tolerance)


def build_agent(cfg: Config, env: Any, device: str) -> Any:
    """``plasticrl.agents.DrQ("CnnPolicy")``, ``DrQV2("CnnPolicy")`` or ``stable_baselines3.SAC("MlpPolicy")``
    (``agent.kind``);
    ``gradient_steps=0``: the replay-ratio callback sets the updates after each step; ``auto`` settings are resolved
    for ``device`` (``plasticrl.lab.fast_path``) if ``train`` has not done it."""
    cfg, _ = resolve_auto(cfg, device)
    a = cfg.agent
    # A buffer larger than the run's transitions never fills: allocate only what the run can use.
    buffer_size = min(a.buffer_size, cfg.run.total_steps)
    if a.kind == "sac":
        return SAC("MlpPolicy", env, learning_rate=a.learning_rate, buffer_size=buffer_size,
                   learning_starts=a.learning_starts, batch_size=a.batch_size, tau=a.tau, gamma=a.gamma,
                   train_freq=1, gradient_steps=0, ent_coef=f"auto_{a.init_temperature}",
                   policy_kwargs={"net_arch": [a.hidden_dim, a.hidden_dim]},
                   seed=cfg.run.seed, device=device, verbose=0)
    pixel = {"learning_rate": a.learning_rate, "buffer_size": buffer_size, "learning_starts": a.learning_starts,
             "batch_size": a.batch_size, "tau": a.tau, "gamma": a.gamma, "train_freq": 1, "gradient_steps": 0,
             "n_step": a.n_step, "augment_pad": a.augment_pad, "buffer_device": a.buffer_device,
             "cuda_graph": a.cuda_graph, "compile_update": a.compile, "precision": a.precision,
             "async_env_step": a.async_env_step, "fused_q_heads": a.fused_q_heads, "l2_init": a.l2_init,
             "nap": a.nap, "seed": cfg.run.seed, "device": device, "verbose": 0,
             "policy_kwargs": {"feature_dim": a.feature_dim, "hidden_dim": a.hidden_dim,
                               "activation": a.activation, "init": a.init,
                               **({} if a.nap else {"hidden_norm": a.hidden_norm})}}
    if a.kind == "drqv2":
        return DrQV2("CnnPolicy", env, std_schedule=a.std_schedule, stddev_clip=a.stddev_clip,
                     num_expl_steps=a.num_expl_steps, **pixel)
    return DrQ("CnnPolicy", env, ent_coef=f"auto_{a.init_temperature}", **pixel)


def load_agent(agent: str, checkpoint: str | Path, device: str = "auto") -> Any:
    """Loads an SB3-format checkpoint: ``drq`` with ``plasticrl.agents.DrQ.load``, ``sac`` with
    ``stable_baselines3.SAC.load``; replay is allocated at 100 transitions (unused)."""
    if agent not in AGENTS:
        raise ValueError(f"unknown agent {agent!r}; allowed: {', '.join(AGENTS)}")
    if not Path(checkpoint).is_file():
        raise ValueError(f"checkpoint {str(checkpoint)!r} not found")
    cls = AGENT_CLASSES[agent]
    return cls.load(checkpoint, device=device, buffer_size=100)


def build_intervention(spec: InterventionSpec) -> Any:
    """The mechanism object of one ``interventions`` entry (``plasticrl.interventions``)."""
    from plasticrl import interventions as iv

    if spec.kind == "reset":
        return iv.Reset(layers=spec.layers)
    if spec.kind == "shrink_perturb":
        return iv.ShrinkPerturb(alpha=spec.alpha, layers=spec.layers, towards=spec.towards,
                                optimizer=spec.optimizer, targets=spec.targets)
    if spec.kind == "redo":
        return iv.ReDo(tau=spec.tau, sites=spec.sites)
    return iv.Inject(heads=spec.heads)


def build_interventions(cfg: Config) -> list[Any]:
    """``plasticrl.interventions.ScheduledIntervention`` per (``interventions`` entry, group): each with its own
    mechanism and schedule object (both keep state: ReDo's last dormant units, a schedule's last firing)."""
    from plasticrl import interventions as iv

    scheduled = []
    for spec in cfg.interventions:
        trigger = None
        if spec.when is not None:
            metric, op, threshold = WHEN.match(spec.when).groups()  # type: ignore[union-attr]  # schema-checked
            trigger = iv.Trigger(metric, op, float(threshold))
        for group in spec.groups:
            schedule = iv.Schedule(every=spec.every, at=tuple(spec.at), start=spec.start, stop=spec.stop,
                                   when=trigger, min_gap=spec.min_gap)
            scheduled.append(iv.ScheduledIntervention(build_intervention(spec), group, schedule))
    return scheduled


def check_config(cfg: Config) -> None:
    """The checks that need the registries (env id, agent/env fit, MuJoCo GL), as ``validate`` runs them, for a
    Config built another way; raises ConfigError before anything is written."""
    check_problems(env_problems(cfg))


def check_run_dir(cfg: Config) -> None:
    """ConfigError if ``run.dir`` already holds a run (``config.yaml`` or ``metrics.jsonl``): train never overwrites
    one. An empty or missing folder is fine."""
    if cfg.run.dir is None:
        return
    folder = Path(cfg.run.dir)
    if (folder / "config.yaml").exists() or (folder / "metrics.jsonl").exists():
        raise ConfigError(f"run.dir: {str(folder)!r} already holds a run; continue it with `plasticrl resume "
                          f"{folder}` or choose another run.dir")


def _make_run_dir(cfg: Config) -> Path:
    """The new run folder: exactly ``run.dir`` if set, else ``<out_dir>/<name>/<seed>-<time>/``; with ``checkpoints/``
    and ``plots/``."""
    if cfg.run.dir is not None:
        folder = Path(cfg.run.dir)
        try:
            (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
            (folder / "plots").mkdir(exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"run.dir: cannot create the run folder {str(folder)!r} ({exc.strerror or exc}); set "
                              "run.dir to a writable folder") from None
        return folder
    try:
        return make_run_dir(cfg.run.out_dir, cfg.run.name, cfg.run.seed)
    except OSError as exc:
        raise ConfigError(f"run.out_dir: cannot create a run folder in {cfg.run.out_dir!r} ({exc.strerror or exc}); "
                          "set run.out_dir to a writable folder") from None


def train(cfg: Config) -> Path:
    """Trains one run from a validated config; returns its run folder."""
    check_config(cfg)
    check_run_dir(cfg)
    device = resolve_device(cfg.run.device)
    check_problems(device_problems(cfg, device), source=f"run.device={cfg.run.device} resolved to {device}")
    configure_torch(device)
    cfg, chosen = resolve_auto(cfg, device)  # config.yaml records what ran
    if chosen:
        print(chosen, flush=True)
    run_dir = _make_run_dir(cfg)
    config = run_dir / "config.yaml"
    try:
        f = open(config, "x")  # noqa: SIM115 - "x": never over a run that appeared since check_run_dir
    except FileExistsError:
        raise ConfigError(f"{run_dir}: another process has just started a run there; continue it with `plasticrl "
                          f"resume {run_dir}` or choose another run.dir") from None
    try:
        with f:
            f.write(dump(cfg))
    except OSError as exc:  # a full disk from the start: take back what this call made, nothing else
        if exc.errno is None:
            raise
        config.unlink(missing_ok=True)
        for folder in (run_dir / "checkpoints", run_dir / "plots", run_dir):
            with suppress(OSError):
                folder.rmdir()  # only if empty
        raise OSError(exc.errno, f"{config} not written ({exc.strerror}); nothing was trained: free disk space "
                      "there or set run.out_dir to another disk") from None
    return _run(cfg, run_dir, device)


def resume_run(run_dir: str | Path, device: str | None = None) -> Path:
    """``plasticrl resume``: continues a run from its newest full-state checkpoint (``interrupted.zip`` or the newest
    ``step_<N>.zip``) up to its ``run.total_steps``, in the same folder; returns it."""
    run_dir = Path(run_dir)
    checkpoint, state = latest_checkpoint(run_dir)
    cfg = load(run_dir / "config.yaml")
    device = resolve_device(device or cfg.run.device)
    configure_torch(device)
    cfg, _ = resolve_auto(cfg, device)
    return _run(cfg, run_dir, device, checkpoint, state)


@contextmanager
def _stop_on_signals(checkpoints: adapters.PeriodicCheckpointCallback) -> Iterator[None]:
    """Ctrl-C and SIGTERM stop training at the next clean point between steps (``interrupted.zip`` saved there); a
    second one stops at once."""
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if checkpoints.stop_signal is not None:
            raise TrainingInterrupted(signum)
        checkpoints.request_stop(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _load_for_resume(cfg: Config, checkpoint: Path, env: Any, device: str, state: dict[str, Any]) -> Any:
    """The checkpoint's agent on ``env``; with the envs' saved state, it keeps its last observations (the envs
    continue their episodes), otherwise SB3 resets the envs at the start of ``learn``."""
    cls = AGENT_CLASSES[cfg.agent.kind]
    try:
        return cls.load(checkpoint, env=env, device=device, force_reset=state.get("envs") is None)
    except ValueError as exc:  # SB3's check of the env's spaces against the saved agent's
        raise ConfigError(f"{checkpoint}: {exc}; the run's config.yaml changed since the checkpoint was saved: resume "
                          "with the config it was trained with") from None


def _run(cfg: Config, run_dir: Path, device: str, checkpoint: Path | None = None,
         state: dict[str, Any] | None = None) -> Path:
    """Builds envs, agent and callbacks and trains up to ``run.total_steps``: from scratch, or from ``checkpoint``
    with its saved ``state``."""
    tags = [cfg.agent.kind, cfg.env.id, f"rr-{cfg.replay_ratio.kind}"]
    settings = wandb_settings(cfg.logging.wandb, cfg.run.name, cfg.run.seed, tags)
    if state is not None and state.get("wandb_id") and settings.get("mode") != "disabled":
        settings["run_id"] = state["wandb_id"]
    run_logger = RunLogger(run_dir, cfg.model_dump(mode="json"), settings,
                           resume_step=None if state is None else state["num_timesteps"])
    print(f"run folder: {run_dir}  (device {device})", flush=True)
    folder = run_dir / "checkpoints"
    env = eval_env = model = None
    try:
        env = make_vec_env(cfg, cfg.run.seed)
        eval_env = make_vec_env(cfg, cfg.run.seed + 10_000, n_envs=1)
        model = (build_agent(cfg, env, device) if checkpoint is None
                 else _load_for_resume(cfg, checkpoint, env, device, state or {}))
        callbacks: list[Any] = [
            adapters.EpisodeLogCallback(run_logger, cfg.logging.print_episodes),
            adapters.ReplayRatioCallback(build_controller(cfg), run_logger),
            adapters.PeriodicEvalCallback(eval_env, run_logger, cfg.eval.every, cfg.eval.episodes),
        ]
        m = cfg.monitor
        plasticity = None
        if m.enabled:
            plasticity = adapters.PlasticityCallback(run_logger, every=m.every, batch_size=m.batch_size, tau=m.tau,
                                                     delta=m.delta, groups=m.groups,
                                                     histograms_every=m.histograms_every)
            callbacks.insert(1, plasticity)
        if cfg.interventions:  # after the monitor: a metric trigger reads the probe of the same step
            callbacks.insert(2 if plasticity else 1, adapters.InterventionCallback(
                build_interventions(cfg), run_logger, plasticity=plasticity, batch_size=m.batch_size))

        def full_state() -> dict[str, Any]:
            train_envs = save_env_state(model.env)  # first: it may finish a started env step (which may draw numbers)
            return {"num_timesteps": int(model.num_timesteps), "envs": train_envs,
                    "eval_envs": save_env_state(eval_env),
                    "rng": rng_state(), "action_space_rng": model.action_space.np_random.bit_generator.state,
                    "queued_actions": getattr(model, "queued_actions", None),  # async env step: drawn, not yet taken
                    "train_stats": getattr(model, "pending_train_stats", None),  # summed since the last log
                    "callbacks": {type(cb).__name__: cb.state_dict() for cb in callbacks},
                    "wandb_id": run_logger.wandb_id}

        checkpoints = adapters.PeriodicCheckpointCallback(
            folder, cfg.run.checkpoint_every, keep=cfg.run.keep_checkpoints, save_replay=cfg.run.save_replay,
            state_fn=full_state, on_save=(lambda: _plot_quietly(run_dir)) if cfg.logging.plots else None)
        callbacks.append(checkpoints)
        if state is not None and checkpoint is not None:
            _restore(cfg, model, eval_env, callbacks, checkpoint, state)
        with _stop_on_signals(checkpoints):
            try:
                model.learn(cfg.run.total_steps - model.num_timesteps, callback=callbacks,
                            progress_bar=cfg.run.progress_bar, reset_num_timesteps=checkpoint is None)
                save_model(model, folder / "final.zip")
            except TrainingInterrupted as exc:
                name = signal.Signals(exc.signum).name
                saved = (f"saved {exc.path}" if exc.path is not None else
                         "stopped at once on the second signal, nothing saved")
                print(f"interrupted by {name} at step {model.num_timesteps}: {saved}; continue with "
                      f"`plasticrl resume {run_dir}`", file=sys.stderr, flush=True)
                raise
            except OSError as exc:  # a checkpoint or a record not written (full disk): the log is closed below
                if exc.errno is None or exc.strerror is None:
                    raise
                cause = "free disk space" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "fix that"
                if not any(folder.glob("*.zip")):
                    fix = f"no checkpoint was written yet: {cause} and start the run again"
                elif "intact" in exc.strerror:  # a failed save says itself what is kept
                    fix = f"then continue with `plasticrl resume {run_dir}`"
                else:
                    fix = (f"the checkpoints and the records before it are kept: {cause}, then continue with "
                           f"`plasticrl resume {run_dir}`")
                raise OSError(exc.errno, f"{exc.strerror}; {fix}") from exc
    finally:
        run_logger.close()
        for e in (env, eval_env):
            if e is not None:
                e.close()
    if cfg.logging.plots:
        _plot_quietly(run_dir)
    print(f"done: {run_dir}", flush=True)
    return run_dir


def _restore(cfg: Config, model: Any, eval_env: Any, callbacks: list[Any], checkpoint: Path,
             state: dict[str, Any]) -> None:
    """Sets a loaded model's replay buffer, the envs' and the callbacks' state, the RNG states, the actions an
    async env step had drawn and the update statistics not yet logged from a checkpoint's state."""
    for cb in callbacks:
        cb.load_state_dict(state["callbacks"][type(cb).__name__])
    step = int(state["num_timesteps"])
    if state.get("envs") is not None:
        restore_env_state(model.env, state["envs"])
        envs = "the envs continue their episodes"
    else:
        envs = "the envs start new episodes (they cannot save their state)"
    if state.get("eval_envs") is not None:
        restore_env_state(eval_env, state["eval_envs"])
    replay, loaded = replay_path(checkpoint), False
    if replay.is_file():
        empty = model.replay_buffer
        model.load_replay_buffer(replay)
        loaded = getattr(model.replay_buffer, REPLAY_STEP, step) == step
        if not loaded:  # saved at another step than the checkpoint (a kill between the files of one save)
            model.replay_buffer = empty
    if loaded:
        if state.get("envs") is None and hasattr(model.replay_buffer, "end_episodes"):
            model.replay_buffer.end_episodes()  # the episodes it holds unfinished do not go on
        print(f"resumed from {checkpoint} at step {step} with its replay buffer ({model.replay_buffer.size()} "
              f"transitions); {envs}", flush=True)
    else:  # the buffer is empty: a warm-up of learning_starts new transitions before updates resume
        model.learning_starts = step + cfg.agent.learning_starts
        why = (f"its replay buffer file {replay.name} is of another step (a kill during a save)" if replay.is_file()
               else "no replay buffer saved (run.save_replay: false)")
        print(f"resumed from {checkpoint} at step {step}; {why}, so it refills: {cfg.agent.learning_starts} warm-up "
              f"steps before updates resume; {envs}", flush=True)
    restore_rng(state["rng"])
    model.action_space.np_random.bit_generator.state = state["action_space_rng"]
    if state.get("queued_actions") is not None and state.get("envs") is not None and hasattr(model, "queued_actions"):
        model.queued_actions = state["queued_actions"]  # the RNG states above are from after they were drawn
    if state.get("train_stats") is not None and hasattr(model, "pending_train_stats"):
        model.pending_train_stats = state["train_stats"]


def _plot_quietly(run_dir: Path) -> None:
    """Redraws ``plots/dashboard.png``; a plotting problem never stops training."""
    try:
        plot_runs([run_dir], run_dir / "plots" / "dashboard.png")
    except (ValueError, OSError) as exc:
        print(f"warning: dashboard not drawn: {exc}", file=sys.stderr)


def evaluate_run(run_dir: Path, checkpoint: str | None = None, episodes: int = 10, device: str = "auto"
                 ) -> tuple[float, float]:
    """``plasticrl eval``: mean and std of the deterministic return of a run's checkpoint (default
    ``checkpoints/final.zip``) over ``episodes`` episodes, on an env built from the run's ``config.yaml``; prints it."""
    if episodes < 1:
        raise ConfigError(f"--episodes: {episodes} is not allowed; evaluate at least 1 episode")
    check_run_folder(run_dir)
    cfg = load(run_dir / "config.yaml")
    ckpt = Path(checkpoint) if checkpoint else run_dir / "checkpoints" / "final.zip"
    if checkpoint is None and not ckpt.is_file():
        folder = run_dir / "checkpoints"
        others = [p for p in [folder / "interrupted.zip", *reversed(step_checkpoints(folder))] if p.is_file()]
        hint = (f"; evaluate one of its other checkpoints with --checkpoint: {', '.join(str(p) for p in others)}"
                if others else "; it has no other checkpoint")
        raise ConfigError(f"{ckpt} not found: the run did not finish{hint}")
    try:
        model = load_agent(cfg.agent.kind, ckpt, resolve_device(device))
    except ValueError as exc:  # SB3's own text ("Error: the file ... wasn't a zip-file") without its prefix
        raise ConfigError(f"{str(exc).removeprefix('Error: ')}; pass a checkpoint that `plasticrl train` "
                          "wrote (checkpoints/*.zip)") from None
    env = make_vec_env(cfg, cfg.run.seed + 20_000, n_envs=1)
    try:
        mean, std = evaluate_policy(model, env, n_eval_episodes=episodes, deterministic=True)
    finally:
        env.close()
    print(f"{ckpt}: return {mean:.2f} +- {std:.2f} over {episodes} episodes")
    return float(mean), float(std)
