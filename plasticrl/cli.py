"""``plasticrl`` command line: train, eval, plot, collect, bench.

argparse (standard library) keeps the CLI dependency-free and its help text plain; config validation is pydantic's
(see plasticrl.config).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from plasticrl import config as cfgmod


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise cfgmod.ConfigError("run.device=cuda but torch sees no CUDA device; use run.device=auto or cpu")
    return device


def env_options(cfg: cfgmod.Config) -> dict[str, Any]:
    """``envs.make`` options of ``cfg.env`` (Meta-World takes none of them: state only, no action repeat)."""
    e = cfg.env
    if e.id.startswith("metaworld:"):
        return {}
    if not e.pixels:
        return {"pixels": False, "action_repeat": e.action_repeat}
    return {"pixels": True, "size": e.size, "frame_stack": e.frame_stack, "action_repeat": e.action_repeat}


def make_vec_env(cfg: cfgmod.Config, seed: int, n_envs: int | None = None) -> Any:
    """SB3 VecEnv of ``n_envs`` monitored ``envs.make`` envs; seeds seed, seed+1, ..."""
    from stable_baselines3.common.env_util import make_vec_env as sb3_make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    import envs

    n = n_envs or cfg.env.n_envs
    kind = cfg.env.vec_env if cfg.env.vec_env != "auto" else ("subproc" if n > 1 else "dummy")
    options = env_options(cfg)
    env_id = cfg.env.id
    return sb3_make_vec_env(lambda: envs.make(env_id, **options), n_envs=n, seed=seed,
                            vec_env_cls=SubprocVecEnv if kind == "subproc" else DummyVecEnv)


def build_controller(cfg: cfgmod.Config) -> Any:
    from plasticrl.replay_ratio import AdaptiveReplayRatio, StaticReplayRatio

    rr = cfg.replay_ratio
    if rr.kind == "static":
        return StaticReplayRatio(rr.ratio)
    return AdaptiveReplayRatio(low=rr.low, high=rr.high, check_every=rr.check_every, unit=rr.unit,
                               tolerance=rr.tolerance)


def build_agent(cfg: cfgmod.Config, env: Any, device: str) -> Any:
    """``agents.DrQ("CnnPolicy")`` or ``stable_baselines3.SAC("MlpPolicy")`` (``agent.kind``); ``gradient_steps=0``:
    the replay-ratio callback sets the updates after each step."""
    a = cfg.agent
    # A buffer larger than the run's transitions never fills: allocate only what the run can use.
    buffer_size = min(a.buffer_size, cfg.run.total_steps)
    if a.kind == "sac":
        from stable_baselines3 import SAC

        return SAC("MlpPolicy", env, learning_rate=a.learning_rate, buffer_size=buffer_size,
                   learning_starts=a.learning_starts, batch_size=a.batch_size, tau=a.tau, gamma=a.gamma,
                   train_freq=1, gradient_steps=0, ent_coef=f"auto_{a.init_temperature}",
                   policy_kwargs={"net_arch": [a.hidden_dim, a.hidden_dim]},
                   seed=cfg.run.seed, device=device, verbose=0)
    from agents import DrQ

    return DrQ("CnnPolicy", env, learning_rate=a.learning_rate, buffer_size=buffer_size,
               learning_starts=a.learning_starts, batch_size=a.batch_size, tau=a.tau, gamma=a.gamma,
               train_freq=1, gradient_steps=0, n_step=a.n_step, ent_coef=f"auto_{a.init_temperature}",
               augment_pad=a.augment_pad, buffer_device=a.buffer_device,
               cuda_graph=a.cuda_graph, compile_update=a.compile, precision=a.precision,
               async_env_step=a.async_env_step, fused_q_heads=a.fused_q_heads,
               policy_kwargs={"feature_dim": a.feature_dim, "hidden_dim": a.hidden_dim},
               seed=cfg.run.seed, device=device, verbose=0)


def check_config(cfg: cfgmod.Config) -> None:
    """Checks that need the registries (env id, agent/env fit); raises ConfigError before anything is written."""
    import envs

    try:
        envs.check_id(cfg.env.id)
    except ValueError as exc:
        raise cfgmod.ConfigError(f"env.id: {exc}") from None
    if cfg.agent.kind == "drq" and not cfg.env.id.startswith("dmc:"):
        raise cfgmod.ConfigError(f"env.id: {cfg.env.id!r} has no pixel observations; agent.kind=drq needs a "
                                 "dmc:<domain>-<task> env")


def train(cfg: cfgmod.Config) -> Path:
    """Trains one run from a validated config; returns its run folder."""
    from plasticrl import sb3 as adapters
    from plasticrl.logging import RunLogger, make_run_dir

    check_config(cfg)
    device = resolve_device(cfg.run.device)
    run_dir = make_run_dir(cfg.run.out_dir, cfg.run.name, cfg.run.seed)
    (run_dir / "config.yaml").write_text(cfgmod.dump(cfg))
    tags = [cfg.agent.kind, cfg.env.id, f"rr-{cfg.replay_ratio.kind}"]
    run_logger = RunLogger(run_dir, cfg.model_dump(mode="json"),
                           cfgmod.wandb_settings(cfg.logging.wandb, cfg.run.name, cfg.run.seed, tags))
    print(f"run folder: {run_dir}  (device {device})", flush=True)
    env = eval_env = model = None
    try:
        env = make_vec_env(cfg, cfg.run.seed)
        eval_env = make_vec_env(cfg, cfg.run.seed + 10_000, n_envs=1)
        model = build_agent(cfg, env, device)
        callbacks = [
            adapters.EpisodeLogCallback(run_logger, cfg.logging.print_episodes),
            adapters.ReplayRatioCallback(build_controller(cfg), run_logger),
            adapters.EvalCallback(eval_env, run_logger, cfg.eval.every, cfg.eval.episodes),
            adapters.CheckpointCallback(run_dir / "checkpoints", cfg.run.checkpoint_every,
                                        on_save=(lambda: _plot_quietly(run_dir)) if cfg.logging.plots else None),
        ]
        m = cfg.monitor
        if m.enabled:
            callbacks.insert(1, adapters.PlasticityCallback(run_logger, every=m.every, batch_size=m.batch_size,
                                                            tau=m.tau, delta=m.delta, groups=m.groups,
                                                            histograms_every=m.histograms_every))
        try:
            model.learn(cfg.run.total_steps, callback=callbacks, progress_bar=cfg.run.progress_bar)
        except KeyboardInterrupt:
            model.save(run_dir / "checkpoints" / "interrupted.zip")
            print(f"interrupted: saved {run_dir / 'checkpoints' / 'interrupted.zip'}", file=sys.stderr)
            raise
        model.save(run_dir / "checkpoints" / "final.zip")
    finally:
        run_logger.close()
        for e in (env, eval_env):
            if e is not None:
                e.close()
    if cfg.logging.plots:
        _plot_quietly(run_dir)
    print(f"done: {run_dir}", flush=True)
    return run_dir


def _plot_quietly(run_dir: Path) -> None:
    """Redraws ``plots/dashboard.png``; a plotting problem never stops training."""
    from plasticrl.plots import plot_runs

    try:
        plot_runs([run_dir], run_dir / "plots" / "dashboard.png")
    except (ValueError, OSError) as exc:
        print(f"warning: dashboard not drawn: {exc}", file=sys.stderr)


def _cmd_train(args: argparse.Namespace) -> int:
    cfg = cfgmod.load(args.config, args.set)
    train(cfg)
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from plasticrl.plots import plot_runs, plot_success_matrix_of_run

    matrices = [plot_success_matrix_of_run(Path(d)) for d in args.run_dirs  # `plasticrl continual` runs
                if (Path(d) / "success_matrix.json").is_file()]
    print(plot_runs([Path(p) for p in args.run_dirs], Path(args.out) if args.out else None))
    for path in matrices:
        print(path)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from stable_baselines3.common.evaluation import evaluate_policy

    from plasticrl.collect import load_agent

    run_dir = Path(args.run_dir)
    cfg = cfgmod.load(run_dir / "config.yaml")
    ckpt = Path(args.checkpoint) if args.checkpoint else run_dir / "checkpoints" / "final.zip"
    try:
        model = load_agent(cfg.agent.kind, ckpt, resolve_device(args.device))
    except ValueError as exc:
        raise cfgmod.ConfigError(str(exc)) from None
    env = make_vec_env(cfg, cfg.run.seed + 20_000, n_envs=1)
    mean, std = evaluate_policy(model, env, n_eval_episodes=args.episodes, deterministic=True)
    print(f"{ckpt}: return {mean:.2f} +- {std:.2f} over {args.episodes} episodes")
    return 0


def _collect_jobs(args: argparse.Namespace) -> list[tuple[str, str | None, str]]:
    """``(task, checkpoint or None for the scripted policy, agent)`` per dataset to write; ValueError for an unknown
    task, a dataset that exists, a checkpoint that doesn't load, an ``--agent`` that isn't the run's."""
    from plasticrl import collect

    if args.runs is not None:
        if args.checkpoint is not None:
            raise ValueError("--runs and --checkpoint exclude each other: --runs takes each run's final.zip")
        runs = {task: (str(ckpt), kind) for task, kind, ckpt in collect.run_checkpoints(args.runs)}
        tasks = collect.resolve_tasks(args.tasks) if args.tasks else list(runs)
        missing = [task for task in tasks if task not in runs]
        if missing:
            raise ValueError(f"no run under {args.runs} trained on {', '.join(missing)}")
        jobs: list[tuple[str, str | None, str]] = [(task, *runs[task]) for task in tasks]
    elif args.tasks is None:
        raise ValueError("give --tasks (scripted policies, or with --checkpoint) or --runs")
    elif args.checkpoint is None:
        jobs = [(task, None, "scripted") for task in collect.resolve_tasks(args.tasks)]
    else:
        cfg = collect.run_config(args.checkpoint)
        agent = args.agent or (cfg.agent.kind if cfg is not None else "drq")
        jobs = [(task, args.checkpoint, agent) for task in collect.resolve_tasks(args.tasks)]
    for task, checkpoint, agent in jobs:
        if checkpoint is None:
            collect.check_scripted(task, args.episodes, args.noise_std)
            collect.check_new(collect.scripted_dataset_id(task, args.noise_std), args.out)
            continue
        cfg = collect.run_config(checkpoint)
        if args.agent is not None and cfg is not None and cfg.agent.kind != args.agent:
            raise ValueError(f"--agent {args.agent}: {checkpoint} is from a run with agent.kind={cfg.agent.kind}")
        collect.check_new(collect.agent_dataset_id(task, agent, checkpoint, not args.stochastic), args.out)
        collect.load_agent(agent, checkpoint, "cpu")
    return jobs


def _cmd_collect(args: argparse.Namespace) -> int:
    from plasticrl import collect

    try:  # validate every task before anything is written
        jobs = _collect_jobs(args)
    except ValueError as exc:
        raise cfgmod.ConfigError(str(exc)) from None
    written: dict[str, str] = {}
    for task, checkpoint, agent in jobs:
        if checkpoint is None:
            collect.collect_scripted(task, args.episodes, args.noise_std, args.seed, args.out)
        else:
            written[task] = collect.collect_agent(task, checkpoint, args.episodes, args.seed, args.out, agent=agent,
                                                  deterministic=not args.stochastic,
                                                  device=resolve_device(args.device))
    if written:  # what a continual config names them by
        print(f"data.dataset_ids (data.out_dir: {args.out}):")
        for task, dataset_id in written.items():
            print(f"  {task}: {dataset_id}")
    return 0


def _cmd_continual(args: argparse.Namespace) -> int:
    from plasticrl import continual_config
    from plasticrl.continual import run_sequence

    run_sequence(continual_config.load(args.config, args.set))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from agents.bench import main as bench_main

    return bench_main(args)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="plasticrl", description="Reinforcement-learning plasticity lab.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train an agent from a YAML config")
    t.add_argument("config", help="YAML config, e.g. configs/quickstart.yaml")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set replay_ratio.kind=adaptive (repeatable)")
    t.set_defaults(func=_cmd_train)
    e = sub.add_parser("eval", help="evaluate a run's checkpoint")
    e.add_argument("run_dir")
    e.add_argument("--checkpoint", default=None, help="default: <run_dir>/checkpoints/final.zip")
    e.add_argument("--episodes", type=int, default=10)
    e.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    e.set_defaults(func=_cmd_eval)
    pl = sub.add_parser("plot", help="PNG dashboard from run folders' metrics.jsonl")
    pl.add_argument("run_dirs", nargs="+")
    pl.add_argument("--out", default=None, help="PNG path (default: <first run>/plots/dashboard.png)")
    pl.set_defaults(func=_cmd_plot)
    c = sub.add_parser("collect", help="write Minari datasets from Meta-World's scripted policies, a checkpoint or runs")
    c.add_argument("--tasks", default=None,
                   help="sequence names (cw10, cw20, mt40, dmc10, dmc6) and env ids, comma-separated, e.g. "
                        "mt40 or cw10,metaworld:reach-v3 (with --runs: only these of the runs' tasks)")
    c.add_argument("--episodes", type=int, default=10, help="episodes per task")
    c.add_argument("--noise-std", type=float, default=0.0,
                   help="scripted policies: std of Gaussian action noise (actions in [-1, 1], clipped)")
    c.add_argument("--seed", type=int, default=0, help="env seed (Meta-World: the goal) and noise/sampling seed")
    c.add_argument("--out", default="data", help="datasets folder (MINARI_DATASETS_PATH), default ./data")
    c.add_argument("--checkpoint", default=None, help="SB3-format agent checkpoint (.zip) instead of scripted policies")
    c.add_argument("--runs", default=None,
                   help="a folder of `plasticrl train` runs: each run's checkpoints/final.zip on its env.id")
    c.add_argument("--agent", default=None, choices=["drq", "sac"],
                   help="class of --checkpoint (default: its run's agent.kind, else drq)")
    c.add_argument("--stochastic", action="store_true", help="sample the agent's actions (default: deterministic)")
    c.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    c.set_defaults(func=_cmd_collect)
    cl = sub.add_parser("continual", help="continual learning on a task sequence (L2M, LoRA, fine-tuning)")
    cl.add_argument("config", help="YAML config, e.g. configs/l2m_cw10.yaml")
    cl.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key, e.g. --set sequence.method=finetune (repeatable)")
    cl.set_defaults(func=_cmd_continual)
    b = sub.add_parser("bench", help="update-step and training-throughput benchmark")
    b.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    b.add_argument("--quick", action="store_true", help="small sizes, for CPU")
    b.add_argument("--batch-size", type=int, default=256)
    b.add_argument("--updates", type=int, default=50)
    b.add_argument("--train-steps", type=int, default=2000, help="agent steps of the end-to-end run (0: skip)")
    b.add_argument("--n-envs", type=int, default=1)
    b.add_argument("--async-env-step", action="store_true", help="also time training with agent.async_env_step")
    b.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="bf16: encoder, trunks and hidden layers in bf16 autocast (CUDA)")
    b.add_argument("--compile", nargs="?", const=True, default=False, metavar="MODE",
                   help="torch.compile the DrQ update (CUDA); MODE: default | max-autotune-no-cudagraphs")
    b.add_argument("--fused-q-heads", action="store_true", help="the critic's two Q heads as batched matmuls")
    b.add_argument("--json", default=None, help="also write results to this JSON file")
    b.set_defaults(func=_cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except cfgmod.ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except FloatingPointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
