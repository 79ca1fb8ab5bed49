"""Modulation pool of L2M (Schmied et al., "Learning to Modulate pre-trained Models in RL", NeurIPS 2023).

A pool of ``pool_size`` entries, each a learnable key (``key_dim``) plus one
modulator per wrapped ``nn.Linear`` of a frozen pre-trained model: LoRA
factors or an (IA)^3 output-scaling vector. A per-sample query (e.g. the mean
state embedding of the frozen model) picks entries by cosine similarity to the
keys; the wrapped layers then apply the picked entries per sample.

Typical loop (the selection is per sample, so a batch may mix entries)::

    pool = ModulationPool(pool_size=30, key_dim=d, kind="lora")
    pool.attach(model)                       # wraps q_proj/v_proj/fc1/fc2/... Linears
    pool.freeze_backbone(model)              # only pool.parameters() train
    opt = torch.optim.Adam(pool.parameters(), lr=1e-4)
    for batch in task_k:
        query = embed(batch)                 # (B, key_dim), no gradient needed
        idx = pool.select(query)             # (B, top_k) entry indices
        with pool.selected(idx):
            loss = rl_loss(model, batch) + pool.key_loss(query, idx)
        loss.backward(); opt.step(); opt.zero_grad()
    pool.end_task()                          # merge this task's usage counts
    pool.eval()                              # task-agnostic selection at test time

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

Inputs of wrapped layers must be batch-first: ``(B, in)`` or ``(B, ..., in)``.
Only torch and the standard library are imported here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

KINDS = ("lora", "ia3")
# Default targets: a Linear whose qualified name contains one of these (attention
# query/value projections and feed-forward layers); e.g. "blocks.0.attn.q_proj",
# "layer.0.attention.self.value", "blocks.1.mlp.0", "fc2". Keys/outputs not included.
DEFAULT_TARGETS = ("q_proj", "v_proj", "query", "value", "fc1", "fc2", "mlp")
PENALTY_EPS = 1e-6

Targets = Callable[[str, nn.Linear], bool] | list[str] | None


def default_target(name: str, layer: nn.Linear) -> bool:
    """True if the qualified ``name`` contains one of ``DEFAULT_TARGETS``."""
    return any(token in name for token in DEFAULT_TARGETS)


class LoRAModulator(nn.Module):
    """Per-entry LoRA factors for one Linear: A (pool, rank, in), B (pool, out, rank).

    A is kaiming-uniform per entry (as ``nn.Linear``), B is zero, scale = alpha / rank
    with alpha = 2 * rank; a fresh entry adds exactly zero.
    """

    def __init__(self, pool_size: int, in_features: int, out_features: int, rank: int, **factory) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        a = torch.empty(pool_size, rank, in_features, **factory)
        for entry in a:
            nn.init.kaiming_uniform_(entry, a=math.sqrt(5))
        self.A = nn.Parameter(a)
        self.B = nn.Parameter(torch.zeros(pool_size, out_features, rank, **factory))
        alpha = 2 * rank
        self.scale = alpha / rank

    def forward(self, x: Tensor, y: Tensor, idx: Tensor) -> Tensor:
        """y + scale * mean_k(x A_k^T B_k^T); x (B, ..., in), y (B, ..., out), idx (B, top_k)."""
        x3 = x.reshape(x.shape[0], -1, x.shape[-1])  # (B, N, in)
        low = torch.einsum("bni,bkri->bknr", x3, self.A[idx])  # (B, k, N, rank)
        up = torch.einsum("bknr,bkor->bno", low, self.B[idx]) / idx.shape[1]  # (B, N, out)
        return y + self.scale * up.reshape(y.shape)


class IA3Modulator(nn.Module):
    """Per-entry (IA)^3 vector for one Linear: scale (pool, out), ones at init."""

    def __init__(self, pool_size: int, in_features: int, out_features: int, rank: int, **factory) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.scale = nn.Parameter(torch.ones(pool_size, out_features, **factory))

    def forward(self, x: Tensor, y: Tensor, idx: Tensor) -> Tensor:
        """y * mean_k(l_k); y (B, ..., out), idx (B, top_k)."""
        vec = self.scale[idx].mean(dim=1)  # (B, out)
        return y * vec.reshape(y.shape[0], *([1] * (y.dim() - 2)), y.shape[-1])


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
        y = self.base(x)
        if self.indices is None:
            return y
        if self.indices.shape[0] != x.shape[0]:
            raise ValueError(f"selection has {self.indices.shape[0]} rows but the input batch is {x.shape[0]}")
        return self.modulator(x, y, self.indices)


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
    ) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if not 1 <= top_k <= pool_size:
            raise ValueError(f"top_k must be in [1, pool_size={pool_size}], got {top_k}")
        if rank < 1 or key_dim < 1:
            raise ValueError(f"rank and key_dim must be >= 1, got {rank}, {key_dim}")
        self.pool_size, self.key_dim, self.rank, self.kind = pool_size, key_dim, rank, kind
        self.top_k, self.pull_coef, self.count_penalty = top_k, pull_coef, count_penalty
        self.keys = nn.Parameter(torch.empty(pool_size, key_dim).uniform_(-1.0, 1.0))
        self.modulators = nn.ModuleDict()  # qualified layer name ("." -> "__") -> modulator
        self.register_buffer("counts", torch.zeros(pool_size, dtype=torch.long))
        self.register_buffer("task_counts", torch.zeros(pool_size, dtype=torch.long))
        self._wrapped: list[tuple[nn.Module, str, ModulatedLinear]] = []

    # ---- wrapping -------------------------------------------------------------------
    def attach(self, model: nn.Module, targets: Targets = None) -> list[str]:
        """Wrap the selected ``nn.Linear`` layers of ``model``; returns their qualified names.

        ``targets``: a predicate ``(name, layer) -> bool``, a list of qualified names
        (each must name an ``nn.Linear``), or ``None`` for ``default_target``.
        A modulator already in the pool under the same name (after ``detach``) is reused.
        """
        if self._wrapped:
            raise RuntimeError("pool is already attached; call detach() first")
        if any(isinstance(m, ModulatedLinear) for m in model.modules()):
            raise RuntimeError("model already contains ModulatedLinear layers")
        linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear) and name}
        if isinstance(targets, list):
            missing = [n for n in targets if n not in linears]
            if missing:
                raise ValueError(f"not nn.Linear layers of the model: {missing}")
            names = list(targets)
        else:
            predicate = default_target if targets is None else targets
            names = [n for n, m in linears.items() if predicate(n, m)]
        if not names:
            raise ValueError("no nn.Linear layer matched the targets")
        for name in names:
            base = linears[name]
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            wrapped = ModulatedLinear(base, self._modulator_for(name, base))
            setattr(parent, child, wrapped)
            self._wrapped.append((parent, child, wrapped))
        return names

    def _modulator_for(self, name: str, base: nn.Linear) -> nn.Module:
        """The pool's modulator for layer ``name``, created on first use."""
        key = name.replace(".", "__")
        if key not in self.modulators:
            cls = LoRAModulator if self.kind == "lora" else IA3Modulator
            factory = {"device": base.weight.device, "dtype": base.weight.dtype}
            self.modulators[key] = cls(self.pool_size, base.in_features, base.out_features, self.rank, **factory)
        mod = self.modulators[key]
        if (mod.in_features, mod.out_features) != (base.in_features, base.out_features):
            raise ValueError(f"existing modulator for {name!r} does not fit {base}")
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
        device index fails later, as a device-side assert in the modulators' gather)."""
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
