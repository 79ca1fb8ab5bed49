"""Typed experiment configs: YAML file + ``--set key.sub=value`` overrides, validated before anything starts.

pydantic does the type checking and coercion; this module turns its errors into one message per problem that
names the key path, the bad value, what is allowed, and a close match for a misspelt key.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

M = TypeVar("M", bound=BaseModel)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunConfig(Section):
    name: str = Field("run", min_length=1, description="experiment name; runs go to <out_dir>/<name>/")
    seed: int = Field(0, ge=0, description="seed of env, networks and sampling")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="training device; auto = cuda if available")
    total_steps: int = Field(100_000, gt=0, description="agent steps (transitions over all envs) to train")
    out_dir: str = Field("runs", description="root folder of run folders")
    checkpoint_every: int = Field(0, ge=0, description="save a checkpoint every N agent steps (0: only final)")
    progress_bar: bool = Field(True, description="show a progress bar")


class EnvConfig(Section):
    id: str = Field("dmc:walker-walk", description="env id for envs.make, e.g. dmc:walker-walk")
    pixels: bool = Field(True, description="pixel observations (DrQ needs them; SAC needs false, its default)")
    size: int = Field(84, ge=16, le=256, description="image height = width in pixels")
    frame_stack: int = Field(3, ge=1, le=16, description="frames stacked per observation")
    action_repeat: int = Field(2, ge=1, le=16, description="simulator steps per agent step")
    n_envs: int = Field(1, ge=1, le=256, description="parallel environments")
    vec_env: Literal["auto", "dummy", "subproc"] = Field(
        "auto", description="auto: subproc when n_envs > 1, else dummy")


class AgentConfig(Section):
    kind: Literal["drq", "sac"] = Field(
        "drq", description="drq: agents.DrQ on pixels; sac: stable_baselines3.SAC('MlpPolicy') on state")
    learning_rate: float = Field(1e-4, gt=0, lt=1)
    batch_size: int = Field(256, ge=1)
    buffer_size: int = Field(1_000_000, ge=100, description="transitions kept in replay")
    learning_starts: int = Field(2000, ge=0, description="agent steps of random actions before updates")
    gamma: float = Field(0.99, gt=0, le=1)
    tau: float = Field(0.01, gt=0, le=1, description="target critic Polyak rate")
    n_step: int = Field(3, ge=1, le=20, description="n-step return length")
    feature_dim: int = Field(50, ge=1, description="trunk output width")
    hidden_dim: int = Field(1024, ge=1, description="actor/critic MLP width (2 hidden layers)")
    init_temperature: float = Field(0.1, gt=0, description="initial SAC entropy coefficient (learned)")
    augment_pad: int = Field(4, ge=0, le=16, description="random-shift padding in pixels")
    buffer_device: Literal["auto", "cuda", "cpu"] = Field("auto", description="where replay frames live")
    async_env_step: bool = Field(False, description="step the envs while the GPU updates (actions one update round stale)")
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="CUDA: bf16 autocast of encoder, trunks, hidden MLP layers (fp32 outputs, weights, losses)")
    compile: bool | Literal["default", "max-autotune-no-cudagraphs"] = Field(
        False, description="torch.compile the update (CUDA only; about a minute of compiling at the first update); "
                           "max-autotune-no-cudagraphs: Inductor also benchmarks Triton GEMM/conv kernels (minutes)")
    fused_q_heads: bool = Field(False, description="critic: both Q heads as batched matmuls instead of two MLPs "
                                                   "(same parameters; equal up to float rounding)")
    cuda_graph: Literal["auto"] | bool = Field(
        "auto", description="replay each update as one CUDA graph (auto: on CUDA with a constant learning rate)")


class ReplayRatioConfig(Section):
    kind: Literal["static", "adaptive"] = Field("static")
    ratio: float = Field(0.5, gt=0, le=64, description="static: updates per transition")
    low: float = Field(0.5, gt=0, le=64, description="adaptive: ratio before the switch")
    high: float = Field(2.0, gt=0, le=64, description="adaptive: ratio after the switch")
    check_every: int = Field(50, ge=1, description="adaptive: episodes (or steps) between checks")
    unit: Literal["episodes", "steps"] = Field("episodes")
    tolerance: float = Field(1e-3, ge=0, description="adaptive: |delta critic FAU| that counts as settled")


class EvalConfig(Section):
    every: int = Field(10_000, ge=0, description="evaluate every N agent steps (0: only at the end)")
    episodes: int = Field(10, ge=1, description="deterministic episodes per evaluation")


class MonitorConfig(Section):
    enabled: bool = Field(True)
    every: int = Field(10_000, ge=1, description="probe every N agent steps")
    batch_size: int = Field(256, ge=2, description="probe batch drawn from replay")
    tau: float = Field(0.025, ge=0, description="dormant threshold (Sokar et al. 2023)")
    delta: float = Field(0.01, gt=0, lt=1, description="srank threshold (Kumar et al. 2021)")
    groups: list[Literal["encoder", "actor", "critic", "critic_target"]] = Field(
        default_factory=lambda: ["encoder", "actor", "critic"])
    histograms_every: int = Field(0, ge=0, description="log per-unit histograms every K probes (0: never)")


class WandbConfig(Section):
    mode: Literal["offline", "online", "disabled"] = Field("offline")
    project: str = Field("plasticrl")
    entity: str | None = None
    group: str | None = Field(None, description="default: run.name")
    tags: list[str] | None = Field(None, description="default: agent, env, replay-ratio kind")
    name: str | None = Field(None, description="default: <run.name>-s<seed>")


def wandb_settings(w: WandbConfig, run_name: str, seed: int, default_tags: list[str]) -> dict[str, Any]:
    """Keyword arguments of ``plasticrl.logging.WandbSink`` with this project's defaults filled in: group = the run
    name (seeds group together), name = ``<run name>-s<seed>``, tags = ``default_tags``."""
    return {"mode": w.mode, "project": w.project, "entity": w.entity, "group": w.group or run_name,
            "tags": w.tags or default_tags, "name": w.name or f"{run_name}-s{seed}"}


class LoggingConfig(Section):
    wandb: WandbConfig = Field(default_factory=WandbConfig)
    print_episodes: bool = Field(True, description="print each finished episode's return")
    plots: bool = Field(True, description="write a PNG dashboard into the run folder at the end")


# agent.kind=sac: defaults of the keys a config leaves out, where SAC on state differs from DrQ on pixels.
SAC_DEFAULTS: dict[str, dict[str, Any]] = {
    "env": {"pixels": False},
    "agent": {"learning_rate": 3e-4, "tau": 0.005, "n_step": 1, "hidden_dim": 256},
    "replay_ratio": {"ratio": 1.0},
    "monitor": {"groups": ["actor", "critic"]},
}
# DrQ's keys that stock SB3 SAC has no use for: with agent.kind=sac they must keep these defaults.
DRQ_ONLY = ("feature_dim", "augment_pad", "buffer_device", "async_env_step", "precision", "cuda_graph", "compile",
            "fused_q_heads")


class Config(Section):
    run: RunConfig = Field(default_factory=RunConfig)
    env: EnvConfig = Field(default_factory=EnvConfig)
    agent: AgentConfig = Field(default_factory=AgentConfig)
    replay_ratio: ReplayRatioConfig = Field(default_factory=ReplayRatioConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    @model_validator(mode="before")
    @classmethod
    def _agent_defaults(cls, data: Any) -> Any:
        """With ``agent.kind: sac``, fills ``SAC_DEFAULTS`` into the keys the data leaves out."""
        if not (isinstance(data, dict) and isinstance(data.get("agent"), dict) and data["agent"].get("kind") == "sac"):
            return data
        data = dict(data)
        for section, defaults in SAC_DEFAULTS.items():
            if isinstance(data.get(section, {}), dict):
                data[section] = {**defaults, **(data.get(section) or {})}
        return data


def agent_problems(cfg: Config) -> list[str]:
    """Keys that don't fit ``agent.kind`` (one line each, naming the key and the fix); [] if all fit."""
    a, problems = cfg.agent, []
    if a.kind == "drq":
        if not cfg.env.pixels:
            problems.append("env.pixels: false is not allowed with agent.kind=drq, a pixel agent; set "
                            "env.pixels=true (or agent.kind=sac for state observations)")
        return problems
    if cfg.env.pixels:
        problems.append("env.pixels: true is not allowed with agent.kind=sac, a state agent (MlpPolicy); set "
                        "env.pixels=false (or agent.kind=drq for pixels)")
    if a.n_step != 1:
        problems.append(f"agent.n_step: {a.n_step} is not supported by agent.kind=sac (stock SB3 SAC uses 1-step "
                        "returns); remove the key or set agent.n_step=1")
    for key in DRQ_ONLY:
        value, default = getattr(a, key), AgentConfig.model_fields[key].default
        if value != default:
            problems.append(f"agent.{key}: {value!r} is a DrQ option that agent.kind=sac does not have; remove the "
                            f"key (default {default!r})")
    if "encoder" in cfg.monitor.groups:
        problems.append("monitor.groups: agent.kind=sac has no encoder (MlpPolicy on state); use actor, critic, "
                        "critic_target")
    return problems


class ConfigError(ValueError):
    """A config that can't be used: the message lists every problem, one per line."""


def _section_fields(root: type[BaseModel], path: tuple[str | int, ...]) -> list[str]:
    model: Any = root
    for part in path:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return []
        model = field.annotation
    return list(model.model_fields)


def _describe(root: type[BaseModel], error: dict[str, Any]) -> str:
    loc = tuple(error["loc"])
    key = ".".join(str(p) for p in loc)
    value = error.get("input")
    if error["type"] == "extra_forbidden":
        allowed = _section_fields(root, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f" Did you mean '{'.'.join(str(p) for p in loc[:-1] + (close[0],))}'?" if close else ""
        return f"{key}: unknown key.{hint} Allowed here: {', '.join(allowed)}."
    return f"{key}: {value!r} is not allowed: {error['msg']}."


def validate_model(root: type[M], data: dict[str, Any], source: str = "config") -> M:
    """``root`` (a config schema) from plain data, or ConfigError listing each bad key with its value and what is
    allowed (one line per key and message: unions report each member)."""
    try:
        return root.model_validate(data)
    except ValidationError as exc:
        lines = list(dict.fromkeys(_describe(root, e) for e in exc.errors()))
        raise ConfigError(f"{source} is invalid:\n  " + "\n  ".join(lines)) from None


def validate(data: dict[str, Any], source: str = "config") -> Config:
    """A Config from plain data, or ConfigError listing each bad key with its value and what is allowed, and each
    key that doesn't fit ``agent.kind`` (see ``agent_problems``)."""
    cfg = validate_model(Config, data, source)
    problems = agent_problems(cfg)
    if problems:
        raise ConfigError(f"{source} is invalid:\n  " + "\n  ".join(problems))
    return cfg


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Applies ``key.sub=value`` to nested dict ``data``; value parsed as YAML (``1e-4``, ``true``, ``[a, b]``)."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected key.sub=value, e.g. --set run.seed=1")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {assignment!r}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""


def read_yaml(path: str | Path, overrides: list[str] | None = None, sections: str = "run, env, agent, ...",
              examples: str = "") -> dict[str, Any]:
    """The mapping in a YAML config file with ``key.sub=value`` overrides applied in order; ConfigError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found; the configs/ folder holds examples{examples}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections ({sections}), got {type(data).__name__}")
    for assignment in overrides or []:
        apply_override(data, assignment)
    return data


def load(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Reads a YAML config, applies overrides in order, validates."""
    return validate(read_yaml(path, overrides), source=str(path))


def dump(config: BaseModel) -> str:
    """The resolved config as YAML (every key, defaults included)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
