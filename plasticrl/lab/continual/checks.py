"""Checks of a continual config that need the registries or files, made before anything is written: task lists,
datasets on disk, ``sequence.reference_curves`` and ``pretrain.checkpoint``. Each file is read once
(``check_inputs``), and what was read is handed to the run."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from plasticrl import envs
from plasticrl.agents.l2m import DTConfig, L2MAgent
from plasticrl.lab.config.base import ConfigError
from plasticrl.lab.continual.evaluation import score_kinds
from plasticrl.lab.continual.methods import METHODS, REGISTRY


@dataclass
class RunInputs:
    """What a config's checks read: the pre-training tasks (none when ``pretrain.steps`` is 0 or
    ``pretrain.checkpoint`` is given), the sequence's tasks, the reference curves (one per task, or None) and the
    contents of ``pretrain.checkpoint`` (``L2MAgent.read_checkpoint``'s, or None)."""

    pretrain_tasks: list[str]
    sequence_tasks: list[str]
    reference_curves: list[list[float]] | None
    pretrained: dict[str, Any] | None


def resolve_task_list(spec: str | list[str], key: str) -> list[str]:
    """Env ids of ``spec`` (``plasticrl.envs.task_ids``: sequence names and env ids, comma-separated or a list, e.g.
    ``"mt40,dmc10"``); duplicates kept (cw20 repeats tasks).

    Raises ``plasticrl.lab.config.ConfigError`` naming ``key`` for an unknown sequence or id."""
    try:
        return envs.task_ids(spec)
    except ValueError as exc:
        sequences = "" if "sequences:" in str(exc) else f" (sequences: {', '.join(envs.SEQUENCES)})"
        raise ConfigError(f"{key}: {exc}{sequences}") from None


def dt_config(cfg: Any) -> DTConfig:
    """The ``plasticrl.agents.l2m.DTConfig`` of a config's ``model`` section (other sizes at their defaults)."""
    m = cfg.model
    return DTConfig(d_model=m.d_model, n_layers=m.n_layers, n_heads=m.n_heads, context=m.context, dropout=m.dropout)


def load_pretrained(cfg: Any) -> dict[str, Any]:
    """The contents of ``pretrain.checkpoint`` (an ``L2MAgent.save`` file, read by ``L2MAgent.read_checkpoint``);
    ConfigError if it is missing, unreadable or was built with other DT sizes than the ``model`` section."""
    path = Path(cfg.pretrain.checkpoint)
    if not path.is_file():
        raise ConfigError(f"pretrain.checkpoint: {str(path)!r} not found; give the pretrained.pt of an earlier run "
                          "(<run>/checkpoints/pretrained.pt) or pretrain.checkpoint=null to pre-train")
    try:
        data = L2MAgent.read_checkpoint(path)
        saved = dict(data["config"])
        if "model" not in data:
            raise KeyError("no 'model' weights")
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same advice
        raise ConfigError(f"pretrain.checkpoint: {str(path)!r} is not an L2MAgent checkpoint ({exc})") from None
    wanted = asdict(dt_config(cfg))
    if set(saved) != set(wanted):
        raise ConfigError(f"pretrain.checkpoint: {str(path)!r} is a checkpoint of another Decision Transformer "
                          f"(config keys {sorted(saved)}, now {sorted(wanted)}); pre-train again with "
                          "pretrain.checkpoint=null")
    diff = [f"{k}={saved.get(k)!r} (config: {v!r})" for k, v in wanted.items() if saved.get(k) != v]
    if diff:
        raise ConfigError(f"pretrain.checkpoint: {str(path)!r} was built with other DT sizes: {', '.join(diff)}; "
                          "set the model section to the checkpoint's sizes or pretrain.checkpoint=null")
    return data


def load_reference_curves(cfg: Any, seq_tasks: list[str]) -> list[list[float]] | None:
    """``sequence.reference_curves`` as one curve per task (from the list, or from a reference run's
    ``reference_curves.json``); None when not given. ConfigError for a wrong count, empty curves, a missing file or
    a file made for other tasks."""
    refs = cfg.sequence.reference_curves
    if refs is None:
        return None
    if isinstance(refs, str):
        path = Path(refs)
        if not path.is_file():
            raise ConfigError(f"sequence.reference_curves: {refs!r} not found; run `plasticrl continual CONFIG --set "
                              "sequence.method=reference` first and give its reference_curves.json")
        data = json.loads(path.read_text())
        if data.get("tasks") != seq_tasks:
            raise ConfigError(f"sequence.reference_curves: {refs!r} holds curves of tasks {data.get('tasks')}, "
                              f"not of sequence.tasks {seq_tasks}")
        differ = [f"sequence.{k}: {data[k]} there, {getattr(cfg.sequence, k)} here"
                  for k in ("steps_per_task", "eval_every") if k in data and data[k] != getattr(cfg.sequence, k)]
        kinds = score_kinds(seq_tasks)
        if data.get("score_per_task", ["success rate"] * len(seq_tasks)) != kinds:  # older files: success only
            differ.append(f"scores {data.get('score_per_task', 'success rate only')} there, {kinds} here")
        if differ:  # curves of another length or grid would make the AUCs incomparable
            raise ConfigError(f"sequence.reference_curves: {refs!r} was made with other settings "
                              f"({'; '.join(differ)}); make the reference run with this config's sequence settings")
        refs = data["curves"]
    if len(refs) != len(seq_tasks) or any(len(r) == 0 for r in refs):
        raise ConfigError(f"sequence.reference_curves: need {len(seq_tasks)} non-empty curves (one per task), "
                          f"got {len(refs)}")
    return [list(map(float, r)) for r in refs]


def _check_datasets(cfg: Any, tasks: list[str]) -> None:
    """ConfigError naming every DMC task without a ``data.dataset_ids`` entry, or every listed dataset not on disk,
    with how to make them."""
    out = Path(cfg.data.out_dir)
    how = (f"DMC data comes from trained agents: `scripts/train_sac_state.sh` (all 16 DMC tasks), or per task "
           f"`plasticrl train configs/train/sac_state.yaml --set env.id=ID` then "
           f"`plasticrl collect --runs RUNS --out {out}` "
           f"(or `plasticrl collect --tasks ID --checkpoint RUN/checkpoints/final.zip --out {out}`)")
    no_id = [t for t in tasks if t.startswith("dmc:") and t not in cfg.data.dataset_ids]
    if no_id:
        raise ConfigError(f"data.dataset_ids: no dataset id for {', '.join(no_id)}: DMC tasks have no scripted "
                          f"policy. {how}; then give each printed id in data.dataset_ids")
    absent = [f"{t}: {cfg.data.dataset_ids[t]}" for t in tasks
              if t in cfg.data.dataset_ids and not (out / cfg.data.dataset_ids[t]).exists()]
    if absent:
        raise ConfigError(f"data.dataset_ids: not found under {out}: {'; '.join(absent)}. {how}")


def check_inputs(cfg: Any) -> RunInputs:
    """Checks a validated config against the registries and files and returns what they hold (``RunInputs``);
    ConfigError for the first problem."""
    pretrain = cfg.pretrain.steps > 0 and cfg.pretrain.checkpoint is None
    pre = resolve_task_list(cfg.pretrain.tasks, "pretrain.tasks") if pretrain else []
    seq = resolve_task_list(cfg.sequence.tasks, "sequence.tasks")
    if cfg.sequence.method not in METHODS:
        raise ConfigError(f"sequence.method: {cfg.sequence.method!r} is not allowed; allowed: {', '.join(METHODS)}")
    _check_datasets(cfg, list(dict.fromkeys(pre + seq)))
    curves = load_reference_curves(cfg, seq)
    pretrained = None if cfg.pretrain.checkpoint is None else load_pretrained(cfg)
    REGISTRY[cfg.sequence.method].check(cfg, len(seq))
    return RunInputs(pre, seq, curves, pretrained)


def check_continual(cfg: Any) -> tuple[list[str], list[str]]:
    """(pre-training tasks, sequence tasks) of a validated config; ConfigError for problems needing the registries
    or files (``pretrain.checkpoint``, a ``sequence.reference_curves`` file). No pre-training tasks when
    ``pretrain.steps`` is 0 or ``pretrain.checkpoint`` is given. ``check_inputs`` also returns what was read."""
    inputs = check_inputs(cfg)
    return inputs.pretrain_tasks, inputs.sequence_tasks
