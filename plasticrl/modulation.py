"""Modulation pool of L2M (Schmied et al., "Learning to Modulate pre-trained Models in RL", NeurIPS 2023).

A pool of ``pool_size`` entries, each a learnable key (``key_dim``) plus one
modulator per wrapped ``nn.Linear`` of a frozen pre-trained model: LoRA
factors or an (IA)^3 scaling vector. A per-sample query (e.g. the mean
state token of the frozen model) picks entries by cosine similarity to the
keys; the wrapped layers then apply the picked entries per sample.

Typical loop (the selection is per sample, so a batch may mix entries)::

    pool = ModulationPool(pool_size=30, key_dim=d, kind="lora")
    pool.attach(model)                       # L2M's placement: q_proj, v_proj, fc1 (see PLACEMENTS)
    pool.freeze_backbone(model)              # only pool.parameters() train
    opt = torch.optim.AdamW(pool.parameters(), lr=1e-4, weight_decay=0.0)   # one optimizer for the sequence
    for batch in task_k:
        query = embed(batch)                 # (B, key_dim), no gradient needed
        idx = pool.select(query)             # (B, top_k) entry indices
        with pool.selected(idx):
            loss = rl_loss(model, batch) + pool.key_loss(query, idx)
        loss.backward(); opt.step(); opt.zero_grad()
    pool.end_task()                          # merge this task's usage counts
    pool.eval()                              # task-agnostic selection at test time

Where the modulators act (``placement``; ``PLACEMENTS`` maps layer-name endings to a *site*):

* ``"l2m"`` (default), as ml-jku/L2M's code builds it (``src/algos/models/multiprompt_decision_transformer_model.py``,
  ``AttentionIA3.forward`` and ``MLPIA3.forward``; the factors in ``src/algos/prompt/l2m.py``):

  - LoRA: ``q_proj`` and ``v_proj`` on their input, ``y = W x + s x A B``; the first feed-forward layer ``fc1`` on
    its *output*, ``h = W x; h = h + s h A B`` with A (4d, r), B (r, 4d), before the GELU; ``fc2`` untouched.
    ``s = alpha / rank = 2`` (``lora_alpha = 2 * rank``). B starts at 0; A is drawn by L2M's one
    ``kaiming_uniform_(a=sqrt(5))`` over its whole (pool, n_layer, slots, d, rank) tensor, whose fan-in is
    n_layer * slots * d * rank, so every entry of A is U(-b, b) with ``b = 1 / sqrt(rank * sum of the widths A
    reads over all wrapped layers)``: for a d-wide DT with L blocks, ``1 / sqrt(rank * L * 6 * d)`` (q: d, v: d,
    fc1's output: 4d).
  - (IA)^3: keys and values scaled, ``k = W_k x * l_k``, ``v = W_v x * l_v``, and the feed-forward activation after
    the GELU, i.e. ``fc2``'s input, ``fc2(gelu(h) * l_ff)``; vectors of ones at init (``L2MIA3``).

* ``"standard"`` (LoRA only): LoRA in its usual form (Hu et al. 2021, a low-rank update of the weight, so on the
  layer's input) on q, v and both feed-forward layers, fc1 and fc2, A drawn per layer and entry as ``nn.Linear``
  draws its weight (bound ``1 / sqrt(in_features)``: for q and v 14 times L2M's at 4 blocks of width 256, 17
  times at 6 of 768). For ablations against L2M's placement; (IA)^3 has no other placement.

Selection modes, in ``select``:

* training (``pool.training`` and ``evaluate`` not True): cosine similarity,
  with the usage penalty below once earlier tasks have recorded selections;
  selections are counted for the current task.
* evaluation (``pool.eval()`` or ``evaluate=True``): plain cosine top-k; the
  task id is ignored; nothing is counted.
* oracle (``oracle=True``, any mode): task ``k`` gets entries
  ``(k * top_k + j) % pool_size`` for ``j < top_k`` (the L2M-oracle baseline).

Usage penalty (``count_penalty=True``, the form of the L2M code): with
``share_i`` = fraction of all selections on earlier tasks that picked entry
``i`` (historic counts only; ``end_task`` merges the current task's counts), ::

    score_i = (1 + cos_i) / 2 * w_i,   w_i = inv_i / sum_j inv_j,   inv_i = 1 / (share_i + 1e-6)

``(1 + cos) / 2`` lies in [0, 1], so multiplying by ``w`` can only lower a
score, and ``w`` strictly decreases with ``share``: between two entries of
equal similarity the less-used one wins, and an unused entry (``share = 0``)
beats a used entry ``e`` unless ``(1 + cos_unused) < (1 + cos_e) * 1e-6 /
(share_e + 1e-6)``, i.e. practically always. A new task therefore goes to the
most similar entry among those earlier tasks left unused, while its own
(current-task) counts never push it away from the entry it is learning.

With ``top_k > 1`` a sample's entries are averaged (L2M's code supports top_k = 1 only).
Inputs of wrapped layers must be batch-first: ``(B, in)`` or ``(B, ..., in)``.
Only torch and the standard library are imported here.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

KINDS = ("lora", "ia3")
SITES = ("input", "output")  # a modulator acts on its Linear's input or on its output
# (kind, placement) -> {layer-name ending: site}; an ending matches a qualified name equal to it or ending in ".end"
PLACEMENTS: dict[tuple[str, str], dict[str, str]] = {
    ("lora", "l2m"): {"q_proj": "input", "v_proj": "input", "fc1": "output"},
    ("ia3", "l2m"): {"k_proj": "output", "v_proj": "output", "fc2": "input"},
    ("lora", "standard"): {"q_proj": "input", "v_proj": "input", "fc1": "input", "fc2": "input"},
}
DEFAULT_SITE = {"lora": "input", "ia3": "output"}  # of layers given to ``attach`` as a list of names
PENALTY_EPS = 1e-6

Targets = Mapping[str, str] | list[str] | None


def lora_bound(rank: int, widths: list[int]) -> float:
    """L2M's bound of LoRA's A: ``kaiming_uniform_(a=sqrt(5))`` on one tensor holding every wrapped layer's A gives
    U(-b, b) with ``b = 1 / sqrt(fan_in)``, ``fan_in = rank * sum(widths)`` (``widths``: the width A reads, per
    wrapped layer)."""
    return 1.0 / math.sqrt(rank * sum(widths))


class LoRAModulator(nn.Module):
    """Per-entry LoRA factors for one Linear: A (pool, rank, width), B (pool, out, rank).

    ``site="input"``: ``y = base(x) + scale * x A^T B^T`` (width = in_features); ``site="output"``: ``y = base(x);
    y + scale * y A^T B^T`` (width = out_features). B is zero, so a fresh entry adds exactly zero; scale = alpha /
    rank with alpha = 2 * rank. A is U(-bound, bound), or with ``bound=None`` kaiming-uniform per entry as
    ``nn.Linear`` (bound 1 / sqrt(width)).
    """

    def __init__(self, pool_size: int, in_features: int, out_features: int, rank: int, site: str = "input",
                 bound: float | None = None, **factory) -> None:
        super().__init__()
        self.in_features, self.out_features, self.site = in_features, out_features, site
        self.width = in_features if site == "input" else out_features
        a = torch.empty(pool_size, rank, self.width, **factory)
        if bound is None:
            for entry in a:
                nn.init.kaiming_uniform_(entry, a=math.sqrt(5))
        else:
            nn.init.uniform_(a, -bound, bound)
        self.A = nn.Parameter(a)
        self.B = nn.Parameter(torch.zeros(pool_size, out_features, rank, **factory))
        alpha = 2 * rank
        self.scale = alpha / rank

    def forward(self, x: Tensor, base: nn.Linear, idx: Tensor) -> Tensor:
        """base(x) plus scale * mean_k of entry k's low-rank term; x (B, ..., in), idx (B, top_k).

        Two dense matmuls over the whole pool, the low-rank activations of entries a sample did not pick multiplied
        by 0: the same sum as gathering each sample's factors, and on a GPU faster to train (the gather's backward
        accumulates B copies into the few picked entries). Every entry must hold finite factors: an inf or NaN in
        an entry nobody picked still reaches every output (0 * inf)."""
        y = base(x)
        source = x if self.site == "input" else y
        s3 = source.reshape(source.shape[0], -1, source.shape[-1])  # (B, N, width)
        pool, rank, width = self.A.shape
        factory = {"device": idx.device, "dtype": self.A.dtype}
        share = torch.full(idx.shape, 1.0 / idx.shape[1], **factory)  # an entry picked twice counts twice
        weight = torch.zeros(idx.shape[0], pool, **factory).scatter_add_(1, idx, share)  # (B, pool)
        low = (s3 @ self.A.reshape(pool * rank, width).T).unflatten(-1, (pool, rank))  # (B, N, pool, rank)
        low = (low * weight[:, None, :, None]).flatten(-2)  # (B, N, pool * rank)
        up = low @ self.B.transpose(1, 2).reshape(pool * rank, self.out_features)  # (B, N, out)
        return y + self.scale * up.reshape(y.shape)


class IA3Modulator(nn.Module):
    """Per-entry (IA)^3 vector for one Linear, ones at init: ``site="output"`` scales its output, ``base(x) * l``
    (l: out_features); ``site="input"`` its input, ``base(x * l)`` (l: in_features). ``rank`` and ``bound`` are
    unused (``LoRAModulator``'s signature, so that the pool builds either the same way)."""

    def __init__(self, pool_size: int, in_features: int, out_features: int, rank: int, site: str = "output",
                 bound: float | None = None, **factory) -> None:
        super().__init__()
        self.in_features, self.out_features, self.site = in_features, out_features, site
        self.width = in_features if site == "input" else out_features
        self.scale = nn.Parameter(torch.ones(pool_size, self.width, **factory))

    def forward(self, x: Tensor, base: nn.Linear, idx: Tensor) -> Tensor:
        """base(x * mean_k l_k) or base(x) * mean_k l_k; x (B, ..., in), idx (B, top_k)."""
        vec = self.scale[idx].mean(dim=1)  # (B, width)
        vec = vec.reshape(x.shape[0], *([1] * (x.dim() - 2)), self.width)
        return base(x * vec) if self.site == "input" else base(x) * vec


class ModulatedLinear(nn.Module):
    """A frozen ``base`` Linear plus a pool modulator; applies the entries in ``indices``.

    ``indices`` (B, top_k) is set by ``ModulationPool.set_selection``; ``None``
    means no modulation (output of ``base`` alone).
    """

    def __init__(self, base: nn.Linear, modulator: nn.Module) -> None:
        super().__init__()
        self.base = base
        self.modulator = modulator
        self.indices: Tensor | None = None

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def forward(self, x: Tensor) -> Tensor:
        if self.indices is None:
            return self.base(x)
        if self.indices.shape[0] != x.shape[0]:
            raise ValueError(f"selection has {self.indices.shape[0]} rows but the input batch is {x.shape[0]}")
        return self.modulator(x, self.base, self.indices)


class ModulationPool(nn.Module):
    """L2M pool of keys (pool, key_dim) and per-layer modulators; see the module docstring.

    ``parameters()`` are the keys and the modulators only. Buffers:
    ``counts`` (pool,) selections on earlier tasks, ``task_counts`` (pool,) on the current task.
    """

    def __init__(
        self,
        pool_size: int = 30,
        key_dim: int = 128,
        rank: int = 8,
        kind: str = "lora",
        top_k: int = 1,
        pull_coef: float = 0.5,
        count_penalty: bool = True,
        placement: str = "l2m",
    ) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if (kind, placement) not in PLACEMENTS:
            allowed = [p for k, p in PLACEMENTS if k == kind]
            raise ValueError(f"placement {placement!r} does not exist for {kind}; allowed: {allowed}")
        if not 1 <= top_k <= pool_size:
            raise ValueError(f"top_k must be in [1, pool_size={pool_size}], got {top_k}")
        if rank < 1 or key_dim < 1:
            raise ValueError(f"rank and key_dim must be >= 1, got {rank}, {key_dim}")
        self.pool_size, self.key_dim, self.rank, self.kind = pool_size, key_dim, rank, kind
        self.top_k, self.pull_coef, self.count_penalty, self.placement = top_k, pull_coef, count_penalty, placement
        self.keys = nn.Parameter(torch.empty(pool_size, key_dim).uniform_(-1.0, 1.0))
        self.modulators = nn.ModuleDict()  # qualified layer name ("." -> "__") -> modulator
        self.register_buffer("counts", torch.zeros(pool_size, dtype=torch.long))
        self.register_buffer("task_counts", torch.zeros(pool_size, dtype=torch.long))
        self._wrapped: list[tuple[nn.Module, str, ModulatedLinear]] = []
        self.sites: dict[str, str] = {}  # qualified name -> site of the layers the latest ``attach`` wrapped

    # ---- wrapping -------------------------------------------------------------------
    def attach(self, model: nn.Module, targets: Targets = None) -> list[str]:
        """Wrap ``nn.Linear`` layers of ``model``; returns their qualified names, in the model's order.

        ``targets``: ``None`` for the pool's placement (``PLACEMENTS[(kind, placement)]``), a mapping of layer-name
        endings (or qualified names) to sites, or a list of qualified names (each at ``DEFAULT_SITE[kind]``). Every
        ending must match at least one ``nn.Linear``. A modulator already in the pool under the same name (after
        ``detach``) is reused; new LoRA factors are drawn by the placement's rule (module docstring).
        """
        if self._wrapped:
            raise RuntimeError("pool is already attached; call detach() first")
        if any(isinstance(m, ModulatedLinear) for m in model.modules()):
            raise RuntimeError("model already contains ModulatedLinear layers")
        linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear) and name}
        if targets is None:
            targets = PLACEMENTS[(self.kind, self.placement)]
        elif isinstance(targets, list):
            missing = [n for n in targets if n not in linears]
            if missing:
                raise ValueError(f"not nn.Linear layers of the model: {missing}")
            targets = {n: DEFAULT_SITE[self.kind] for n in targets}
        bad_sites = {end: site for end, site in targets.items() if site not in SITES}
        if bad_sites:
            raise ValueError(f"sites must be one of {SITES}, got {bad_sites}")
        sites = {}  # qualified name -> site
        for end, site in targets.items():
            matched = [n for n in linears if n == end or n.endswith("." + end)]
            if not matched:
                raise ValueError(f"no nn.Linear layer named or ending in {end!r} (targets {dict(targets)})")
            sites.update({n: site for n in matched})
        names = [n for n in linears if n in sites]
        bound = None
        if self.kind == "lora" and self.placement == "l2m":
            widths = [linears[n].in_features if sites[n] == "input" else linears[n].out_features for n in names]
            bound = lora_bound(self.rank, widths)
        for name in names:
            base = linears[name]
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            wrapped = ModulatedLinear(base, self._modulator_for(name, base, sites[name], bound))
            setattr(parent, child, wrapped)
            self._wrapped.append((parent, child, wrapped))
        self.sites = {n: sites[n] for n in names}
        return names

    def _modulator_for(self, name: str, base: nn.Linear, site: str, bound: float | None) -> nn.Module:
        """The pool's modulator for layer ``name`` at ``site``, created on first use."""
        key = name.replace(".", "__")
        if key not in self.modulators:
            cls = LoRAModulator if self.kind == "lora" else IA3Modulator
            factory = {"device": base.weight.device, "dtype": base.weight.dtype}
            self.modulators[key] = cls(self.pool_size, base.in_features, base.out_features, self.rank, site, bound,
                                       **factory)
        mod = self.modulators[key]
        if (mod.in_features, mod.out_features, mod.site) != (base.in_features, base.out_features, site):
            raise ValueError(f"existing modulator for {name!r} does not fit {base} at site {site!r}")
        return mod

    def detach(self) -> None:
        """Put the original Linear modules back; the modulators stay in the pool."""
        for parent, child, wrapped in reversed(self._wrapped):
            setattr(parent, child, wrapped.base)
        self._wrapped = []

    def freeze_backbone(self, model: nn.Module) -> int:
        """``requires_grad=False`` on every parameter of ``model`` not owned by the pool; returns how many."""
        own = {id(p) for p in self.parameters()}
        frozen = 0
        for p in model.parameters():
            if id(p) not in own:
                p.requires_grad_(False)
                frozen += 1
        return frozen

    # ---- selection ------------------------------------------------------------------
    @torch.no_grad()
    def similarity(self, query: Tensor) -> Tensor:
        """Cosine similarity of queries (B, key_dim) to all keys: (B, pool)."""
        return F.normalize(query, dim=-1) @ F.normalize(self.keys, dim=-1).T

    @torch.no_grad()
    def select(
        self, query: Tensor, task_id: int | Tensor | None = None, *, oracle: bool = False,
        evaluate: bool | None = None
    ) -> Tensor:
        """Entry indices (B, top_k) for queries (B, key_dim); see the module docstring for the modes.

        ``evaluate=None`` follows ``not self.training``. ``task_id`` is used only with ``oracle=True``: one task
        for the batch (int) or one per sample (B,).
        """
        if query.dim() != 2 or query.shape[1] != self.key_dim:
            raise ValueError(f"query must be (B, {self.key_dim}), got {tuple(query.shape)}")
        training = self.training if evaluate is None else not evaluate
        if oracle:
            if task_id is None:
                raise ValueError("oracle selection needs a task_id")
            if isinstance(task_id, int):  # a fill, not a host-to-device copy: capturable in a CUDA graph
                tasks = torch.full((1, 1), task_id, dtype=torch.long, device=self.keys.device)
            else:
                tasks = torch.as_tensor(task_id, dtype=torch.long, device=self.keys.device).reshape(-1, 1)
            block = (tasks * self.top_k + torch.arange(self.top_k, device=self.keys.device)) % self.pool_size
            idx = block.expand(query.shape[0], self.top_k).clone()
        else:
            score = self.similarity(query)
            if training and self.count_penalty:
                # decided on the device (no host sync): penalised only once earlier tasks recorded selections
                total = self.counts.sum()
                share = self.counts.double() / total.clamp(min=1)
                inv = 1.0 / (share + PENALTY_EPS)
                penalised = (1.0 + score.double()) / 2.0 * (inv / inv.sum())
                score = torch.where(total > 0, penalised, score.double())
            idx = score.topk(self.top_k, dim=1).indices
        if training:
            flat = idx.reshape(-1)
            self.task_counts.index_add_(0, flat, torch.ones_like(flat))  # bincount would sync with the host
        return idx

    def end_task(self) -> None:
        """Merge the current task's selection counts into the historic ``counts``."""
        self.counts += self.task_counts
        self.task_counts.zero_()

    def key_loss(self, query: Tensor, indices: Tensor) -> Tensor:
        """pull_coef * mean over (B, top_k) of 1 - cos(query, keys[idx]); the query is detached."""
        q = F.normalize(query.detach(), dim=-1).unsqueeze(1)  # (B, 1, key_dim)
        k = F.normalize(self.keys[indices], dim=-1)  # (B, top_k, key_dim)
        return self.pull_coef * (1.0 - (q * k).sum(-1)).mean()

    # ---- applying a selection -------------------------------------------------------
    def set_selection(self, indices: Tensor | None) -> None:
        """Make every wrapped layer apply ``indices`` (B, top_k) or (B,); ``None`` turns modulation off.

        Index values are range-checked when they are on the CPU; device tensors (``select``'s output) are not read
        back, so that a training step stays free of host syncs and can be captured in a CUDA graph (an out-of-range
        device index fails later, as a device-side assert in the modulators' indexing)."""
        if indices is not None:
            if indices.dim() == 1:
                indices = indices.unsqueeze(1)
            if indices.dim() != 2 or (indices.device.type == "cpu" and indices.numel() and (
                    indices.min() < 0 or indices.max() >= self.pool_size)):
                raise ValueError(f"indices must be (B, top_k) in [0, {self.pool_size}), got {indices}")
            indices = indices.to(self.keys.device)
        for _, _, wrapped in self._wrapped:
            wrapped.indices = indices

    @contextmanager
    def selected(self, indices: Tensor) -> Iterator[None]:
        """``with pool.selected(idx): out = model(x)`` -- modulation on inside, off after."""
        self.set_selection(indices)
        try:
            yield
        finally:
            self.set_selection(None)
