"""The config of the continual-learning runner (``plasticrl continual CONFIG``).

Sections: run, data, model, pretrain, sequence, pool, logging. Unknown keys and bad values raise
``plasticrl.lab.config.ConfigError`` with one line per problem (key path, value, what is allowed, close matches).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from plasticrl.lab.config.base import (
    BaseLoggingConfig,
    BaseRunConfig,
    ConfigError,  # noqa: F401 - raised by load and validate; importable from here
    Section,
    check_problems,
    read_yaml,
    validate_model,
)

# Reset seeds: data collection uses data seed + i (episode i), evaluation EVAL_SEED_BASE + EVAL_SEEDS_PER_RUN *
# run.seed + e (episode e), so evaluation starts are never those of the data (validated below)
EVAL_SEED_BASE = 1_000_000_000
EVAL_SEEDS_PER_RUN = 1_000
MAX_RUN_SEED = 1_000_000  # keeps every evaluation seed below 2**32 (dm_control's RandomState)


class RunConfig(BaseRunConfig):
    name: str = Field("continual", min_length=1, description="experiment name; runs go to <out_dir>/<name>/")
    seed: int = Field(0, ge=0, le=MAX_RUN_SEED,
                      description="seed of networks, sampling, the evaluation episodes' Meta-World starts (reset "
                                  "seeds 1e9 + 1000 * seed + e) and, unless data.seed is set, data collection")


class DataConfig(Section):
    out_dir: str = Field("data", description="Minari datasets folder (MINARI_DATASETS_PATH)")
    episodes_per_task: int = Field(100, ge=1, description="scripted episodes collected per Meta-World task")
    noise_std: float = Field(0.1, ge=0, description="scripted policies' Gaussian action noise (action units)")
    seed: int | None = Field(
        None, ge=0, description="seed of scripted collection: episode i resets with seed + i (new object and goal "
                                "positions, random_init_all) and the action noise is seeded with it; null: run.seed. "
                                "The dataset id records it with the task, noise, episodes and protocol")
    dataset_ids: dict[str, str] = Field(
        default_factory=dict,
        description="env id -> existing Minari dataset id under out_dir (needed for dmc tasks, e.g. from "
                    "`plasticrl collect --checkpoint`); other tasks get scripted datasets")


class ModelConfig(Section):
    d_model: int = Field(128, ge=1, description="Decision Transformer width")
    n_layers: int = Field(3, ge=1, description="transformer blocks")
    n_heads: int = Field(4, ge=1, description="attention heads (must divide d_model)")
    context: int = Field(5, ge=1, description="timesteps per context window")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout rate")
    precision: Literal["fp32", "bf16"] = Field(
        "bf16", description="transformer matmuls on CUDA (bf16 autocast, fp32 weights and loss; fp32: TF32 "
                          "matmuls); CPU: fp32")
    cuda_graph: bool = Field(
        True, description="on CUDA, every gradient step (sampled batch in, loss, backward, clipping, AdamW) "
                          "replays one captured CUDA graph; false: eager steps (same results)")


class PretrainConfig(Section):
    tasks: str | list[str] = Field(
        "mt40", description="sequence names and env ids, comma-separated (e.g. mt40,dmc10), or a list")
    steps: int = Field(100_000, ge=0, description="gradient steps of pre-training (0: skip)")
    batch_size: int = Field(64, ge=1, description="batch size of pre-training")
    learning_rate: float = Field(1e-4, gt=0, lt=1, description="learning rate of pre-training (after the warmup)")
    warmup_steps: int = Field(
        4_000, ge=0,
        description="steps of linear warmup at the start of pre-training: step n (0-based) has learning_rate * "
                    "(n + 1) / warmup_steps (L2M: 4000, configs/agent_params/cdt_pretrain_disc.yaml, a LambdaLR in "
                    "src/algos/decision_transformer_sb3.py). Absolute steps, as in L2M, not scaled with "
                    "pretrain.steps: the warmup settles AdamW's moments and the transformer's first updates, "
                    "which takes the same number of steps in a short run (4000 of 200k: 2%; of 1M: 0.4%)")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "cosine",
        description="learning rate after the warmup. cosine (L2M's pre-training, lr_sched_kwargs/cosine.yaml): "
                    "min_learning_rate + (learning_rate - min_learning_rate) * (1 + cos(pi * c / steps)) / 2 at "
                    "c = step - warmup_steps, one cycle whose period is the whole run (pretrain.steps, L2M's T_max = "
                    "total_timesteps), so the last step is just above min_learning_rate; constant: learning_rate. "
                    "The sequence has no schedule: L2M's CW10 fine-tuning (cdt_mpdt_disc.yaml) sets warmup_steps 0 "
                    "and no lr_sched_kwargs, a constant sequence.learning_rate")
    min_learning_rate: float = Field(
        1e-6, ge=0, lt=1, description="learning rate the cosine schedule decays to (L2M's eta_min: 1e-6)")
    checkpoint: str | None = Field(
        None, description="a pretrained.pt (L2MAgent.save format, e.g. <run>/checkpoints/pretrained.pt) to start "
                          "from instead of pre-training; its DT sizes must match the model section")


class SequenceConfig(Section):
    tasks: str | list[str] = Field(
        "cw10", description="sequence names and env ids, comma-separated (e.g. mt40,dmc10), or a list")
    # the method classes' registry (plasticrl.lab.continual.methods.REGISTRY) holds the same names (tested)
    method: Literal["l2m", "l2m_oracle", "lora", "finetune", "ewc", "reference"] = Field(
        "l2m", description="reference: per task, fine-tune the pre-trained DT on that task alone and write "
                           "reference_curves.json (single-task curves for forward transfer)")
    steps_per_task: int = Field(10_000, ge=1, description="gradient steps per task")
    batch_size: int = Field(64, ge=1, description="batch size while training on the sequence")
    learning_rate: float = Field(
        1e-4, gt=0, lt=1, description="learning rate while training on the sequence, constant (as L2M's CW10 "
                                      "fine-tuning: no warmup, no schedule)")
    eval_every: int = Field(
        0, ge=0, description="evaluate every N steps of a task (0: only at its end); which tasks: eval_scope")
    eval_scope: Literal["all", "current"] = Field(
        "all", description="tasks of the evaluations every eval_every steps: all tasks of the sequence (Continual "
                           "World's per-task curves) or only the task in training (enough for forward transfer; "
                           "cheaper); every task's end evaluates all tasks either way")
    eval_episodes: int = Field(
        5, ge=1, le=EVAL_SEEDS_PER_RUN,
        description="episodes per task and evaluation (L2M: 5, configs/eval_params/finetune_md_cl.yaml), each from "
                    "its own held-out start (reset seed 1e9 + 1000 * run.seed + e), the same at every evaluation")
    eval_deterministic: bool = Field(
        True, description="decode each action dimension's bin by argmax (true, as L2M's multi-domain discrete DT "
                          "does) or sample it from the softmax of its logits (false)")
    probe_batch_size: int = Field(
        256, ge=0, description="context windows of the fixed batch per task (from its data) that the plasticity "
                               "monitor probes at every evaluation (0: no probes)")
    max_episode_steps: int = Field(
        200, ge=1, description="env steps per Meta-World evaluation episode (Continual World's horizon; DMC "
                               "episodes run their 1,000 frames)")
    reference_curves: list[list[float]] | str | None = Field(
        None, description="single-task reference success curves, one per task, for forward transfer: a list of "
                          "curves or the path of a reference run's reference_curves.json")
    ewc_lambda: float = Field(
        1e3, ge=0, description="method ewc: lambda of the penalty lambda/2 * sum_i F_i (theta_i - anchor_i)^2 added "
                               "to the DT cross-entropy loss (nats per action dim); F = summed diagonal Fisher "
                               "(squared gradients of that loss), anchor = parameters after the latest task")
    ewc_fisher_batches: int = Field(
        10, ge=1, description="method ewc: batches (of batch_size) of a task's data averaged in its diagonal Fisher")


class PoolConfig(Section):
    pool_size: int = Field(30, ge=1, description="entries in the modulation pool (one key and one modulator set each)")
    rank: int = Field(8, ge=1, description="LoRA rank")
    kind: Literal["lora", "ia3"] = Field("lora", description="modulator of an entry: LoRA or (IA)^3")
    placement: Literal["l2m", "standard"] = Field(
        "l2m", description="where the modulators act. l2m (L2M's code): LoRA on q and v (their input) and on the "
                           "first feed-forward layer's output, A drawn by one kaiming-uniform over the whole pool; "
                           "(IA)^3 on k, v and the post-GELU activation. standard (LoRA only): LoRA of Hu et al. on "
                           "the q, v, fc1 and fc2 inputs, A drawn per layer as nn.Linear does (an ablation)")
    top_k: int = Field(1, ge=1, description="entries each sample selects (must be <= pool_size)")
    pull_coef: float = Field(0.5, ge=0, description="weight of the key loss, 1 - cos(query, selected key)")
    count_penalty: bool = Field(True, description="usage penalty on entries picked by earlier tasks")


class LoggingConfig(BaseLoggingConfig):
    """W&B only (the train config's logging section adds print_episodes and plots)."""


class ContinualConfig(Section):
    run: RunConfig = Field(default_factory=RunConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    sequence: SequenceConfig = Field(default_factory=SequenceConfig)
    pool: PoolConfig = Field(default_factory=PoolConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)


def validate(data: dict[str, Any], source: str = "config") -> ContinualConfig:
    """A ContinualConfig from plain data, or ConfigError listing each bad key with its value and what is allowed."""
    cfg = validate_model(ContinualConfig, data, source)
    problems = []
    if cfg.model.d_model % cfg.model.n_heads:
        problems.append(f"model.d_model: {cfg.model.d_model} must be divisible by model.n_heads={cfg.model.n_heads}")
    if cfg.pool.top_k > cfg.pool.pool_size:
        problems.append(f"pool.top_k: {cfg.pool.top_k} must be <= pool.pool_size={cfg.pool.pool_size}")
    if cfg.pool.kind == "ia3" and cfg.pool.placement == "standard":
        problems.append("pool.placement: standard is a LoRA placement; (IA)^3 has one (k, v and the post-GELU "
                        "activation): set pool.placement=l2m")
    data_seed = cfg.run.seed if cfg.data.seed is None else cfg.data.seed
    if data_seed + cfg.data.episodes_per_task > EVAL_SEED_BASE:
        problems.append(f"data.seed: {data_seed} + data.episodes_per_task {cfg.data.episodes_per_task} reaches the "
                        f"evaluation seeds (from {EVAL_SEED_BASE:,}); use a smaller seed")
    check_problems(problems, source)
    return cfg


def load(path: str | Path, overrides: list[str] | None = None, overlays: list[str | Path] | None = None
         ) -> ContinualConfig:
    """Reads a YAML config, merges the overlay files over it in order, applies ``key.sub=value`` overrides in
    order, validates."""
    data = read_yaml(path, overrides, sections="run, data, model, ...", examples=" (configs/continual/)",
                     overlays=overlays)
    return validate(data, source=str(path))
