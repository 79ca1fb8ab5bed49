"""Independent GPU work side by side: a second CUDA stream that forks from the current stream and joins back.

DrQ computes its TD target (next-observation encoder, actor, target critic; no gradients) on it while the current
stream runs the online encoder and critic (``DrQ(overlap_target=True)``): at batch 256 many of these kernels leave
most of an H100's SMs idle, so the two branches overlap. Works inside CUDA graph capture (the side stream forks
from and joins the capturing stream, as ``torch.cuda.graph`` requires: the graph gets two parallel branches) and
under ``torch.compile`` (``run`` and ``join`` are not traced; dynamo breaks the graph there and the caller passes a
separately compiled function).

Memory: tensors the caller passes in must stay referenced until ``join`` (the current stream may otherwise reuse
their memory while the side stream reads it); results may be read on the current stream only after ``join``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class SideStream:
    """A fork/join pair around one CUDA stream of ``device``."""

    def __init__(self, device: torch.device):
        if device.type != "cuda":
            raise ValueError(f"SideStream needs a CUDA device, got {device}")
        self.device = device
        self._stream: torch.cuda.Stream | None = None

    @torch.compiler.disable
    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` queued on the side stream after all work queued so far on the current stream."""
        if self._stream is None:
            self._stream = torch.cuda.Stream(device=self.device)
        self._stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self._stream):
            return fn(*args)

    @torch.compiler.disable
    def join(self) -> None:
        """The current stream waits for everything queued on the side stream."""
        if self._stream is not None:
            torch.cuda.current_stream(self.device).wait_stream(self._stream)
