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
projection) has its output as features, and all its activations are hidden layers. Every weight-layer call is
listed in :attr:`Captured.weight_calls` (a :class:`Layer`: the innermost captured module running it), in execution
order.

Wiring (``trace=True``, for mechanisms that edit units, such as ReDo): the tensors the group's weight layers and
activations produce are followed by identity (weakly referenced, so nothing is kept alive) through unit-preserving
copies (dtype and device casts, ``contiguous``, ``clone``, dropout, padding) and flattens to ``(batch, -1)``, so that
each activation call gets a :class:`Flow`: the weight layer whose output was its input (through normalisations such
as LayerNorm), the weight layers that read its output, and anything else that read either (an add, a cat, a layer
outside the group). One dict lookup per torch call and captured tensor argument while the block runs.

torch and the standard library only.
"""

from __future__ import annotations

import warnings
import weakref
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
    "Flow",
    "Layer",
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
# Traced with trace=True. Normalisations: a weight layer's output passes through them to the activation.
_NORM_FUNCTIONS: dict[Any, str] = {getattr(F, n): n for n in ("layer_norm", "rms_norm", "batch_norm", "group_norm",
                                                              "instance_norm", "local_response_norm") if hasattr(F, n)}
# Copies that keep every unit at its place (same shape): casts, copies, dropout (identity in eval mode).
_COPY_FUNCTIONS: frozenset[Any] = frozenset(
    [getattr(torch.Tensor, n) for n in ("float", "double", "half", "bfloat16", "to", "type", "type_as", "contiguous",
                                        "clone", "detach", "cpu", "cuda", "requires_grad_")]
    + [torch.clone, torch.detach]
    + [getattr(F, n) for n in ("dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
                               "feature_alpha_dropout") if hasattr(F, n)]
)
# Reshapes: the same shape, or a (batch, C, *spatial) map flattened to (batch, C * prod(spatial)), channel-major.
_RESHAPE_FUNCTIONS: frozenset[Any] = frozenset(
    [torch.Tensor.flatten, torch.flatten, torch.Tensor.reshape, torch.reshape, torch.Tensor.view]
)


def module_kind(module: nn.Module) -> str | None:
    """The activation kind of an activation module (``"relu"`` for ``nn.ReLU``), else None."""
    for cls in type(module).__mro__:
        kind = _MODULE_KINDS.get(cls)
        if kind is not None:
            return kind
    return None


def _lookup(table: Mapping[Any, Any], func: Any) -> Any:
    """``table.get(func)``; None for an unhashable callable."""
    try:
        return table.get(func)
    except TypeError:
        return None


@dataclass(frozen=True)
class Layer:
    """One call of a weight layer (``F.linear``, ``F.conv*``) or, in a :class:`Flow`, of a normalisation.

    Attributes:
        name: the dotted name of the innermost captured module running the call, as site names are built
            (``"q1.0"``, ``"0.fc1"``).
        module: that module.
        kind: ``"linear"`` or ``"conv"``; for a normalisation its function's name (``"layer_norm"``, ...).
        own_weight: the call read the module's own ``weight`` and ``bias`` parameters (False for a parametrised or
            noisy layer, or an ``F.linear`` on weights computed in the forward).
        member: the member the call ran in (as :attr:`ActivationCall.member`).
    """

    name: str
    module: nn.Module
    kind: str
    own_weight: bool
    member: str | None


@dataclass
class Flow:
    """Where one activation call's input came from and where its output went (``capture(..., trace=True)``).

    Attributes:
        source: the weight layer whose output was the call's input, directly or through ``norms`` and
            unit-preserving copies; None when the input was anything else (an add, a cat, another activation, the
            forward's input).
        norms: the normalisation calls between ``source`` and the activation, in order.
        source_reads: every read of ``source``'s output (through those norms and copies): this activation's kind
            and the name of any other function that read it; one entry when this activation was its only reader.
        consumers: ``(layer, flat)`` for each weight-layer call of the group that read the output, directly or
            through copies (``flat=False``), or through a flatten of ``(batch, C, *spatial)`` to ``(batch, -1)``
            (``flat=True``: unit c is the columns ``c * S .. (c + 1) * S``, ``S = prod(spatial)``).
        reads: every other read of the output: function names, with `` outside the group`` when the call ran
            outside the group's forwards (a layer of another network).
    """

    source: Layer | None = None
    norms: tuple[Layer, ...] = ()
    source_reads: list[str] = field(default_factory=list)
    consumers: list[tuple[Layer, bool]] = field(default_factory=list)
    reads: list[str] = field(default_factory=list)


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
        flow: its wiring, with ``trace=True`` (else None).
    """

    name: str
    kind: str
    output: Tensor
    member: str | None
    is_output: bool = False
    flow: Flow | None = None


@dataclass
class Site:
    """A call site of the hidden activations: its calls' outputs concatenated along the batch dim, and with
    ``trace=True`` the calls' flows (one per call, in order)."""

    name: str
    kind: str
    member: str | None
    activations: Tensor
    flows: list[Flow] = field(default_factory=list)


@dataclass
class Captured:
    """What one ``capture`` saw; complete when the ``with`` block has ended.

    Attributes:
        calls: every activation call in execution order, outputs (``is_output``) included.
        features: member -> its features (with ``features=True``), the forwards of a member concatenated along the
            batch dim: the input of a head's last weight layer, else the member's output.
        ran: whether a forward of a member (or of any captured submodule) ran.
        weight_calls: every weight-layer call made inside a forward of the group, in execution order.
    """

    calls: list[ActivationCall] = field(default_factory=list)
    features: dict[str, Tensor] = field(default_factory=dict)
    ran: bool = False
    weight_calls: list[Layer] = field(default_factory=list)

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
            by_shape: dict[tuple[int, ...], list[ActivationCall]] = {}
            for c in calls:
                by_shape.setdefault(tuple(c.output.shape[1:]), []).append(c)
            split = len(by_shape) > 1
            for j, same in enumerate(by_shape.values()):
                tensors = [c.output for c in same]
                acts = tensors[0] if len(tensors) == 1 else torch.cat(tensors)
                flows = [c.flow for c in same if c.flow is not None]
                sites.append(Site(f"{name}@{j}" if split else name, calls[0].kind, calls[0].member, acts, flows))
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
    flow: Flow | None = None


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


def _tensors(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Iterator[Tensor]:
    """The tensors among a call's arguments, and inside list or tuple arguments (``torch.cat([a, b])``)."""
    for a in (*args, *kwargs.values()):
        if isinstance(a, Tensor):
            yield a
        elif isinstance(a, (list, tuple)):
            yield from (t for t in a if isinstance(t, Tensor))


def _returns_tensor(out: Any) -> bool:
    """A call that returned tensor data (not ``x.shape``, ``x.dim()``, ...): a read of its inputs' values."""
    return isinstance(out, Tensor) or (isinstance(out, (list, tuple)) and any(isinstance(o, Tensor) for o in out))


@dataclass
class _Source:
    """A tensor that is a weight layer's output (through ``norms`` and copies); ``reads`` shared along the chain."""

    layer: Layer
    norms: tuple[Layer, ...]
    reads: list[str]


@dataclass
class _Output:
    """A tensor that is an activation's output, through copies (``flat``: and a flatten to ``(batch, -1)``)."""

    flow: Flow
    flat: bool


class _Tracer:
    """Follows the tensors one group's weight layers and activations produce, by identity, to fill each activation
    call's :class:`Flow`. Tensors are weakly referenced: a dead one's id, reused by a new tensor, is not mistaken."""

    def __init__(self) -> None:
        self.nodes: dict[int, tuple[weakref.ref[Tensor], _Source | _Output]] = {}

    def get(self, t: Any) -> _Source | _Output | None:
        entry = self.nodes.get(id(t)) if isinstance(t, Tensor) else None
        return entry[1] if entry is not None and entry[0]() is t else None

    def put(self, t: Tensor, node: _Source | _Output) -> None:
        self.nodes[id(t)] = (weakref.ref(t), node)

    @staticmethod
    def read(node: _Source | _Output, what: str) -> None:
        (node.reads if isinstance(node, _Source) else node.flow.reads).append(what)

    def weight(self, x: Any, layer: Layer, args: tuple[Any, ...], kwargs: Mapping[str, Any], out: Any) -> None:
        """A weight-layer call of the group: a consumer of the activation output ``x``; its output a new source."""
        for t in _tensors(args, kwargs):
            node = self.get(t)
            if isinstance(node, _Output) and t is x:
                node.flow.consumers.append((layer, node.flat))
            elif node is not None:
                self.read(node, f"{layer.kind} {layer.name}")
        if isinstance(out, Tensor):
            self.put(out, _Source(layer, (), []))

    def activation(self, kind: str, x: Any, out: Tensor) -> Flow:
        """An activation call of the group on ``x``: its flow, and its output followed from now on."""
        node = self.get(x)
        flow = Flow()
        if isinstance(node, _Source):
            node.reads.append(kind)
            flow = Flow(node.layer, node.norms, node.reads)
        elif node is not None:
            self.read(node, kind)
        self.put(out, _Output(flow, False))
        return flow

    def other(self, func: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any], out: Any, norm: Layer | None,
              where: str) -> None:
        """Any other torch call: a copy, flatten or normalisation passes a followed tensor on; anything else that
        returns tensor data is a read of it."""
        tracked = [(t, node) for t in _tensors(args, kwargs) if (node := self.get(t)) is not None]
        if not tracked:
            return
        x = args[0] if args else None
        if len(tracked) == 1 and tracked[0][0] is x and isinstance(out, Tensor):
            node = tracked[0][1]
            passed = self._passed(func, node, x, out, norm)
            if passed is not None:
                if out is not x:
                    self.put(out, passed)
                return
        if _returns_tensor(out):
            what = getattr(func, "__name__", type(func).__name__) + where
            for _, node in tracked:
                self.read(node, what)

    @staticmethod
    def _passed(func: Any, node: _Source | _Output, x: Tensor, out: Tensor,
                norm: Layer | None) -> _Source | _Output | None:
        """What ``out`` is when ``func(x)`` keeps the units of ``x`` at known places, else None."""
        if norm is not None:
            return _Source(node.layer, (*node.norms, norm), node.reads) if isinstance(node, _Source) else None
        copy, reshape = func in _COPY_FUNCTIONS, func in _RESHAPE_FUNCTIONS
        if (copy or reshape) and out.shape == x.shape:
            return node
        if reshape and isinstance(node, _Output) and not node.flat and x.dim() > 2 and out.dim() == 2 \
                and out.shape[0] == x.shape[0]:
            return _Output(node.flow, True)
        if func is F.pad and out.dim() == x.dim() > 2 and out.shape[:2] == x.shape[:2]:
            return node  # spatial padding (a conv's padding_mode): channels stay
        return None


class _Group:
    """The capture state of one group: hooks on its modules, the running stack, the finished calls."""

    def __init__(self, name: str, members: list[tuple[str, nn.Module]], clone: bool, features: bool,
                 active: list[_Group], trace: bool = False) -> None:
        self.name, self.clone, self.want_features, self.active = name, clone, features, active
        self.tracer = _Tracer() if trace else None
        self.weight_calls: list[Layer] = []
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
            event = self._record(self.names[id(module)], True, kind, output)
            if self.tracer is not None:
                event.flow = self.tracer.activation(kind, args[0] if args else None, output)
        self.stack.pop()
        if not self.stack and self.invocation is not None:
            self.invocation.output = output
            self._finish(self.invocation)
            self.invocation = None
            self.active.remove(self)

    def _record(self, base: str, is_module: bool, kind: str, output: Tensor) -> _Event:
        inv = self.invocation
        assert inv is not None
        k = inv.counts.get((base, is_module), 0)
        inv.counts[(base, is_module)] = k + 1
        event = _Event(base, k, is_module, kind, self._copy(output))
        inv.events.append(event)
        return event

    def on_activation(self, kind: str, output: Any, x: Any = None) -> None:
        """A functional activation call on ``x`` (those inside an activation module are recorded by the module)."""
        inner = self.stack[-1]
        if module_kind(inner) is not None or not isinstance(output, Tensor):
            return
        path = self.names[id(inner)]
        event = self._record(f"{path}.{kind}" if path else kind, False, kind, output)
        if self.tracer is not None:
            event.flow = self.tracer.activation(kind, x, output)

    def _layer(self, kind: str, args: tuple[Any, ...], kwargs: Mapping[str, Any], weight_call: bool) -> Layer:
        """The innermost running module as the :class:`Layer` of this call."""
        inner = self.stack[-1]
        params = inner._parameters  # not getattr: a parametrised weight would be recomputed
        if weight_call:
            w = args[1] if len(args) > 1 else kwargs.get("weight")
            b = args[2] if len(args) > 2 else kwargs.get("bias")
            own = w is not None and w is params.get("weight") and b is params.get("bias")
        else:
            given = (*args, *kwargs.values())
            own = all(any(a is p for a in given) for p in (params.get("weight"), params.get("bias")) if p is not None)
        inv = self.invocation
        return Layer(self.names[id(inner)], inner, kind, own, inv.member if inv is not None else None)

    def on_weight(self, x: Any, kind: str, args: tuple[Any, ...], kwargs: Mapping[str, Any], out: Any) -> None:
        """A weight-layer call ``func(*args, **kwargs) -> out`` on ``x`` (``kind``: linear or conv)."""
        inv = self.invocation
        assert inv is not None
        inv.n_weight += 1
        inv.tail = len(inv.events)
        inv.last_weight = _keep(x) if self.want_features and isinstance(x, Tensor) else None
        layer = self._layer(kind, args, kwargs, weight_call=True)
        self.weight_calls.append(layer)
        if self.tracer is not None:
            self.tracer.weight(x, layer, args, kwargs, out)

    def on_call(self, func: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any], out: Any) -> None:
        """Any torch call while a traced capture runs, except the group's own activation and weight-layer calls."""
        assert self.tracer is not None
        if not self.stack:
            self.tracer.other(func, args, kwargs, out, None, " outside the group")
        elif module_kind(self.stack[-1]) is None:  # inside an activation module: its hook records the call
            norm = _lookup(_NORM_FUNCTIONS, func)
            layer = self._layer(norm, args, kwargs, weight_call=False) if norm is not None else None
            self.tracer.other(func, args, kwargs, out, layer, "")

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
                calls.append(ActivationCall(name, e.kind, e.output, inv.member, e.is_output, e.flow))
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
        return Captured(calls, features, self.ran, self.weight_calls)


class _Mode(TorchFunctionMode):
    """Sees every torch function call; reports activations and weight layers to the running groups, and every call
    to the traced groups."""

    def __init__(self, active: list[_Group], traced: Sequence[_Group] = ()) -> None:
        super().__init__()
        self.active = active
        self.traced = list(traced)

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not self.active and not self.traced:
            return out
        kind = _lookup(_FUNCTION_KINDS, func)
        weight = _lookup(_WEIGHT_FUNCTIONS, func) if kind is None else None
        x = args[0] if args else kwargs.get("input")
        if kind is not None:
            for group in self.active:
                group.on_activation(kind, out, x)
        elif weight is not None:
            for group in self.active:
                group.on_weight(x, weight, args, kwargs, out)
        for group in self.traced:
            if not group.stack or (kind is None and weight is None):
                group.on_call(func, args, kwargs, out)
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
    trace: bool = False,
) -> Iterator[dict[str, Captured]]:
    """Capture several groups during one block; yields ``{group: Captured}``, filled when the block ends.

    Args:
        groups: name -> module, list of modules or dict of modules. A call inside several groups is recorded in
            each.
        clone: clone recorded tensors, so that a later in-place op (``ReLU(inplace=True)``, ``h += skip``) cannot
            change them; ``False`` keeps detached references (cheaper in a training loop).
        features: also record each member's features (see the module docstring).
        trace: also record each activation call's :class:`Flow` (see the module docstring).

    The hooks and the function mode exist only inside the block and are removed even if it raises. Gradients flow
    as without capture; recorded tensors are detached.
    """
    active: list[_Group] = []
    states = {name: _Group(name, members(g), clone, features, active, trace) for name, g in groups.items()}
    out: dict[str, Captured] = {name: Captured() for name in groups}
    handles = []
    try:
        for state in states.values():
            handles.extend(state.hook())
        with _Mode(active, [s for s in states.values() if trace]):
            yield out
    finally:
        for handle in handles:
            handle.remove()
    for name, state in states.items():
        result = state.result()
        out[name].calls, out[name].features, out[name].ran = result.calls, result.features, result.ran
        out[name].weight_calls = result.weight_calls


@contextmanager
def capture(
    module: nn.Module | Sequence[nn.Module] | Mapping[str, nn.Module],
    *,
    clone: bool = True,
    features: bool = False,
    trace: bool = False,
) -> Iterator[Captured]:
    """Record the activation calls made inside ``module``'s forwards (or its members') during the block.

    Example::

        with capture(critic) as acts:
            q = critic(torch.cat([obs, act], 1))
        critic_fau = metrics.fau(acts.outputs(fau_only=True))

    See :func:`capture_groups` for ``clone``, ``features`` and ``trace``.
    """
    with capture_groups({"": module}, clone=clone, features=features, trace=trace) as out:
        yield out[""]
