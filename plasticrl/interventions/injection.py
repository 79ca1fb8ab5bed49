"""Plasticity injection (Nikishin et al. 2023, "Deep Reinforcement Learning with Plasticity Injection").

A head ``h_theta`` is frozen and two copies of a freshly initialised head ``theta'`` are added, one learning and one
frozen: ``h(x) = h_theta(x) + (h_theta'(x) - h_theta'_frozen(x))``. At injection the last two cancel, so the
output is unchanged while the trainable parameters are fresh (the same number as before).

Differences from RLE-Foundation/Plasticine's ``Injector`` (@ ``aa00b4b``), on purpose: the new head's parameters
are added to the optimizer that held the old head's (Plasticine builds its optimizer once and never trains them),
the target networks get the same injection (so their output is unchanged too), and no ``detach`` on the frozen
copy: gradients reach the inputs through all three terms, the derivative of the expression above (at injection the
new and frozen terms cancel there too, so the encoder's gradient is the old head's).

torch and the standard library only.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from plasticrl.interventions.base import Outcome, Target, fresh_module, group_members, qualified

__all__ = ["InjectedHead", "Inject", "PlasticityInjection"]


class InjectedHead(nn.Module):
    """``old(*args) + (new(*args) - new_frozen(*args))``: ``old`` and ``new_frozen`` are frozen
    (``requires_grad=False``), ``new`` learns. Heads return tensors.

    The two new terms are subtracted first, so that at injection (``new`` and ``new_frozen`` equal) the output is
    exactly ``old``'s. ``terms()`` gives ``[(1.0, old), (1.0, new), (-1.0, new_frozen)]`` for callers that run
    each term themselves (e.g. an MLP head one layer at a time); summing them as ``old + (new - new_frozen)``
    keeps that exactness.
    """

    frozen_children = ("old", "new_frozen")  # left alone by automatic layer selections (base.walk)

    def __init__(self, old: nn.Module, new: nn.Module, new_frozen: nn.Module):
        super().__init__()
        self.old = old
        self.new = new
        self.new_frozen = new_frozen

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        return self.old(*args, **kwargs) + (self.new(*args, **kwargs) - self.new_frozen(*args, **kwargs))

    def terms(self) -> list[tuple[float, nn.Module]]:
        """The signed terms of the output, in order: ``[(1.0, old), (1.0, new), (-1.0, new_frozen)]``."""
        return [(1.0, self.old), (1.0, self.new), (-1.0, self.new_frozen)]


def _frozen(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.requires_grad_(False)
        p.grad = None  # a stale gradient (zero_grad(set_to_none=False)) must not move a frozen head
    return module


def _slot(root: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The parent module of ``name`` in ``root`` and the attribute it is held under."""
    parent_name, _, attr = name.rpartition(".")
    return (root.get_submodule(parent_name) if parent_name else root), attr


def _qualified_name(found: list[tuple[str, nn.Module, nn.Module, str]], head: nn.Module) -> str:
    return next(name for name, h, _, _ in found if h is head)


def _name_in(root: nn.Module, module: nn.Module) -> str | None:
    for name, m in root.named_modules():
        if m is module:
            return name
    return None


class Inject:
    """Plasticity injection into the named heads of a group.

    :param heads: module names within each member of the group (``"q1"``, ``"q2"``, ``"policy"``); a name may be
        qualified by its member for list and dict groups (``"0.q1"``). A name must resolve in at least one member.

    ``apply`` replaces each head ``H`` in its parent by ``InjectedHead(old=H frozen, new=fresh copy,
    new_frozen=frozen copy of new)``; ``new`` is ``H``'s structure re-initialised by ``target.init_fn`` (None: each
    layer's ``reset_parameters()``), from the global torch RNG. Then:

    - optimizers: each optimizer group of ``target.optimizers`` that held parameters of ``H`` gets an
      ``add_param_group`` with the matching new parameters and that group's hyperparameters (a copy; fresh state,
      Adam's step from 0). ``H``'s parameters stay in their groups, frozen (no gradient: the optimizers skip them).
      A head whose parameters are in none of the optimizers gets a RuntimeWarning: nothing would train it.
    - target networks: in each ``(online, target)`` pair holding ``H`` the target's same-named head ``T`` becomes
      ``InjectedHead(old=T frozen, new=copy of the online new, new_frozen=copy of the online new_frozen)``; the
      target's ``new`` keeps ``T``'s ``requires_grad`` flags (DrQ's target critic: False; Polyak updates write it
      under no_grad). Its output is unchanged too, and its parameters are in the online module's order, so a
      ``zip`` of both parameter lists (a Polyak update) still pairs them.

    Injecting twice into the same head is refused (ValueError): ``terms()`` promises three plain terms, which a
    nested injection would break. To inject again, build a new network.

    The modules are new objects: ``Outcome.rebuilt`` is True (captured graphs, compiled functions and anything
    that held the old head must be rebuilt). Changes: none (no existing entry is written). Log:
    ``heads_injected``, ``params_injected`` (trainable scalars added).
    """

    kind = "inject"

    def __init__(self, heads: Sequence[str]):
        if isinstance(heads, str):
            heads = [heads]
        heads = tuple(heads)
        if not heads or not all(isinstance(h, str) and h for h in heads):
            raise ValueError(f"heads {heads!r}: give module names within the group, e.g. ['q1', 'q2'] or ['policy']")
        self.heads = heads

    def __repr__(self) -> str:
        return f"Inject(heads={list(self.heads)!r})"

    def _resolve(self, group: Any) -> list[tuple[str, nn.Module, nn.Module, str]]:
        """``(qualified name, head, parent, attribute)`` of every named head, each once."""
        found: dict[int, tuple[str, nn.Module, nn.Module, str]] = {}
        members = group_members(group)
        for head in self.heads:
            hits = 0
            for member, module in members:
                names = {name: m for name, m in module.named_modules()}
                if head in names:
                    local = head
                elif member and head == member:
                    local = ""
                elif member and head.startswith(member + ".") and head[len(member) + 1:] in names:
                    local = head[len(member) + 1:]
                else:
                    continue
                where = qualified(member, local)
                if local == "":
                    raise ValueError(f"heads: {head!r} is a member of the group itself; Inject replaces a head in "
                                     "its parent module, so give the module that holds it as the group")
                path = local.split(".")
                for i in range(1, len(path) + 1):
                    if isinstance(module.get_submodule(".".join(path[:i])), InjectedHead):
                        raise ValueError(f"heads: {where} is already injected ({'.'.join(path[:i])} is an "
                                         "InjectedHead); injecting twice is refused: terms() gives three plain terms")
                parent, attr = _slot(module, local)
                found.setdefault(id(names[local]), (where, names[local], parent, attr))
                hits += 1
            if not hits:
                available = [qualified(member, name) for member, module in members
                             for name, m in module.named_modules() if name and any(True for _ in m.parameters())]
                raise ValueError(f"heads: {head!r} names no module of the group; available: "
                                 f"{', '.join(available) or 'none'}")
        return list(found.values())

    @staticmethod
    def _add_to_optimizers(target: Target, name: str, old: nn.Module, new: nn.Module) -> None:
        new_params = dict(new.named_parameters())
        buckets: dict[tuple[int, int], list[tuple[str, nn.Parameter]]] = {}
        where: dict[int, tuple[int, int]] = {}
        for oi, optimizer in enumerate(target.optimizers):
            for gi, group in enumerate(optimizer.param_groups):
                for p in group["params"]:
                    where.setdefault(id(p), (oi, gi))
        missing = []
        for pname, p in old.named_parameters():
            slot = where.get(id(p))
            if slot is None:
                missing.append(pname)
            else:
                buckets.setdefault(slot, []).append((f"{name}.new.{pname}", new_params[pname]))
        for (oi, gi), params in buckets.items():
            optimizer = target.optimizers[oi]
            source = optimizer.param_groups[gi]
            group = {k: (v.clone() if isinstance(v, Tensor) else copy.copy(v)) for k, v in source.items()
                     if k not in ("params", "param_names")}
            group["params"] = params if "param_names" in source else [p for _, p in params]
            optimizer.add_param_group(group)
        if missing:
            warnings.warn(f"Inject: parameters {', '.join(missing)} of head {name} are in none of the target's "
                          "optimizers, so their fresh copies are not trained; give the optimizer in "
                          "Target.optimizers", RuntimeWarning, stacklevel=3)

    @torch.no_grad()
    def apply(self, target: Target, forward_fn: Any = None) -> Outcome:
        """Injects into the named heads of ``target.group`` (``forward_fn`` is not needed)."""
        found = self._resolve(target.group)
        # the target networks' slots, found (and checked) before anything moves
        target_slots = []
        for _, head, _, _ in found:
            for online, tgt in target.target_pairs:
                name = _name_in(online, head)
                if name == "":
                    raise ValueError(f"Inject: a target pair's online module is the head "
                                     f"{_qualified_name(found, head)} itself; pair the modules that hold the heads "
                                     "(critic, critic_target)")
                if name is None:
                    continue
                t_head = tgt.get_submodule(name)
                if isinstance(t_head, InjectedHead):
                    raise ValueError(f"Inject: the target network's {name} is already an InjectedHead")
                target_slots.append((head, tgt, name, t_head))
        injected: dict[int, InjectedHead] = {}
        params = 0
        for name, head, parent, attr in found:
            trainable = [p.requires_grad for p in head.parameters()]
            new = fresh_module(head, target.init_fn, name)
            for p, grad in zip(new.parameters(), trainable):
                p.requires_grad_(grad)
                p.grad = None
            new_frozen = _frozen(copy.deepcopy(new))
            wrapper = InjectedHead(old=head, new=new, new_frozen=new_frozen)
            self._add_to_optimizers(target, name, head, new)
            _frozen(head)
            setattr(parent, attr, wrapper)
            injected[id(head)] = wrapper
            params += sum(p.numel() for p in new.parameters() if p.requires_grad)
        for head, tgt, name, t_head in target_slots:
            online = injected[id(head)]
            trainable = [p.requires_grad for p in t_head.parameters()]
            t_new = copy.deepcopy(online.new)
            for p, grad in zip(t_new.parameters(), trainable):
                p.requires_grad_(grad)
            t_parent, t_attr = _slot(tgt, name)
            setattr(t_parent, t_attr, InjectedHead(old=_frozen(t_head), new=t_new,
                                                   new_frozen=_frozen(copy.deepcopy(online.new_frozen))))
        return Outcome(log={"heads_injected": float(len(found)), "params_injected": float(params)}, rebuilt=True)


PlasticityInjection = Inject
