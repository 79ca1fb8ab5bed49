"""Replaying a whole DrQ update (forward, backward, optimizer steps, target update) as one CUDA graph.

An eager DrQ update launches several hundred small kernels; on an H100 the launches, not the math, set its time.
``GraphedUpdate`` records the update once into a CUDA graph over static input tensors; every later update copies
the sampled batch into those tensors and replays the graph, one launch. Random numbers (augmentation shifts, policy
noise) stay fresh on every replay: PyTorch advances the CUDA generator's offset per replay. Requirements: Adam with
``capturable=True`` (DrQ builds its optimizers so on CUDA) and a constant learning rate.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from agents.replay import PixelBatch


class GraphedUpdate:
    """Wraps ``update_fn(batch) -> Tensor`` (1-D stats vector) into a captured CUDA graph.

    The first call runs ``update_fn`` eagerly on a side stream (a real update: it also initialises optimizer state
    and lets cuDNN pick its kernels), then records the graph without running it. Every call is exactly one update.

    :param update_fn: one full update on a batch; must not sync with the host.
    """

    def __init__(self, update_fn: Callable[[PixelBatch], torch.Tensor]):
        self.update_fn = update_fn
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_batch: PixelBatch | None = None
        self.static_out: torch.Tensor | None = None

    def _capture(self, batch: PixelBatch) -> torch.Tensor:
        self.static_batch = PixelBatch(*(t.clone() for t in batch))
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            out = self.update_fn(self.static_batch).clone()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.static_out = self.update_fn(self.static_batch)
        self.graph = graph
        return out

    def __call__(self, batch: PixelBatch) -> torch.Tensor:
        """One update on ``batch`` (tensors on the graph's device); returns a fresh copy of the stats vector."""
        if self.graph is None:
            return self._capture(batch)
        for dst, src in zip(self.static_batch, batch):  # type: ignore[arg-type]
            dst.copy_(src, non_blocking=True)
        self.graph.replay()
        assert self.static_out is not None
        return self.static_out.clone()
