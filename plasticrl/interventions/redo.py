"""ReDo: recycle dormant units (Sokar et al. 2023, "The Dormant Neuron Phenomenon in Deep Reinforcement Learning";
reference code: google/dopamine ``dopamine/labs/redo/weight_recyclers.py``, ``NeuronRecycler``).

``ReDo(tau=0.1).apply(target, forward_fn)`` runs ``forward_fn`` once (eval mode, no grad) under a traced capture of
the group, scores the units of every chosen hidden activation site as the monitor does (``metrics.dormant_mask``:
``s_i = E|h_i| / mean_j E|h_j|`` over the batch, and over positions for a conv channel, taken after the activation;
dormant if ``s_i <= tau``) and recycles each dormant unit ``i``:

- incoming weights: row ``i`` of the Linear (output channel ``i`` of the conv) and bias ``i`` from a fresh draw of
  the layer's init (``target.init_fn`` on a scratch copy of the layer, else its ``reset_parameters()``); a LayerNorm
  between that layer and the activation gets weight ``i`` = 1 and bias ``i`` = 0;
- outgoing weights: column ``i`` of each Linear (input channel ``i`` of each conv; the columns ``i * S .. (i + 1) * S``
  of a Linear after a flatten of ``(C, *spatial)``, ``S = prod(spatial)``) that read the site's output, set to zero,
  so that the recycled unit's new activity does not reach the output yet: the network computes what it computed
  with those units removed (exactly its old function when they were dead, ``s_i = 0``).

Everything is written in place (``copy_`` through masks), so captured CUDA graphs stay valid; ``Outcome.changes``
holds exactly the recycled entries, so ``finish`` zeroes Adam's moments of those entries only (as dopamine does) and
copies them into the target networks.

Which sites: by default those of rectifier-like kinds (``capture.FAU_KINDS``: ReDo is defined on ReLU networks; a
Tanh trunk is left alone); ``sites=`` (fnmatch globs on the site names the monitor logs, e.g. ``["q1.*"]``) chooses
any. A chosen site is recycled only if its units map one to one onto its layers: its input is the output of one
``nn.Linear``/``nn.ConvNd`` of the group (through an ``nn.LayerNorm`` over the units and copies), read by that
activation only, and its output is read by weight layers of the group only (directly, or a conv map flattened into a
Linear), each layer serving no other site. Any other site is skipped and named, with the reason, in one warning
(once per site and ReDo object). The output layer is never recycled: it feeds no hidden site.

Log (``Outcome.log``): ``units_recycled``, ``units`` (units of the recycled sites), ``dormant_ratio_before``
(dormant / units over those sites, before recycling), ``<site>/units_recycled``; from the second application,
dopamine's ``dead_intersected_percent``: of the units dormant at the last application, the percentage dormant again
now (pooled over sites, and ``<site>/dead_intersected_percent``; 0 when none was dormant then, as in dopamine).

Default ``tau = 0.1``: the paper's ReDo threshold for its high replay-ratio settings (replay ratio 1 and more, where
ReDo is shown to help; 0.025 for the default DQN replay ratio 0.25), as timoklein/redo's PyTorch port also sets it
("0.025 for default, else 0.1"), and the lab's ReDo default; plasticrl's agents train at replay ratio 1 or more.
Dopamine's ``dead_neurons_threshold`` class default is 0 (its experiment configs set the threshold). The monitor's
0.025 measures dormancy at the paper's default-setting value.

torch and the standard library only.
"""

from __future__ import annotations

import copy
import fnmatch
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from plasticrl import metrics
from plasticrl.capture import FAU_KINDS, Captured, Flow, Layer, Site, capture, members
from plasticrl.interventions.base import Changes, Group, Outcome, Target, finish

__all__ = ["DEFAULT_TAU", "ReDo"]

DEFAULT_TAU = 0.1
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass
class _Plan:
    """Where one site's units live: unit ``i`` is ``incoming.weight[i]``, ``incoming.bias[i]``, entry ``i`` of each
    norm, and ``weight[:, i * block:(i + 1) * block]`` of each outgoing layer."""

    incoming: nn.Module
    norms: tuple[nn.LayerNorm, ...]
    outgoing: tuple[tuple[nn.Module, int], ...]

    def same_as(self, other: _Plan) -> bool:
        return (self.incoming is other.incoming and len(self.norms) == len(other.norms)
                and all(a is b for a, b in zip(self.norms, other.norms))
                and {(id(m), k) for m, k in self.outgoing} == {(id(m), k) for m, k in other.outgoing})


class ReDo:
    """Recycles the tau-dormant units of a group's hidden activation sites (see the module docstring).

    :param tau: dormancy threshold on the normalised score, ``>= 0`` (default 0.1, the paper's; see the module
        docstring).
    :param sites: fnmatch globs on site names (``["q1.*", "q2.*"]``); None: every site of a rectifier-like kind.
    """

    kind = "redo"

    def __init__(self, tau: float = DEFAULT_TAU, sites: Sequence[str] | None = None) -> None:
        if isinstance(tau, bool) or not isinstance(tau, (int, float)):
            raise TypeError(f"ReDo: tau must be a number (e.g. 0.1), got {type(tau).__name__}")
        if not math.isfinite(tau) or tau < 0:
            raise ValueError(f"ReDo: tau must be a finite number >= 0 (a unit is dormant when its score <= tau; the "
                             f"paper uses 0.1), got {tau}")
        if sites is not None and (isinstance(sites, str) or not all(isinstance(g, str) for g in sites)):
            raise TypeError(f"ReDo: sites must be a list of globs on site names, e.g. ['q1.*'], got {sites!r}")
        self.tau = float(tau)
        self.sites = None if sites is None else list(sites)
        self._last: dict[str, Tensor] = {}  # site -> its dormant units at the last application
        self._warned: set[str] = set()

    def apply(self, target: Target, forward_fn: Callable[[], Any] | None = None) -> Outcome:
        """Scores the units on ``forward_fn``'s batch, recycles the dormant ones, then ``finish`` (optimizer state
        and targets of the changed entries). Returns the changes and the log."""
        if forward_fn is None:
            raise ValueError("ReDo needs forward_fn: a function running the group's forward on a batch (as a monitor "
                             "probe), to score the units")
        captured = _probe(target.group, forward_fn)
        if not captured.ran:
            raise ValueError("ReDo: forward_fn ran none of the group's modules; call them (through module __call__, "
                             "not .forward) in forward_fn")
        sites = captured.sites()
        chosen = [s for s in sites if self._chosen(s)]
        plans, problems = _wire(sites)
        self._warn(sites, chosen, problems)
        recycled = [s for s in chosen if s.name in plans]
        masks = [metrics.dormant_mask(s.activations, self.tau) for s in recycled]
        log, counts = self._tally(recycled, masks)
        edits = _Edits()
        for site, mask, count in zip(recycled, masks, counts):
            if count:
                _recycle(plans[site.name], mask, target.init_fn, edits)
        return finish(target, Outcome(changes=edits.write(), log=log))

    def _chosen(self, site: Site) -> bool:
        if self.sites is None:
            return site.kind in FAU_KINDS
        return any(fnmatch.fnmatchcase(site.name, glob) for glob in self.sites)

    def _tally(self, recycled: list[Site], masks: list[Tensor]) -> tuple[dict[str, float], list[int]]:
        """The log and the dormant count per site, with one device-to-host transfer."""
        previous = [(i, self._last[s.name]) for i, s in enumerate(recycled)
                    if s.name in self._last and self._last[s.name].shape == masks[i].shape]
        values = [m.sum() for m in masks] + [v for i, last in previous for v in ((last & masks[i]).sum(), last.sum())]
        numbers = [int(v) for v in torch.stack(values).cpu().tolist()] if values else []
        counts, still, before = numbers[:len(masks)], numbers[len(masks)::2], numbers[len(masks) + 1::2]
        units = sum(m.numel() for m in masks)
        log: dict[str, float] = {"units_recycled": float(sum(counts)), "units": float(units)}
        if units:
            log["dormant_ratio_before"] = sum(counts) / units
        for site, count in zip(recycled, counts):
            log[f"{site.name}/units_recycled"] = float(count)
        if previous:
            log["dead_intersected_percent"] = 100.0 * sum(still) / sum(before) if sum(before) else 0.0
            for (i, _), again, then in zip(previous, still, before):
                log[f"{recycled[i].name}/dead_intersected_percent"] = 100.0 * again / then if then else 0.0
        self._last = {s.name: m.clone() for s, m in zip(recycled, masks)}
        return log, counts

    def _warn(self, sites: list[Site], chosen: list[Site], problems: dict[str, str]) -> None:
        """One warning naming what is new since the last: chosen sites skipped, globs that matched nothing."""
        notes = [f"site {s.name!r}: {problems[s.name]}" for s in chosen if s.name in problems]
        names = ", ".join(s.name for s in sites) or "none"
        for glob in self.sites or ():
            if not any(fnmatch.fnmatchcase(s.name, glob) for s in sites):
                notes.append(f"sites glob {glob!r} matches no activation site (the group's sites: {names})")
        if not chosen and self.sites is None:
            notes.append(f"the group has no rectifier-like activation site (its sites: {names}); pass sites= to "
                         "choose others")
        new = [note for note in notes if note not in self._warned]
        if new:
            self._warned.update(new)
            warnings.warn("ReDo: not recycling " + "; ".join(new), RuntimeWarning, stacklevel=3)


def _probe(group: Group, forward_fn: Callable[[], Any]) -> Captured:
    """``forward_fn()`` under a traced capture of ``group``, in eval mode and without grad; every module's train
    flag restored after, even if it raises (as ``PlasticityMonitor.probe``)."""
    roots = [module for _, module in members(group)]
    modes = [(m, m.training) for root in roots for m in root.modules()]
    try:
        for root in roots:
            root.eval()
        with capture(group, trace=True) as captured, torch.no_grad():
            forward_fn()
    finally:
        for module, training in modes:
            module.training = training
    return captured


def _wire(sites: list[Site]) -> tuple[dict[str, _Plan], dict[str, str]]:
    """Each site's plan, or why it has none. Every layer may feed one site and read one site: a layer shared by
    two would have a unit of one site recycled on the other's path."""
    plans: dict[str, _Plan] = {}
    problems: dict[str, str] = {}
    feeds: dict[int, set[str]] = {}
    reads: dict[int, set[str]] = {}
    for site in sites:
        for flow in site.flows:
            if flow.source is not None:
                feeds.setdefault(id(flow.source.module), set()).add(site.name)
            for layer, _ in flow.consumers:
                reads.setdefault(id(layer.module), set()).add(site.name)
        plan = _plan(site)
        if isinstance(plan, str):
            problems[site.name] = plan
        else:
            plans[site.name] = plan
    for name, plan in list(plans.items()):
        shared = sorted(feeds[id(plan.incoming)] - {name})
        why = f"its incoming layer also feeds site(s) {', '.join(shared)}" if shared else None
        for layer, _ in plan.outgoing:
            shared = sorted(reads[id(layer)] - {name})
            why = why or (f"its outgoing layer also reads site(s) {', '.join(shared)}" if shared else None)
        if why is not None:
            problems[name] = why
            del plans[name]
    return plans, problems


def _plan(site: Site) -> _Plan | str:
    """The site's plan, the same for all its calls, or why it has none."""
    if not site.flows:
        return "no trace of its calls"
    plans = [_plan_of_call(site.activations, site.kind, flow) for flow in site.flows]
    for plan in plans:
        if isinstance(plan, str):
            return plan
    first = plans[0]
    assert isinstance(first, _Plan)
    if not all(isinstance(p, _Plan) and first.same_as(p) for p in plans[1:]):
        return "its calls ran with different incoming or outgoing layers"
    return first


def _plan_of_call(acts: Tensor, kind: str, flow: Flow) -> _Plan | str:
    """One call's plan: ``acts`` ``(batch, units, *spatial)`` the site's activations."""
    units = acts.shape[1]
    source = flow.source
    if source is None:
        return ("its input is not the output of a weight layer of the group (it is the forward's input, another "
                "activation's output, or the result of an op that mixes units, such as an add or a cat)")
    problem = _incoming_problem(source, acts)
    if problem is not None:
        return problem
    others = list(flow.source_reads)
    others.remove(kind)
    if others:
        return f"the output of its incoming layer {source.name} is also read by {', '.join(others)}"
    for norm in flow.norms:
        if not (isinstance(norm.module, nn.LayerNorm) and tuple(norm.module.normalized_shape) == (units,)
                and acts.dim() == 2):
            return (f"a {norm.kind} ({norm.name}) ran between its incoming layer {source.name} and the activation; "
                    "ReDo resets only an nn.LayerNorm over the units")
    if flow.reads:
        return (f"its output is also read by {', '.join(dict.fromkeys(flow.reads))} (only weight layers of the group "
                "can have their outgoing weights zeroed)")
    if not flow.consumers:
        return "its output is read by no weight layer of the group"
    outgoing: dict[int, tuple[nn.Module, int]] = {}
    for layer, flat in flow.consumers:
        problem = _outgoing_problem(layer, flat, acts)
        if problem is not None:
            return problem
        outgoing[id(layer.module)] = (layer.module, acts[0].numel() // units if flat else 1)
    norms = tuple(n.module for n in flow.norms if isinstance(n.module, nn.LayerNorm))
    return _Plan(source.module, norms, tuple(outgoing.values()))


def _incoming_problem(source: Layer, acts: Tensor) -> str | None:
    m, units = source.module, acts.shape[1]
    if isinstance(m, nn.Linear):
        fits = acts.dim() == 2 and m.out_features == units
    elif isinstance(m, _CONVS):
        fits = acts.dim() == m.weight.dim() and m.out_channels == units
    else:
        return f"its incoming layer {source.name} is a {type(m).__name__}, not an nn.Linear or nn.Conv1d/2d/3d"
    if not fits:
        return f"its {units} units are not the outputs of its incoming layer {source.name} {tuple(m.weight.shape)}"
    if not source.own_weight:
        return f"its incoming layer {source.name} ran on weights other than its own weight and bias parameters"
    return None


def _outgoing_problem(layer: Layer, flat: bool, acts: Tensor) -> str | None:
    m, units = layer.module, acts.shape[1]
    if isinstance(m, nn.Linear):
        fits = m.in_features == acts[0].numel() if flat else acts.dim() == 2 and m.in_features == units
    elif isinstance(m, _CONVS):
        if m.groups != 1:
            return f"its outgoing layer {layer.name} is a grouped conv (groups={m.groups})"
        fits = not flat and acts.dim() == m.weight.dim() and m.in_channels == units
    else:
        return f"its outgoing layer {layer.name} is a {type(m).__name__}, not an nn.Linear or nn.Conv1d/2d/3d"
    if not fits:
        return f"its outgoing layer {layer.name} {tuple(m.weight.shape)} does not read its {units} units one to one"
    if not layer.own_weight:
        return f"its outgoing layer {layer.name} ran on weights other than its own weight and bias parameters"
    return None


class _Edits:
    """The writes of one application, per parameter: values set through masks, then zeros through masks (an entry
    both re-initialised and outgoing ends zero)."""

    def __init__(self) -> None:
        self.sets: dict[nn.Parameter, list[tuple[Tensor, Tensor | float]]] = {}
        self.zeros: dict[nn.Parameter, list[Tensor]] = {}

    def set(self, p: nn.Parameter, mask: Tensor, value: Tensor | float) -> None:
        self.sets.setdefault(p, []).append((mask, value))

    def zero(self, p: nn.Parameter, mask: Tensor) -> None:
        self.zeros.setdefault(p, []).append(mask)

    @torch.no_grad()
    def write(self) -> Changes:
        """Writes every parameter in place (``copy_``); returns each one's mask of changed entries."""
        changes: Changes = {}
        for p in [*self.sets, *(q for q in self.zeros if q not in self.sets)]:
            new, changed = p.detach(), torch.zeros_like(p, dtype=torch.bool)
            for mask, value in self.sets.get(p, []):
                new, changed = torch.where(mask, value, new), changed | mask
            for mask in self.zeros.get(p, []):
                new, changed = new.masked_fill(mask, 0), changed | mask
            p.copy_(new)
            changes[p] = changed
        return changes


def _recycle(plan: _Plan, dormant: Tensor, init_fn: Callable[[nn.Module], None] | None, edits: _Edits) -> None:
    """Adds to ``edits`` the recycling of the units ``dormant`` (bool ``(units,)``) of one site."""
    layer = plan.incoming
    fresh = _fresh_draw(layer, init_fn)
    edits.set(layer.weight, _along(dormant, layer.weight, 0), fresh.weight.detach())
    if layer.bias is not None:
        edits.set(layer.bias, dormant, fresh.bias.detach())
    for norm in plan.norms:
        if norm.weight is not None:
            edits.set(norm.weight, dormant, 1.0)
        if norm.bias is not None:
            edits.set(norm.bias, dormant, 0.0)
    for out, block in plan.outgoing:
        edits.zero(out.weight, _along(dormant.repeat_interleave(block), out.weight, 1))


def _along(units: Tensor, weight: Tensor, dim: int) -> Tensor:
    """A bool mask of ``weight``'s shape: True where the index along ``dim`` is True in ``units``."""
    shape = [1] * weight.dim()
    shape[dim] = -1
    return units.view(shape).expand_as(weight).contiguous()


def _fresh_draw(layer: nn.Module, init_fn: Callable[[nn.Module], None] | None) -> nn.Module:
    """A scratch copy of ``layer`` (its own parameters, none of its hooks) re-initialised by ``init_fn``, or by its
    ``reset_parameters()`` when None."""
    memo: dict[int, Any] = {id(v): type(v)() for k, v in vars(layer).items() if "hooks" in k and isinstance(v, dict)}
    scratch = copy.deepcopy(layer, memo)
    with torch.no_grad():
        if init_fn is not None:
            init_fn(scratch)
        else:
            scratch.reset_parameters()
    return scratch
