"""Random-shift augmentation (DrQ / DrQ-v2): pad each image by ``pad`` pixels (edge replicate) and crop back at a
random integer offset per sample. Done by index arithmetic on the input dtype (uint8 stays uint8), on the input's
device, so it costs one gather and no host work."""

from __future__ import annotations

import torch


def random_shift(images: torch.Tensor, pad: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """Shifts each image of ``images`` (B, C, H, W) by its own (dy, dx) in [-pad, pad]^2, replicating edges.

    Returns a tensor of the same shape and dtype. The whole channel stack of a sample moves together.
    """
    b, c, h, w = images.shape
    dev = images.device
    shifts = torch.randint(0, 2 * pad + 1, (b, 2), device=dev, generator=generator) - pad
    rows = (torch.arange(h, device=dev).unsqueeze(0) + shifts[:, :1]).clamp_(0, h - 1)  # (B, H)
    cols = (torch.arange(w, device=dev).unsqueeze(0) + shifts[:, 1:]).clamp_(0, w - 1)  # (B, W)
    flat = rows.unsqueeze(2) * w + cols.unsqueeze(1)  # (B, H, W) source pixel index
    flat = flat.reshape(b, 1, h * w).expand(b, c, h * w)
    return images.reshape(b, c, h * w).gather(2, flat).reshape(b, c, h, w)
