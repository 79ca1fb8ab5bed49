"""Record a network's activations by call, not by module: ``with capture(critic) as acts: critic(x)``.

Usage (a training batch's critic FAU, the Adaptive RR signal, over both Q heads)::

    with capture([q1, q2]) as acts:
        q_1, q_2 = q1(obs, act), q2(obs, act)
    signal = metrics.fau(acts.outputs(fau_only=True))    # pooled over every hidden ReLU call of both heads

What is recorded: every *call* of an activation made inside a forward of one of the captured modules, in execution
order: activation modules (``ACTIVATION_TYPES``: ``nn.ReLU``, ``nn.GELU``, ``nn.Tanh``, ...) by their output, and
functional activations (``F.relu``, ``torch.relu``, ``x.relu()``, ``torch.tanh``, ``F.gelu``, ``F.leaky_relu``,
``F.silu``, ``torch.sigmoid``, ...; the full list is ``ACTIVATION_KINDS``) by their result. Each call site gets a
name (see :class:`ActivationCall`); a module reused at several places of one forward is one site per place, and a
forward run several times (an encoder on obs and on next_obs) contributes to the same sites each time.

How: forward pre/post hooks on every captured module say which group is running and which of its modules is the
innermost one, and a ``torch.overrides.TorchFunctionMode`` sees every torch function call (``F.relu``,
``F.linear``, ...) while the ``with`` block runs. TorchFunctionMode was chosen over torch.fx because it needs no
tracing: it works with any Python control flow, data-dependent branches, ``*args`` forwards and methods other than
``forward`` that call modules, where ``torch.fx.symbolic_trace`` fails or records one branch. Module hooks alone
(the old way) cannot see functional activations and cannot tell the two calls of a reused module apart by site.
The price: one Python call per torch op while the block runs (microseconds each), and code compiled with
``torch.compile`` / CUDA graphs is not seen (capture eager code).

Outputs and features: the weight layers that ran (``F.linear``, the call ``nn.Linear`` makes, and the ``F.conv*``
calls) are traced too. A forward of a group member whose last weight layer is preceded by at least one other and
after which only squashing activations ran (``tanh``, ``sigmoid``, ``softplus``, ...: an actor's action squash, a
log-std squash) is a *head*: those trailing squashes are its outputs (``ActivationCall.is_output``, left out of
:meth:`Captured.outputs` and :meth:`Captured.layers`) and its features are the input of that last weight layer (the
penultimate features of Kumar et al. 2021). Any other forward (an encoder ending in a ReLU, a one-Linear
projection) has its output as features, and all its activations are hidden layers.

torch and the standard library only.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

__all__ = [
    "ACTIVATION_KINDS",
    "ACTIVATION_TYPES",
    "FAU_KINDS",
    "ActivationCall",
    "Captured",
    "Site",
    "capture",
    "capture_groups",
]

# Activation modules by kind; a module's kind is that of the first class of its MRO found here (nn.ReLU6 is a
# Hardtanh subclass and calls F.hardtanh, but is a "relu6").
_MODULE_KINDS: dict[type[nn.Module], str] = {
    nn.ReLU: "relu",
    nn.ReLU6: "relu6",
    nn.LeakyReLU: "leaky_relu",
    nn.PReLU: "prelu",
    nn.RReLU: "rrelu",
    nn.ELU: "elu",
    nn.SELU: "selu",
    nn.CELU: "celu",
    nn.GELU: "gelu",
    nn.SiLU: "silu",
    nn.Mish: "mish",
    nn.Hardswish: "hardswish",
    nn.Hardtanh: "hardtanh",
    nn.Tanh: "tanh",
    nn.Sigmoid: "sigmoid",
    nn.Hardsigmoid: "hardsigmoid",
    nn.Softplus: "softplus",
    nn.Softsign: "softsign",
}
ACTIVATION_TYPES: tuple[type[nn.Module], ...] = tuple(_MODULE_KINDS)
ACTIVATION_KINDS: frozenset[str] = frozenset(_MODULE_KINDS.values())

# FAU's domain: activations whose output is > 0 exactly when their input is > 0 and whose positive side is (close to)
# the identity, so that "output > 0" means "the unit is on its active branch": the rectifiers (LeakyReLU, PReLU and
# RReLU too: their negative branch is the inactive side), the ELU family, and the smooth rectifiers GELU, SiLU, Mish
# and Hardswish (their negative dip, at least -0.17 for GELU and -0.28 for SiLU, is the "off" side). Not in it:
# sign-symmetric squashes (tanh, hardtanh, softsign: "> 0" only says which half) and positive ones (sigmoid,
# hardsigmoid, softplus: always or nearly always > 0, an FAU of 1.0 that means nothing).
FAU_KINDS: frozenset[str] = frozenset(
    {"relu", "relu6", "leaky_relu", "prelu", "rrelu", "elu", "selu", "celu", "gelu", "silu", "mish", "hardswish"}
)


def _functions() -> dict[Any, str]:
    """torch functions (as TorchFunctionMode sees them) -> kind."""
    t = torch.Tensor
    names = {
        "relu": [(F, "relu"), (torch, "relu"), (torch, "relu_"), (t, "relu"), (t, "relu_")],
        "relu6": [(F, "relu6")],
        "leaky_relu": [(F, "leaky_relu"), (F, "leaky_relu_")],
        "prelu": [(F, "prelu"), (torch, "prelu")],
        "rrelu": [(F, "rrelu"), (F, "rrelu_"), (torch, "rrelu"), (torch, "rrelu_")],
        "elu": [(F, "elu"), (F, "elu_")],
        "selu": [(F, "selu"), (torch, "selu"), (torch, "selu_")],
        "celu": [(F, "celu"), (torch, "celu"), (torch, "celu_")],
        "gelu": [(F, "gelu")],
        "silu": [(F, "silu")],
        "mish": [(F, "mish")],
        "hardswish": [(F, "hardswish")],
        "hardtanh": [(F, "hardtanh"), (F, "hardtanh_")],
        "tanh": [(torch, "tanh"), (torch, "tanh_"), (t, "tanh"), (t, "tanh_"), (F, "tanh")],
        "sigmoid": [(torch, "sigmoid"), (torch, "sigmoid_"), (t, "sigmoid"), (t, "sigmoid_"), (F, "sigmoid")],
        "hardsigmoid": [(F, "hardsigmoid")],
        "softplus": [(F, "softplus")],
        "softsign": [(F, "softsign")],
    }
    table: dict[Any, str] = {}
    for kind, places in names.items():
        for owner, name in places:
            fn = getattr(owner, name, None)
            if fn is not None:
                table.setdefault(fn, kind)
    return table


_FUNCTION_KINDS = _functions()
# Weight layers, traced for the features: F.linear (nn.Linear's call) and the convolutions.
_WEIGHT_FUNCTIONS: dict[Any, str] = {F.linear: "linear"}
_WEIGHT_FUNCTIONS.update({getattr(F, n): "conv" for n in ("conv1d", "conv2d", "conv3d", "conv_transpose1d",
                                                           "conv_transpose2d", "conv_transpose3d")})


def module_kind(module: nn.Module) -> str | None:
    """The activation kind of an activation module (``"relu"`` for ``nn.ReLU``), else None."""
    for cls in type(module).__mro__:
        kind = _MODULE_KINDS.get(cls)
        if kind is not None:
            return kind
    return None


@dataclass
class ActivationCall:
    """One activation call.

    Attributes:
        name: the call site. An activation module: its dotted name (``"1"``, ``"q1.3"``), with ``#<k>`` (the k-th
            call in one forward, from 0) when one forward calls it several times (``"act#0"``, ``"act#1"``). A
            functional activation: the dotted name of the innermost captured module running it, then
            ``<kind>_<k>``, k counting that kind's calls in that module in one forward (``"relu_0"`` in the root,
            ``"0.relu_1"`` in member 0 of a list). For a list or dict, names start with the member's index or key.
        kind: an element of ``ACTIVATION_KINDS``.
        output: the call's output, detached (and cloned, unless ``clone=False``).
        member: the member the call ran in (``""`` for a single module, ``"0"``/``"1"`` for a list, the key of a
            dict); ``None`` when a submodule was called directly rather than through a member's forward.
        is_output: a squash after a head's last weight layer (see the module docstring): an output, not a layer.
    """

    name: str
    kind: str
    output: Tensor
    member: str | None
    is_output: bool = False


@dataclass
class Site:
    """A call site of the hidden activations: its calls' outputs concatenated along the batch dim."""

    name: str
    kind: str
    member: str | None
    activations: Tensor


@dataclass
class Captured:
    """What one ``capture`` saw; complete when the ``with`` block has ended.

    Attributes:
        calls: every activation call in execution order, outputs (``is_output``) included.
        features: member -> its features (with ``features=True``), the forwards of a member concatenated along the
            batch dim: the input of a head's last weight layer, else the member's output.
        ran: whether a forward of a member (or of any captured submodule) ran.
    """

    calls: list[ActivationCall] = field(default_factory=list)
    features: dict[str, Tensor] = field(default_factory=dict)
    ran: bool = False

    def outputs(self, fau_only: bool = False) -> list[Tensor]:
        """The outputs of the hidden activation calls, in execution order; with ``fau_only`` only those of kinds in
        ``FAU_KINDS``. ``metrics.fau(acts.outputs(fau_only=True))`` pools them as one layer-set."""
        return [c.output for c in self.calls if not c.is_output and (not fau_only or c.kind in FAU_KINDS)]

    def sites(self) -> list[Site]:
        """One :class:`Site` per hidden call site, in order of first call. If one site's calls have different
        non-batch shapes (an encoder on two image sizes), each shape becomes its own site ``<name>@<j>``."""
        order: dict[str, list[ActivationCall]] = {}
        for c in self.calls:
            if not c.is_output:
                order.setdefault(c.name, []).append(c)
        sites: list[Site] = []
        for name, calls in order.items():
            by_shape: dict[tuple[int, ...], list[Tensor]] = {}
            for c in calls:
                by_shape.setdefault(tuple(c.output.shape[1:]), []).append(c.output)
            split = len(by_shape) > 1
            for j, tensors in enumerate(by_shape.values()):
                acts = tensors[0] if len(tensors) == 1 else torch.cat(tensors)
                sites.append(Site(f"{name}@{j}" if split else name, calls[0].kind, calls[0].member, acts))
        return sites

    def layers(self, fau_only: bool = False) -> dict[str, Tensor]:
        """Site name -> activations (calls concatenated along batch), hidden sites only, in order of first call."""
        return {s.name: s.activations for s in self.sites() if not fau_only or s.kind in FAU_KINDS}


@dataclass
class _Event:
    base: str
    k: int
    is_module: bool
    kind: str
    output: Tensor
    is_output: bool = False


class _Invocation:
    """One forward of a group from outside it: what ran until the group's module stack emptied again."""

    __slots__ = ("member", "events", "counts", "n_weight", "last_weight", "tail", "output")

    def __init__(self, member: str | None) -> None:
        self.member = member
        self.events: list[_Event] = []
        self.counts: dict[tuple[str, bool], int] = {}
        self.n_weight = 0
        self.last_weight: tuple[Tensor, int | None] | None = None  # (input, its version counter then)
        self.tail = 0  # index of the first event after the last weight layer
        self.output: Any = None


def _keep(t: Tensor) -> tuple[Tensor, int | None]:
    """A reference to ``t`` and its version counter (to detect a later in-place change); inference tensors have no
    version counter and are cloned at once."""
    t = t.detach()
    try:
        return t, t._version
    except RuntimeError:
        return t.clone(), None


class _Group:
    """The capture state of one group: hooks on its modules, the running stack, the finished calls."""

    def __init__(self, name: str, members: list[tuple[str, nn.Module]], clone: bool, features: bool,
                 active: list[_Group]) -> None:
        self.name, self.clone, self.want_features, self.active = name, clone, features, active
        self.names: dict[int, str] = {}
        self.modules: list[nn.Module] = []
        memo: set[nn.Module] = set()
        for member, module in members:
            for sub_name, sub in module.named_modules(memo=memo, prefix=member):
                self.names[id(sub)] = sub_name
                self.modules.append(sub)
        self.member_of = {id(module): member for member, module in reversed(members)}
        self.stack: list[nn.Module] = []
        self.invocation: _Invocation | None = None
        self.finished: list[_Invocation] = []
        self.features: dict[str, list[Tensor]] = {}
        self.ran = False
        self.mutated = False

    def hook(self) -> list[Any]:
        handles = []
        for module in self.modules:
            handles.append(module.register_forward_pre_hook(self._pre))
            handles.append(module.register_forward_hook(self._post))
        return handles

    def _copy(self, t: Tensor) -> Tensor:
        return t.detach().clone() if self.clone else t.detach()

    def _pre(self, module: nn.Module, args: Any) -> None:
        if not self.stack:
            self.invocation = _Invocation(self.member_of.get(id(module)))
            self.active.append(self)
            self.ran = True
        self.stack.append(module)

    def _post(self, module: nn.Module, args: Any, output: Any) -> None:
        kind = module_kind(module)
        if kind is not None and isinstance(output, Tensor):
            self._record(self.names[id(module)], True, kind, output)
        self.stack.pop()
        if not self.stack and self.invocation is not None:
            self.invocation.output = output
            self._finish(self.invocation)
            self.invocation = None
            self.active.remove(self)

    def _record(self, base: str, is_module: bool, kind: str, output: Tensor) -> None:
        inv = self.invocation
        assert inv is not None
        k = inv.counts.get((base, is_module), 0)
        inv.counts[(base, is_module)] = k + 1
        inv.events.append(_Event(base, k, is_module, kind, self._copy(output)))

    def on_activation(self, kind: str, output: Any) -> None:
        """A functional activation call (those inside an activation module are recorded by the module)."""
        inner = self.stack[-1]
        if module_kind(inner) is not None or not isinstance(output, Tensor):
            return
        path = self.names[id(inner)]
        self._record(f"{path}.{kind}" if path else kind, False, kind, output)

    def on_weight(self, x: Any) -> None:
        inv = self.invocation
        assert inv is not None
        inv.n_weight += 1
        inv.tail = len(inv.events)
        inv.last_weight = _keep(x) if self.want_features and isinstance(x, Tensor) else None

    def _finish(self, inv: _Invocation) -> None:
        tail = inv.events[inv.tail:]
        head = inv.n_weight >= 2 and all(e.kind not in FAU_KINDS for e in tail)
        if head:
            for e in tail:
                e.is_output = True
        self.finished.append(inv)
        if not self.want_features or inv.member is None:
            return
        feats: Tensor | None = None
        if head and inv.last_weight is not None:
            x, version = inv.last_weight
            if version is not None and x._version != version:
                self.mutated = True  # changed in place after the layer read it: not its input any more
            else:
                feats = self._copy(x) if version is not None else x
        elif not head and isinstance(inv.output, Tensor):
            feats = self._copy(inv.output)
        if feats is not None:
            self.features.setdefault(inv.member, []).append(feats)

    def result(self) -> Captured:
        repeated = {base for inv in self.finished for (base, is_module), n in inv.counts.items() if is_module and n > 1}
        calls = []
        for inv in self.finished:
            for e in inv.events:
                if e.is_module:
                    name = f"{e.base}#{e.k}" if e.base in repeated else e.base
                else:
                    name = f"{e.base}_{e.k}"
                calls.append(ActivationCall(name, e.kind, e.output, inv.member, e.is_output))
        features = {}
        for member, tensors in self.features.items():
            if len({tuple(t.shape[1:]) for t in tensors}) > 1:
                warnings.warn(f"capture: group {self.name!r} member {member!r}: its forwards gave features of "
                              "different shapes; no features for it", RuntimeWarning, stacklevel=4)
                continue
            features[member] = tensors[0] if len(tensors) == 1 else torch.cat(tensors)
        if self.mutated:
            warnings.warn(f"capture: group {self.name!r}: the input of a last weight layer was changed in place "
                          "after the layer read it; those features are left out", RuntimeWarning, stacklevel=4)
        return Captured(calls, features, self.ran)


class _Mode(TorchFunctionMode):
    """Sees every torch function call; reports activations and weight layers to the running groups."""

    def __init__(self, active: list[_Group]) -> None:
        super().__init__()
        self.active = active

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if self.active:
            try:
                kind = _FUNCTION_KINDS.get(func)
                weight = kind is None and func in _WEIGHT_FUNCTIONS
            except TypeError:  # an unhashable callable
                return out
            if kind is not None:
                for group in self.active:
                    group.on_activation(kind, out)
            elif weight:
                x = args[0] if args else (kwargs or {}).get("input")
                for group in self.active:
                    group.on_weight(x)
        return out


def members(group: nn.Module | Sequence[nn.Module] | Mapping[str, nn.Module]) -> list[tuple[str, nn.Module]]:
    """``(member name, module)`` pairs: ``[("", m)]`` for one module, ``("0", m0), ("1", m1)`` for a list, the keys
    of a dict."""
    if isinstance(group, nn.Module):
        return [("", group)]
    if isinstance(group, Mapping):
        return [(str(k), m) for k, m in group.items()]
    if isinstance(group, (list, tuple)):
        return [(str(i), m) for i, m in enumerate(group)]
    raise TypeError(f"a group is an nn.Module, a list of them or a dict of them, got {type(group).__name__}")


@contextmanager
def capture_groups(
    groups: Mapping[str, nn.Module | Sequence[nn.Module] | Mapping[str, nn.Module]],
    *,
    clone: bool = True,
    features: bool = False,
) -> Iterator[dict[str, Captured]]:
    """Capture several groups during one block; yields ``{group: Captured}``, filled when the block ends.

    Args:
        groups: name -> module, list of modules or dict of modules. A call inside several groups is recorded in
            each.
        clone: clone recorded tensors, so that a later in-place op (``ReLU(inplace=True)``, ``h += skip``) cannot
            change them; ``False`` keeps detached references (cheaper in a training loop).
        features: also record each member's features (see the module docstring).

    The hooks and the function mode exist only inside the block and are removed even if it raises. Gradients flow
    as without capture; recorded tensors are detached.
    """
    active: list[_Group] = []
    states = {name: _Group(name, members(g), clone, features, active) for name, g in groups.items()}
    out: dict[str, Captured] = {name: Captured() for name in groups}
    handles = []
    try:
        for state in states.values():
            handles.extend(state.hook())
        with _Mode(active):
            yield out
    finally:
        for handle in handles:
            handle.remove()
    for name, state in states.items():
        result = state.result()
        out[name].calls, out[name].features, out[name].ran = result.calls, result.features, result.ran


@contextmanager
def capture(
    module: nn.Module | Sequence[nn.Module] | Mapping[str, nn.Module],
    *,
    clone: bool = True,
    features: bool = False,
) -> Iterator[Captured]:
    """Record the activation calls made inside ``module``'s forwards (or its members') during the block.

    Example::

        with capture(critic) as acts:
            q = critic(torch.cat([obs, act], 1))
        critic_fau = metrics.fau(acts.outputs(fau_only=True))

    See :func:`capture_groups` for ``clone`` and ``features``.
    """
    with capture_groups({"": module}, clone=clone, features=features) as out:
        yield out[""]
