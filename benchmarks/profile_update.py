"""Where the time of one DrQ update goes on a GPU: ms per update for precision x CUDA graph, and the top CUDA
kernels of an eager fp32 update (torch.profiler).

    python benchmarks/profile_update.py --batch-size 256
"""

import argparse

import torch

from plasticrl.agents import DrQ
from plasticrl.lab.bench import _pixel_venv, _time, synthetic_batch
from plasticrl.lab.runtime import configure_torch


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--updates", type=int, default=100)
    args = p.parse_args()
    dev = torch.device("cuda")
    venv = _pixel_venv()
    shape, adim = venv.observation_space.shape, venv.action_space.shape[0]
    batches = [synthetic_batch(args.batch_size, shape, adim, dev, s) for s in range(4)]
    for precision in ("fp32", "bf16"):
        for graph in (False, True):
            m = DrQ("CnnPolicy", venv, buffer_size=1000, device=dev, cuda_graph=graph, precision=precision)
            ms = _time(lambda i, m=m: m._update_fn(batches[i % 4]), args.updates, 5, dev)
            print(f"precision={precision} cuda_graph={graph}: {ms:.2f} ms/update", flush=True)
            if not graph:
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                    for i in range(10):
                        m._update_fn(batches[i % 4])
                    torch.cuda.synchronize()
                print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=70))
            del m


if __name__ == "__main__":
    configure_torch("cuda" if torch.cuda.is_available() else "cpu")  # cuDNN autotuning, TF32: as the CLI
    main()
