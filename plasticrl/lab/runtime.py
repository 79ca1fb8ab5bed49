"""Process-wide settings of a run: the device, and torch's global flags. The lab sets them here and nowhere else;
building an agent changes none of them.

Library users who train on a GPU call ``configure_torch("cuda")`` once at the top of their script, as DrQ-v2's
``train.py`` sets ``cudnn.benchmark`` in its entry script.
"""

from __future__ import annotations

import torch

from plasticrl.lab.config.base import ConfigError

# dynamo compiles an optimizer step once per optimizer object (3 per DrQ agent); with its default limit of 8 per code
# object a process's third compiled agent would silently run eager optimizer steps
RECOMPILE_LIMIT = 64


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; ConfigError for ``cuda`` without one."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("run.device=cuda but torch sees no CUDA device; use run.device=auto or cpu")
    return device


def configure_torch(device: str) -> None:
    """On CUDA: cuDNN autotuning (``cudnn.benchmark``), TF32 matmuls (cuDNN convolutions use TF32 by default), and
    dynamo's recompile limit raised to ``RECOMPILE_LIMIT`` (only upwards) so that several compiled agents in one
    process all compile their optimizer steps. On the CPU: nothing."""
    if torch.device(device).type != "cuda":
        return
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
