"""The acceleration seam that DrQ (``plasticrl.agents.drq``), the Decision Transformer (``plasticrl.agents.l2m``) and
the continual methods share: an update function is made fast by wrapping it, never by flags inside it.

- ``compile_update(fn, mode)``: ``torch.compile`` of the update (Inductor fuses its elementwise work), or ``fn``
  itself when ``mode`` is False.
- ``GraphedUpdate(fn)``: the whole update (forward, backward, optimizer steps, target update) recorded once as a CUDA
  graph and replayed, one launch instead of several hundred small kernels (on an H100 the launches, not the math,
  set an eager DrQ update's time). Every later call copies the batch into the graph's static input tensors and
  replays; with the replay buffer on the GPU the sampling itself (indices, frame-stack gathers, n-step returns) is
  recorded too, and a replay takes no input. ``invalidate()`` drops the graph when the tensors it reads are replaced
  (a load of parameters or optimizer state); in-place writes keep it valid.

Random numbers (augmentation shifts, policy noise, sampled indices) stay fresh on every replay: PyTorch advances the
CUDA generator's offset per replay. Requirements of a graph: Adam/AdamW with ``capturable=True`` (DrQ and
``L2MAgent`` build their optimizers so on CUDA), a constant learning rate, and no host reads of device values inside
the update.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

import torch

# compile_update modes: off, on (Inductor's default), or with Inductor benchmarking Triton GEMM/conv templates against
# cuBLAS/cuDNN per shape (minutes of compiling; no CUDA graphs of its own: GraphedUpdate captures the update)
COMPILE_MODES = (False, True, "default", "max-autotune-no-cudagraphs")


def compile_update(fn: Callable[..., Any], mode: bool | str) -> Callable[..., Any]:
    """``fn`` compiled with ``torch.compile`` in ``mode`` (one of ``COMPILE_MODES``; True is ``"default"``), or
    ``fn`` unchanged for False. Compilation happens at the first call. ValueError for another mode."""
    if mode is False:
        return fn
    if mode is not True and not (isinstance(mode, str) and mode in COMPILE_MODES):
        raise ValueError(f"compile mode {mode!r}: allowed are {', '.join(map(repr, COMPILE_MODES))}")
    return torch.compile(fn, mode="default" if mode is True else mode)


_CAPTURE_STREAMS: dict[int, torch.cuda.Stream] = {}


def capture_stream() -> torch.cuda.Stream:
    """The stream on which every ``GraphedUpdate`` of the current CUDA device warms up and records its graph."""
    device = torch.cuda.current_device()
    if device not in _CAPTURE_STREAMS:
        _CAPTURE_STREAMS[device] = torch.cuda.Stream(device)
    return _CAPTURE_STREAMS[device]


class GraphedUpdate:
    """Wraps ``update_fn(batch) -> Tensor`` (1-D stats vector) or ``update_fn() -> Tensor`` into a captured CUDA graph.

    ``batch`` is a tuple (or NamedTuple, e.g. a ``PixelBatch``) of device tensors, or nothing, when ``update_fn``
    draws its own batch from a device replay buffer inside the graph. The first call (and the first after
    ``invalidate()``) waits for the device to be idle, runs ``update_fn`` eagerly on ``capture_stream()`` (a real
    update: it also initialises optimizer state and lets cuDNN pick its kernels), then records the graph on that same
    stream without running it. Every call is exactly one update.

    :param update_fn: one full update; must not sync with the host or branch on device values.
    """

    def __init__(self, update_fn: Callable[..., torch.Tensor]):
        self.update_fn = update_fn
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_inputs: tuple[torch.Tensor, ...] = ()
        self.static_out: torch.Tensor | None = None
        self._rebuild: Callable[[Any], Any] = tuple  # tensors -> the batch type update_fn takes

    def _capture(self, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        self.static_inputs = tuple(t.clone() for t in inputs)
        # Nothing queued before may still be in flight (an async env step's copies, another graph's replay), and the
        # warm-up runs on the stream that then records, the same one for every graph: cuBLAS(Lt) and cuDNN state kept
        # per stream (workspaces) is then set up in a warm-up, not inside a capture.
        torch.cuda.synchronize()
        stream = capture_stream()
        with torch.cuda.stream(stream):
            out = self.update_fn(*self._args()).clone()
        stream.synchronize()
        # No garbage collection inside the capture: a collection there can free an old CUDA graph or event (say, of
        # an agent dropped earlier), which invalidates the capture (torch.cuda.graph no longer collects by default).
        gc.collect()
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=stream):
                self.static_out = self.update_fn(*self._args())
        finally:
            if gc_was_enabled:
                gc.enable()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = graph
        return out

    def invalidate(self) -> None:
        """Drops the captured graph: the next call captures anew. Call it when the parameters, optimizer state or
        buffers the graph reads are replaced by new tensors (a load); in-place writes keep the graph valid."""
        self.graph, self.static_inputs, self.static_out = None, (), None

    def _args(self) -> tuple[Any, ...]:
        return (self._rebuild(self.static_inputs),) if self.static_inputs else ()

    def __call__(self, batch: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
        """One update on ``batch`` (tensors on the graph's device; None for a graph that samples its own batch);
        returns a fresh copy of the stats vector."""
        inputs = tuple(batch) if batch is not None else ()
        if self.graph is None:
            self._rebuild = getattr(type(batch), "_make", tuple)  # NamedTuple._make(iterable), or tuple
            return self._capture(inputs)
        shapes = [tuple(t.shape) for t in inputs]
        if shapes != [tuple(t.shape) for t in self.static_inputs]:  # copy_ would broadcast or keep stale rows
            raise ValueError(f"this CUDA graph was captured for inputs of shapes "
                             f"{[tuple(t.shape) for t in self.static_inputs]}, got {shapes}; make a new "
                             "GraphedUpdate for another batch size")
        for dst, src in zip(self.static_inputs, inputs):
            dst.copy_(src, non_blocking=True)
        self.graph.replay()
        assert self.static_out is not None
        return self.static_out.clone()


def keep_own_optimizer_flags(state: dict[str, Any], optimizer: torch.optim.Optimizer) -> None:
    """Sets the ``fused``/``capturable`` flags of a loaded optimizer ``state`` (a ``state_dict``, changed in place)
    to ``optimizer``'s own before ``optimizer.load_state_dict(state)``: a state carries its saver's flags, and a
    CPU-saved agent must still step inside CUDA graphs once loaded on a GPU, and vice versa."""
    for group, own in zip(state["param_groups"], optimizer.param_groups):
        for flag in ("fused", "capturable"):
            if flag in own:
                group[flag] = own[flag]
