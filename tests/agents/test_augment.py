"""random_shift against a brute-force numpy reference: edge-replicated integer shifts in [-pad, pad]^2 per sample."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from plasticrl.agents.drq.augment import random_shift


def distinct_images(b: int, c: int, h: int, w: int, seed: int = 0, dtype=torch.uint8) -> torch.Tensor:
    """Images whose pixel values are all distinct within each (sample, channel): any two shifts are told apart."""
    assert h * w <= 256
    g = torch.Generator().manual_seed(seed)
    flat = torch.stack([torch.randperm(h * w, generator=g) for _ in range(b * c)])
    return flat.reshape(b, c, h, w).to(dtype)


def reference_shift(img: np.ndarray, dy: int, dx: int, pad: int) -> np.ndarray:
    """img (C, H, W): pad by ``pad`` replicating edges, crop the H x W window offset by (dy, dx) from the center."""
    _, h, w = img.shape
    padded = np.pad(img, ((0, 0), (pad, pad), (pad, pad)), mode="edge")
    return padded[:, pad + dy: pad + dy + h, pad + dx: pad + dx + w]


def recover_shifts(inp: torch.Tensor, out: torch.Tensor, pad: int, search: int | None = None) -> list[tuple[int, int]]:
    """Per sample, the unique (dy, dx) with |dy|, |dx| <= search whose reference equals the output (all channels)."""
    search = pad if search is None else search
    shifts = []
    x, y = inp.numpy(), out.numpy()
    for i in range(x.shape[0]):
        hits = [
            (dy, dx)
            for dy in range(-search, search + 1)
            for dx in range(-search, search + 1)
            if np.array_equal(reference_shift(x[i], dy, dx, search), y[i])
        ]
        assert len(hits) == 1, f"sample {i}: output matches shifts {hits}, expected exactly one"
        shifts.append(hits[0])
    return shifts


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_shape_dtype_device_preserved_and_input_untouched(dtype):
    x = distinct_images(5, 9, 12, 10, dtype=dtype)
    before = x.clone()
    y = random_shift(x, pad=4)
    assert y.shape == x.shape and y.dtype == dtype and y.device == x.device
    assert torch.equal(x, before)


@pytest.mark.parametrize("c,h,w", [(3, 10, 10), (9, 9, 12), (6, 12, 7)])
def test_every_output_is_one_edge_replicated_shift_within_pad(c, h, w):
    pad = 4
    x = distinct_images(64, c, h, w, seed=c)
    y = random_shift(x, pad=pad, generator=torch.Generator().manual_seed(1))
    # search a wider range than pad: an out-of-range shift would be found (and fail the bound) rather than missed
    shifts = recover_shifts(x, y, pad, search=pad + 1)
    assert all(abs(dy) <= pad and abs(dx) <= pad for dy, dx in shifts), shifts


def test_all_channels_of_a_sample_share_the_shift():
    pad = 4
    x = distinct_images(32, 9, 10, 10, seed=5)
    y = random_shift(x, pad=pad, generator=torch.Generator().manual_seed(2))
    whole = recover_shifts(x, y, pad)
    for ch in range(9):
        per_channel = recover_shifts(x[:, ch: ch + 1], y[:, ch: ch + 1], pad)
        assert per_channel == whole, f"channel {ch} moved differently"


def test_samples_get_independent_shifts_covering_the_full_range():
    pad = 4
    g = torch.Generator().manual_seed(3)
    x = distinct_images(64, 3, 10, 10, seed=7)
    counts: Counter = Counter()
    first = None
    for _ in range(12):
        shifts = recover_shifts(x, random_shift(x, pad=pad, generator=g), pad)
        first = first or shifts
        counts.update(shifts)
    # one batch of 64: ~44 distinct shifts expected out of 81; a shared or constant shift gives 1
    assert len(set(first)) >= 25
    assert any(dy != dx for dy, dx in first)  # dy and dx are drawn separately
    # all 81 shifts occur (768 draws), roughly uniformly (expected 9.5 each)
    assert set(counts) == {(dy, dx) for dy in range(-pad, pad + 1) for dx in range(-pad, pad + 1)}
    assert max(counts.values()) <= 30
    dys = Counter(dy for dy, _ in counts.elements())
    dxs = Counter(dx for _, dx in counts.elements())
    for marg in (dys, dxs):
        assert all(40 <= marg[v] <= 135 for v in range(-pad, pad + 1)), marg  # expected 85 each


def test_default_generator_also_varies_between_calls():
    x = distinct_images(16, 3, 10, 10, seed=9)
    torch.manual_seed(0)
    a = random_shift(x, pad=4)
    b = random_shift(x, pad=4)
    assert not torch.equal(a, b)
    torch.manual_seed(0)
    assert torch.equal(random_shift(x, pad=4), a)  # reproducible under the global seed


def test_generator_makes_it_deterministic():
    x = distinct_images(16, 3, 10, 10, seed=11)
    a = random_shift(x, pad=4, generator=torch.Generator().manual_seed(42))
    b = random_shift(x, pad=4, generator=torch.Generator().manual_seed(42))
    assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_pad_zero_is_identity(dtype):
    x = distinct_images(8, 9, 11, 13, seed=4, dtype=dtype)
    for _ in range(5):
        assert torch.equal(random_shift(x, pad=0), x)


@pytest.mark.parametrize("pad", [1, 2])
def test_small_pads_stay_in_range(pad):
    x = distinct_images(64, 3, 8, 8, seed=pad)
    shifts = recover_shifts(x, random_shift(x, pad=pad, generator=torch.Generator().manual_seed(pad)), pad,
                            search=pad + 2)
    assert all(abs(dy) <= pad and abs(dx) <= pad for dy, dx in shifts)
    assert {dy for dy, _ in shifts} == set(range(-pad, pad + 1))
    assert {dx for _, dx in shifts} == set(range(-pad, pad + 1))


def test_non_contiguous_input():
    x = distinct_images(16, 3, 10, 10, seed=13)
    xt = x.transpose(2, 3)  # a non-contiguous view
    y = random_shift(xt, pad=3, generator=torch.Generator().manual_seed(0))
    recover_shifts(xt.contiguous(), y, 3)
