"""The ``plasticrl`` command line: train, resume, eval, plot, collect, continual, bench, sweep, report. argparse only:
each command's work lives in its own lab module (``train``, ``collect``, ``continual``, ``bench``, ``plots``,
``sweep``, ``report``).

argparse (standard library) keeps the CLI dependency-free and its help text plain; config validation is pydantic's
(see ``plasticrl.lab.config``).
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from plasticrl.lab.errors import ConfigError, missing_dependency
from plasticrl.runlog import CorruptRecord

# Each command imports its module when it runs, so that `plasticrl --help` does not load torch, SB3 and MuJoCo.

def _cmd_train(args: argparse.Namespace) -> int:
    from plasticrl.lab import train
    from plasticrl.lab.config import train as train_config

    train.train(train_config.load(args.config, args.set, overlays=args.overlay))
    return 0


def _cmd_resume(args: argparse.Namespace) -> int:
    from plasticrl.lab import train

    train.resume_run(Path(args.run_dir), args.device)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from plasticrl.lab import train

    train.evaluate_run(Path(args.run_dir), args.checkpoint, args.episodes, args.device)
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from plasticrl.lab import plots

    run_dirs = plots.find_run_dirs(args.run_dirs)  # a parent folder (runs/<name>/, runs/): the run folders under it
    matrices = [plots.plot_success_matrix_of_run(d) for d in run_dirs  # `plasticrl continual` runs
                if (d / "success_matrix.json").is_file()]
    print(plots.plot_runs(run_dirs, Path(args.out) if args.out else None))
    for path in matrices:
        print(path)
    return 0


def _cmd_collect(args: argparse.Namespace) -> int:
    from plasticrl.lab import collect

    collect.collect_all(tasks=args.tasks, runs=args.runs, checkpoint=args.checkpoint, agent=args.agent,
                        episodes=args.episodes, noise_std=args.noise_std, seed=args.seed, out=args.out,
                        stochastic=args.stochastic, device=args.device)
    return 0


def _cmd_continual(args: argparse.Namespace) -> int:
    from plasticrl.lab.config import continual as continual_config
    from plasticrl.lab.continual import run_sequence

    run_sequence(continual_config.load(args.config, args.set, overlays=args.overlay))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from plasticrl.lab import bench

    return bench.main(args)


def _cmd_sweep(args: argparse.Namespace) -> int:
    from plasticrl.lab import sweep

    return sweep.run_sweep(args.sweep, args.set, backend=args.backend, address=args.address,
                           max_concurrent=args.max_concurrent, only=args.only, dry_run=args.dry_run,
                           out_dir=args.out_dir)


def _cmd_report(args: argparse.Namespace) -> int:
    from plasticrl.lab import report

    report.report(args.run_dirs, budgets=args.budgets, metric=args.metric, reference=args.reference, out=args.out,
                  reps=args.reps, seed=args.seed, normalize=args.normalize)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="plasticrl", description="Reinforcement-learning plasticity lab.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train an agent from a YAML config")
    t.add_argument("config", help="YAML config, e.g. configs/train/quickstart.yaml")
    t.add_argument("overlay", nargs="*", default=[],
                   help="YAML overlays merged over the config in order, e.g. configs/train/overlays/adaptive_rr.yaml")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set replay_ratio.kind=adaptive (repeatable)")
    t.set_defaults(func=_cmd_train)
    rs = sub.add_parser("resume", help="continue an interrupted run from its newest checkpoint")
    rs.add_argument("run_dir", help="the run folder, e.g. runs/quickstart/0-20250101-120000")
    rs.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"], help="default: the run's run.device")
    rs.set_defaults(func=_cmd_resume)
    e = sub.add_parser("eval", help="evaluate a run's checkpoint")
    e.add_argument("run_dir")
    e.add_argument("--checkpoint", default=None, help="default: <run_dir>/checkpoints/final.zip")
    e.add_argument("--episodes", type=int, default=10)
    e.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    e.set_defaults(func=_cmd_eval)
    pl = sub.add_parser("plot", help="PNG dashboard from run folders' metrics.jsonl")
    pl.add_argument("run_dirs", nargs="+", help="run folders, or folders holding them (runs/<name>/, runs/)")
    pl.add_argument("--out", default=None, help="PNG path (default: <first run>/plots/dashboard.png)")
    pl.set_defaults(func=_cmd_plot)
    c = sub.add_parser("collect",
                       help="write Minari datasets from Meta-World's scripted policies, a checkpoint or runs")
    c.add_argument("--tasks", default=None,
                   help="sequence names (cw10, cw20, mt40, dmc10, dmc6) and env ids, comma-separated, e.g. "
                        "mt40 or cw10,metaworld:reach-v3 (with --runs: only these of the runs' tasks)")
    c.add_argument("--episodes", type=int, default=10, help="episodes per task")
    c.add_argument("--noise-std", type=float, default=0.0,
                   help="scripted policies: std of Gaussian action noise (actions in [-1, 1], clipped)")
    c.add_argument("--seed", type=int, default=0,
                   help="episode i resets with seed + i (Meta-World: object and goal positions); noise, sampling seed")
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
    cl.add_argument("config", help="YAML config, e.g. configs/continual/l2m_cw10.yaml")
    cl.add_argument("overlay", nargs="*", default=[], help="YAML overlays merged over the config in order")
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
    b.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                   help="bf16: encoder, trunks and hidden layers in bf16 autocast (CUDA)")
    b.add_argument("--compile", nargs="?", const=True, default=False, metavar="MODE",
                   help="torch.compile the DrQ update (CUDA); MODE: default | max-autotune-no-cudagraphs")
    b.add_argument("--fused-q-heads", action="store_true", help="the critic's two Q heads as batched matmuls")
    b.add_argument("--json", default=None, help="also write results to this JSON file")
    b.set_defaults(func=_cmd_bench)
    sw = sub.add_parser("sweep", help="train every run of a sweep file (arms x grid x seeds), locally or on Ray")
    sw.add_argument("sweep", help="YAML sweep file, e.g. configs/sweeps/adaptive_rr_table1.yaml")
    sw.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a train config key in every run, e.g. --set run.total_steps=1000 (repeatable)")
    sw.add_argument("--out-dir", default=None, metavar="DIR",
                    help="root folder of the sweep's runs, instead of the sweep file's out_dir")
    sw.add_argument("--backend", default="local", choices=["local", "ray"],
                    help="local: subprocesses on this machine; ray: one Ray task per run")
    sw.add_argument("--address", default=None,
                    help="ray: the cluster to join, e.g. auto or HEAD_IP:6379 (default: start a local Ray instance)")
    sw.add_argument("--max-concurrent", type=int, default=None, metavar="N",
                    help="runs at once (local default: one per GPU for GPU runs, else cores / 2; ray: no limit but "
                         "the cluster's resources)")
    sw.add_argument("--only", action="append", default=[], metavar="GLOB",
                    help="only the runs whose name matches, e.g. 'adaptive_rr/*' or '*/seed0' (repeatable)")
    sw.add_argument("--dry-run", action="store_true", help="list the runs, their state and commands; start nothing")
    sw.set_defaults(func=_cmd_sweep)
    r = sub.add_parser("report", help="mean +- std and IQM with bootstrap CIs per arm, task and frame budget")
    r.add_argument("run_dirs", nargs="+", help="run folders, or folders holding them (e.g. a sweep's folder)")
    r.add_argument("--budgets", default=None,
                   help="frame budgets, e.g. 100k,500k,1M,2M (default: the frames every run reached)")
    r.add_argument("--metric", default="eval/return_mean", help="the metric of metrics.jsonl to report")
    r.add_argument("--reference", default=None,
                   help="published numbers shown beside (YAML or CSV), e.g. configs/reference/adaptive_rr_table1.yaml")
    r.add_argument("--out", default=None, help="folder of report.md, report.csv, curves.png (default: <first>/report)")
    r.add_argument("--reps", type=int, default=2000, help="bootstrap resamples per confidence interval")
    r.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    r.add_argument("--normalize", default="dmc", choices=["dmc", "none"],
                   help="scores of the aggregate over tasks (rows task=all): dmc: return / 1000 (DMC's maximum); "
                        "none: raw")
    r.set_defaults(func=_cmd_report)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, CorruptRecord) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except FloatingPointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: train has said what it saved
        signum = getattr(exc, "signum", signal.SIGINT)
        if not hasattr(exc, "signum"):
            print("interrupted", file=sys.stderr)
        return 128 + int(signum)
    except OSError as exc:  # a full disk, a read-only folder: the run log is closed, the checkpoints are whole
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as exc:  # a core install (torch only) running a lab command
        fix = missing_dependency(exc)
        if fix is None:
            raise
        print(f"error: {fix}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
