"""PlasticityMonitor: probe any ``nn.Module`` groups for plasticity metrics.

Usage::

    monitor = PlasticityMonitor({"actor": actor, "critic": [q0, q1]})
    logs = monitor.probe(lambda: (actor(obs), q0(obs, act), q1(obs, act)))

Keys (``<layer>`` is the dotted name from ``named_modules()``; for a group
given as a list, prefixed by the list index like ``nn.ModuleList`` does,
e.g. ``0.net.1``)::

    plasticity/<group>/<layer>/dormant_ratio   per activation layer
    plasticity/<group>/<layer>/fau
    plasticity/<group>/dormant_ratio           dormant units / units, all layers
    plasticity/<group>/fau                     active entries / entries, all layers
    plasticity/<group>/srank                   of the group features (see below)
    plasticity/<group>/effective_rank
    plasticity/<group>/feature_norm
    plasticity/<group>/weight_norm             all parameters of the group
    plasticity/<group>/grad_norm               only if some parameter has a .grad

The probe runs ``forward_fn`` once in eval mode (no BatchNorm-statistics
update, no dropout) under ``torch.no_grad()``; hooks exist only during it.
Metrics are computed on the activations' device and fetched with one
``.cpu()``; on CUDA, ``torch.linalg.svdvals`` itself also synchronises
(one SVD per group with features).

Probed layers: every activation *module* (``ACTIVATION_TYPES``) found by
``named_modules()``; functional activations (``F.relu``) are invisible.
A module called several times in one probe (e.g. an encoder applied to obs and
next_obs) has its outputs concatenated along the batch dim. If one activation
instance is reused for outputs of different unit shapes (``self.act`` after
layers of different widths) each shape becomes its own layer ``<name>#<j>``
(j = order of first call).

Group features: for each group module, if its last leaf module (registration
order) is an ``nn.Linear``, the *input* of that Linear (the penultimate
features, as in Kumar et al. 2021); otherwise the module's output (if it is a
tensor). For a list group the features of the LAST module in the list are used
(order e.g. ``[encoder, head]``; for twin critics use one group per Q-net if
both ranks matter).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from plasticrl import metrics

__all__ = ["ACTIVATION_TYPES", "PlasticityMonitor"]

ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.RReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardtanh,
    nn.Tanh,
    nn.Sigmoid,
    nn.Hardsigmoid,
    nn.Softplus,
    nn.Softsign,
)


def _feature_site(module: nn.Module) -> tuple[nn.Module, bool]:
    """(module to hook, take its input?) for the group features of ``module``."""
    leaves = [m for m in module.modules() if next(m.children(), None) is None]
    if leaves and isinstance(leaves[-1], nn.Linear):
        return leaves[-1], True
    return module, False


class _Recorder:
    """Collects detached copies of tensors per key during one probe."""

    def __init__(self) -> None:
        self.data: dict[str, list[Tensor]] = {}

    def hook(self, key: str, use_input: bool) -> Callable[..., None]:
        def fn(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            value = inputs[0] if use_input and inputs else output
            if isinstance(value, Tensor):
                # clone: a later in-place op (ReLU(inplace), x += skip) must not alter it
                self.data.setdefault(key, []).append(value.detach().clone())

        return fn


def _split_by_shape(name: str, tensors: list[Tensor]) -> dict[str, Tensor]:
    """Concatenate calls along batch; one entry per distinct non-batch shape."""
    by_shape: dict[tuple[int, ...], list[Tensor]] = {}
    for t in tensors:
        by_shape.setdefault(tuple(t.shape[1:]), []).append(t)
    if len(by_shape) == 1:
        return {name: torch.cat(tensors)}
    return {f"{name}#{j}": torch.cat(ts) for j, ts in enumerate(by_shape.values())}


class PlasticityMonitor:
    """Hooks groups of modules only during :meth:`probe` and returns scalar metrics.

    Args:
        groups: name -> module or list of modules.
        tau: dormancy threshold on the normalised score (Sokar et al. 2023).
        delta: srank threshold (Kumar et al. 2021).
        histograms: if True, :attr:`last_histograms` holds per-unit dormancy
            scores per layer (CPU float32 ``(units,)``), keyed
            ``plasticity/<group>/<layer>/dormant_score``.
    """

    def __init__(
        self,
        groups: dict[str, nn.Module | list[nn.Module]],
        tau: float = 0.025,
        delta: float = 0.01,
        histograms: bool = False,
    ) -> None:
        self.tau = tau
        self.delta = delta
        self.histograms = histograms
        self.last_histograms: dict[str, Tensor] = {}
        # A list becomes an nn.ModuleList (references only): names "0.x", "1.x",
        # parameters and submodules shared between members counted once.
        self.groups: dict[str, nn.Module] = {
            name: nn.ModuleList(mods) if isinstance(mods, (list, tuple)) else mods for name, mods in groups.items()
        }
        self._feature_modules: dict[str, nn.Module] = {
            name: (root[-1] if isinstance(groups[name], (list, tuple)) else root) for name, root in self.groups.items()
        }

    def probe(self, forward_fn: Callable[[], Any]) -> dict[str, float]:
        """Run ``forward_fn()`` once (eval mode, no grad) and return ``{key: value}``.

        Hooks are removed and every submodule's train/eval flag restored even
        if ``forward_fn`` raises. One device->host transfer in total.
        """
        recorders = {name: _Recorder() for name in self.groups}
        handles = []
        modes = [(m, m.training) for root in self.groups.values() for m in root.modules()]
        try:
            for group, root in self.groups.items():
                rec = recorders[group]
                for name, module in root.named_modules():
                    if isinstance(module, ACTIVATION_TYPES):
                        handles.append(module.register_forward_hook(rec.hook(name or "self", False)))
                site, use_input = _feature_site(self._feature_modules[group])
                handles.append(site.register_forward_hook(rec.hook("", use_input)))
            for root in self.groups.values():
                root.eval()
            with torch.no_grad():
                forward_fn()
        finally:
            for handle in handles:
                handle.remove()
            for module, training in modes:
                module.training = training

        with torch.no_grad():
            keys, values, hists = self._compute(recorders)
        return self._to_host(keys, values, hists)

    def _compute(self, recorders: dict[str, _Recorder]) -> tuple[list[str], list[Tensor], dict[str, Tensor]]:
        """All metrics as 0-dim device tensors (no host sync)."""
        keys: list[str] = []
        values: list[Tensor] = []
        hists: dict[str, Tensor] = {}

        def add(key: str, value: Tensor) -> None:
            keys.append(key)
            values.append(value)

        for group, root in self.groups.items():
            prefix = f"plasticity/{group}"
            data = dict(recorders[group].data)
            features = data.pop("", None)
            layers: dict[str, Tensor] = {}
            for name, tensors in data.items():
                layers.update(_split_by_shape(name, tensors))

            dormant_units, units, active, entries = [], 0, [], 0
            layer_values: list[tuple[str, Tensor]] = []
            for name, act in layers.items():
                mask = metrics.dormant_mask(act, self.tau)
                layer_fau = metrics.fau(act)
                dormant_units.append(mask.sum())
                units += mask.numel()
                active.append(layer_fau * act.numel())
                entries += act.numel()
                layer_values.append((f"{prefix}/{name}/dormant_ratio", mask.float().mean()))
                layer_values.append((f"{prefix}/{name}/fau", layer_fau))
                if self.histograms:
                    magnitude = act.detach().float().abs().mean(dim=[d for d in range(act.dim()) if d != 1])
                    hists[f"{prefix}/{name}/dormant_score"] = metrics.dormant_scores(act)
                    hists[f"{prefix}/{name}/activation_magnitude"] = magnitude  # mean |h_i| per unit

            if layers:
                add(f"{prefix}/dormant_ratio", torch.stack(dormant_units).sum().float() / units)
                add(f"{prefix}/fau", torch.stack(active).sum() / entries)
            if features is not None:
                feats = torch.cat(features)
                sigma = metrics.singular_values(feats)  # one SVD for both ranks
                add(f"{prefix}/srank", metrics.srank_from_singular_values(sigma, self.delta))
                add(f"{prefix}/effective_rank", metrics.effective_rank_from_singular_values(sigma))
                add(f"{prefix}/feature_norm", metrics.feature_norm(feats))
            add(f"{prefix}/weight_norm", metrics.weight_norm(root))
            if any(p.grad is not None for p in root.parameters()):
                add(f"{prefix}/grad_norm", metrics.grad_norm(root))
            for key, value in layer_values:
                add(key, value)
        return keys, values, hists

    def _to_host(self, keys: list[str], values: list[Tensor], hists: dict[str, Tensor]) -> dict[str, float]:
        """One ``.cpu()`` for all scalars (and histogram vectors)."""
        self.last_histograms = {}
        if not values:
            return {}
        device = values[0].device
        flat = torch.cat(
            [torch.stack([v.to(device, torch.float32) for v in values])] + [h.to(device) for h in hists.values()]
        ).cpu()
        scalars = flat[: len(values)].tolist()
        offset = len(values)
        for key, h in hists.items():
            self.last_histograms[key] = flat[offset : offset + h.numel()].clone()
            offset += h.numel()
        return dict(zip(keys, scalars))
