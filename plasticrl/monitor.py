"""PlasticityMonitor: probe any ``nn.Module`` groups for plasticity metrics.

Usage::

    monitor = PlasticityMonitor({"actor": actor, "critic": [q0, q1]})
    logs = monitor.probe(lambda: (actor(obs), q0(obs, act), q1(obs, act)))

Keys (``<layer>`` is an activation call site as ``plasticrl.capture`` names it: the dotted module name of an
activation module, e.g. ``1`` or ``convnet.1``, ``act#0``/``act#1`` for one module called at two places of a
forward, ``relu_0``/``q1.relu_1`` for functional calls; for a list group prefixed by the list index, ``0.net.1``,
for a dict group by its key)::

    plasticity/<group>/<layer>/dormant_ratio   per hidden activation call site
    plasticity/<group>/<layer>/fau             per call site whose kind is in FAU_KINDS
    plasticity/<group>/dormant_ratio           dormant units / units, all sites
    plasticity/<group>/fau                     active entries / entries, all FAU sites
    plasticity/<group>/srank                   of the group features (see below)
    plasticity/<group>/effective_rank
    plasticity/<group>/feature_norm
    plasticity/<group>/weight_norm             all parameters of the group
    plasticity/<group>/grad_norm               only if some parameter has a .grad
    plasticity/<group>/<member>/<metric>       list and dict groups: dormant_ratio, fau, srank, effective_rank,
                                               feature_norm, weight_norm of each member

The probe runs ``forward_fn`` once in eval mode (no BatchNorm-statistics
update, no dropout) under ``torch.no_grad()`` inside ``capture_groups``; its
hooks and function mode exist only during it. Metrics are computed on the
activations' device and fetched with one ``.cpu()``; on CUDA,
``torch.linalg.svdvals`` itself also synchronises (one SVD per features
matrix: per group, and per member of a list or dict group).

Probed layers: every activation call made inside a forward of a group module,
module or functional (``nn.ReLU``, ``F.relu``, ``torch.tanh``, ...), in
execution order, one site per call site; the squashes a head applies after its
last Linear (an actor's tanh) are outputs, not layers. A site called in
several forwards (an encoder on obs and next_obs) has its calls concatenated
along the batch dim. FAU only for the kinds in ``FAU_KINDS`` (rectifier-like;
not tanh, sigmoid, softplus, ...), dormancy for all.

Group features (traced in the probe): for a forward whose last weight layer
(Linear or Conv) follows another and after which only squashes ran, the input
of that last layer (the penultimate features, as in Kumar et al. 2021);
otherwise the forward's output (if it is a tensor). A list or dict group has
each member's features and, pooled, their per-sample concatenation
``[f_0(x), f_1(x), ...]`` (when the members saw the same number of samples).

A group with no hidden activation call in a probe gets no dormant_ratio and no
fau, and a RuntimeWarning (once per monitor and group) that says why.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from plasticrl import metrics
from plasticrl.capture import ACTIVATION_KINDS, ACTIVATION_TYPES, FAU_KINDS, Captured, capture_groups, members

__all__ = ["ACTIVATION_KINDS", "ACTIVATION_TYPES", "FAU_KINDS", "PlasticityMonitor"]

Group = nn.Module | Sequence[nn.Module] | Mapping[str, nn.Module]


def _wrap(group: Group) -> nn.Module:
    """The group as one module (references only): a list becomes an nn.ModuleList, a dict an nn.ModuleDict, so that
    parameters and submodules shared between members are counted once."""
    if isinstance(group, nn.Module):
        return group
    if isinstance(group, Mapping):
        return nn.ModuleDict({str(k): m for k, m in group.items()})
    return nn.ModuleList(group)


def _pool_features(features: list[Tensor]) -> Tensor | None:
    """Per-sample concatenation of the members' features, or None if their sample counts differ."""
    if len({f.shape[0] for f in features}) != 1:
        return None
    return torch.cat([f.reshape(f.shape[0], -1).float() for f in features], dim=1)


class PlasticityMonitor:
    """Captures groups of modules only during :meth:`probe` and returns scalar metrics.

    Args:
        groups: name -> module, list of modules or dict of modules (e.g. twin critics ``[q1, q2]``).
        tau: dormancy threshold on the normalised score (Sokar et al. 2023).
        delta: srank threshold (Kumar et al. 2021).
        histograms: if True, :attr:`last_histograms` holds per-unit dormancy
            scores per layer (CPU float32 ``(units,)``), keyed
            ``plasticity/<group>/<layer>/dormant_score``.
        linear_groups: groups with no nonlinearity by design (e.g. linear modulators): their weight and feature
            metrics only, and no warning that they have no activations.
    """

    def __init__(
        self,
        groups: dict[str, Group],
        tau: float = 0.025,
        delta: float = 0.01,
        histograms: bool = False,
        linear_groups: Iterable[str] = (),
    ) -> None:
        self.tau = tau
        self.delta = delta
        self.histograms = histograms
        self.last_histograms: dict[str, Tensor] = {}
        self.groups: dict[str, nn.Module] = {name: _wrap(g) for name, g in groups.items()}
        self._members: dict[str, list[tuple[str, nn.Module]]] = {name: members(g) for name, g in groups.items()}
        self._is_single = {name: isinstance(g, nn.Module) for name, g in groups.items()}
        self._warned: set[str] = set(linear_groups)  # groups never warned about

    def probe(self, forward_fn: Callable[[], Any]) -> dict[str, float]:
        """Run ``forward_fn()`` once (eval mode, no grad) and return ``{key: value}``.

        Hooks are removed and every submodule's train/eval flag restored even
        if ``forward_fn`` raises. One device->host transfer in total.
        """
        modes = [(m, m.training) for root in self.groups.values() for m in root.modules()]
        try:
            for root in self.groups.values():
                root.eval()
            groups = {name: dict(ms) if not self._is_single[name] else ms[0][1] for name, ms in self._members.items()}
            with capture_groups(groups, features=True) as captured, torch.no_grad():
                forward_fn()
        finally:
            for module, training in modes:
                module.training = training
        self._warn(captured)
        with torch.no_grad():
            keys, values, hists = self._compute(captured)
        return self._to_host(keys, values, hists)

    def _warn(self, captured: dict[str, Captured]) -> None:
        """Once per group: a group the probe measured no activation of."""
        for group, cap in captured.items():
            if group in self._warned or cap.outputs():
                continue
            self._warned.add(group)
            if not cap.ran:
                why = ("none of its modules ran in the probe's forward_fn (called through module __call__, not "
                       ".forward); call them there")
            else:
                why = ("it ran, but no activation call was seen inside its forward. Activations are seen as torch "
                       "calls (nn.ReLU, F.relu, torch.tanh, F.gelu, ...: plasticrl.capture.ACTIVATION_KINDS) made "
                       "inside a forward of one of the group's modules; one written another way (x.clamp(min=0), a "
                       "custom op, torch.compile'd code) is invisible, and a squash after a head's last Linear is "
                       "an output. Use an activation module or function; if the group has no nonlinearity by design "
                       "(e.g. linear modulators), ignore this")
            warnings.warn(f"PlasticityMonitor: group {group!r} gets no dormant_ratio and no fau: {why}",
                          RuntimeWarning, stacklevel=3)

    def _compute(self, captured: dict[str, Captured]) -> tuple[list[str], list[Tensor], dict[str, Tensor]]:
        """All metrics as 0-dim device tensors (no host sync)."""
        keys: list[str] = []
        values: list[Tensor] = []
        hists: dict[str, Tensor] = {}

        def add(key: str, value: Tensor) -> None:
            keys.append(key)
            values.append(value)

        def add_features(prefix: str, feats: Tensor) -> None:
            sigma = metrics.singular_values(feats)  # one SVD for both ranks
            add(f"{prefix}/srank", metrics.srank_from_singular_values(sigma, self.delta))
            add(f"{prefix}/effective_rank", metrics.effective_rank_from_singular_values(sigma))
            add(f"{prefix}/feature_norm", metrics.feature_norm(feats))

        for group, root in self.groups.items():
            prefix = f"plasticity/{group}"
            cap = captured[group]
            sites = cap.sites()
            masks: dict[str, Tensor] = {}
            layer_values: list[tuple[str, Tensor]] = []
            for site in sites:
                act = site.activations
                masks[site.name] = metrics.dormant_mask(act, self.tau)
                layer_values.append((f"{prefix}/{site.name}/dormant_ratio", masks[site.name].float().mean()))
                if site.kind in FAU_KINDS:
                    layer_values.append((f"{prefix}/{site.name}/fau", metrics.fau(act)))
                if self.histograms:
                    magnitude = act.detach().float().abs().mean(dim=[d for d in range(act.dim()) if d != 1])
                    hists[f"{prefix}/{site.name}/dormant_score"] = metrics.dormant_scores(act)
                    hists[f"{prefix}/{site.name}/activation_magnitude"] = magnitude  # mean |h_i| per unit

            def add_activity(key_prefix: str, chosen: list[Any]) -> None:
                if chosen:  # dormant units / units and active entries / entries over the chosen sites
                    add(f"{key_prefix}/dormant_ratio", torch.cat([masks[s.name] for s in chosen]).float().mean())
                fau_sites = [s.activations for s in chosen if s.kind in FAU_KINDS]
                if fau_sites:
                    add(f"{key_prefix}/fau", metrics.fau(fau_sites))

            add_activity(prefix, sites)
            member_feats = [cap.features[m] for m, _ in self._members[group] if m in cap.features]
            pooled = member_feats[0] if len(member_feats) == 1 else (
                _pool_features(member_feats) if member_feats else None)
            if pooled is not None:
                add_features(prefix, pooled)
            add(f"{prefix}/weight_norm", metrics.weight_norm(root))
            if any(p.grad is not None for p in root.parameters()):
                add(f"{prefix}/grad_norm", metrics.grad_norm(root))
            if not self._is_single[group]:
                for member, module in self._members[group]:
                    add_activity(f"{prefix}/{member}", [s for s in sites if s.member == member])
                    if member in cap.features:
                        add_features(f"{prefix}/{member}", cap.features[member])
                    add(f"{prefix}/{member}/weight_norm", metrics.weight_norm(module))
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
