"""Which changes make one DrQ update fast on a GPU. ms per update (CUDA graph, synthetic 9x84x84 uint8 batches,
batch 256) and ms per sample + update from a GPU replay buffer (one graph), per precision, optionally with
``torch.compile`` on actor and critic, and with the critic's Q heads fused (``fused_q_heads``, ``--fused-heads``);
then the top CUDA kernels of one eager variant.

    python benchmarks/update_variants.py --updates 300 [--compile] [--fused-heads] [--autotune] [--json out.json]
    python benchmarks/update_variants.py --variants bf16:autotune:fused --profile "" --profile-graph
"""

import argparse
import json

import numpy as np
import torch

from plasticrl.agents import DrQ
from plasticrl.lab.bench import _fill, _pixel_venv, _quiet_logger, _time, synthetic_batch
from plasticrl.lab.runtime import configure_torch


def make(venv, precision: str, graph: bool = True, compiled: str = "", fused: bool = False) -> DrQ:
    """compiled: "" (eager kernels), "modules" (torch.compile on actor and critics' forward), "update" (on the
    whole update function; graph breaks at backward), "autotune" (the same with mode="max-autotune-no-cudagraphs":
    Inductor benchmarks Triton GEMM/conv templates against cuBLAS/cuDNN per shape; minutes of compiling). fused:
    the critics' two Q heads as batched matmuls."""
    compile_update = {"update": True, "autotune": "max-autotune-no-cudagraphs"}.get(compiled, False)
    model = DrQ("CnnPolicy", venv, buffer_size=5000, device="cuda", cuda_graph=graph, precision=precision,
                fused_q_heads=fused, compile_update=compile_update, seed=0)
    if compiled == "modules":
        for module in (model.actor, model.critic, model.critic_target):
            module.compile()
    _quiet_logger(model)
    return model


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--updates", type=int, default=300)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--fused-heads", action="store_true", help="also the variants with fused_q_heads=True")
    p.add_argument("--autotune", action="store_true",
                   help="only the compiled update, fused heads, default vs max-autotune-no-cudagraphs compilation")
    p.add_argument("--variants", nargs="+", metavar="P:COMPILED[:fused]",
                   help="exactly these variants, e.g. bf16:none:fused bf16:update:fused (COMPILED: none, "
                        "modules, update, autotune)")
    p.add_argument("--profile-graph", action="store_true",
                   help="the top CUDA kernels inside the graph replays of the last variant")
    p.add_argument("--profile", default="bf16",
                   help="precision[:fused] of the eager variant to profile ('' for none)")
    p.add_argument("--json")
    args = p.parse_args()
    dev = torch.device("cuda")
    venv = _pixel_venv()
    shape, adim = venv.observation_space.shape, venv.action_space.shape[0]
    batches = [synthetic_batch(256, shape, adim, dev, s) for s in range(4)]
    variants = [("fp32", "", False), ("bf16", "", False)]
    if args.compile:
        variants = [("bf16", "", False), ("bf16", "modules", False), ("bf16", "update", False)]
    if args.fused_heads:  # the same with the Q heads fused: eager kernels, and (--compile) the compiled update
        variants += [("bf16", "", True)] + ([("bf16", "update", True)] if args.compile else [])
    if args.autotune:
        variants = [("bf16", "update", True), ("bf16", "autotune", True)]
    if args.variants:
        variants = [(p, "" if c == "none" else c, fused == ["fused"])
                    for p, c, *fused in (v.split(":") for v in args.variants)]
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    for precision, compiled, fused in variants:
        name = f"{precision}{'_compiled_' + compiled if compiled else ''}{'_fused' if fused else ''}"
        try:
            m = make(venv, precision, compiled=compiled, fused=fused)
            update = _time(lambda i, m=m: m._update_fn(batches[i % 4]), args.updates, 5, dev)
            _fill(m.replay_buffer, venv, 2000, np.random.default_rng(0))
            step = _time(lambda i, m=m: m.train(1, 256), args.updates, 3, dev)
        except Exception as e:  # noqa: BLE001 - report and go on: one failing variant must not hide the others
            print(f"{name}: failed: {type(e).__name__}: {e}", flush=True)
            continue
        results[name] = {"update_ms": update, "sample_update_ms": step}
        print(f"{name:<40} update {update:6.3f} ms   sample+update {step:6.3f} ms", flush=True)
        _dump(results, args.json)  # after every variant: a call cut short keeps what it measured
        if args.profile_graph and (precision, compiled, fused) == variants[-1]:
            _profile(lambda i, m=m: m._update_fn(batches[i % 4]), f"graph replays of {name}")
        m = None
        torch.cuda.empty_cache()
    if not args.profile:
        return _dump(results, args.json)
    precision, *fused = args.profile.split(":")
    m = make(venv, precision, graph=False, fused=fused == ["fused"])
    for i in range(5):
        m._update_fn(batches[i % 4])
    _profile(lambda i: m._update_fn(batches[i % 4]), f"eager {args.profile}")
    _dump(results, args.json)


def _profile(fn, title: str) -> None:
    """The top 25 CUDA kernels of 10 calls of fn(i)."""
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for i in range(10):
            fn(i)
        torch.cuda.synchronize()
    print(f"{title}, 10 updates:")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=90))


def _dump(results: dict, path: str | None) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    configure_torch("cuda" if torch.cuda.is_available() else "cpu")  # cuDNN autotuning, TF32: as the CLI
    main()
