"""The config of ``plasticrl train``: sections run, env, agent, replay_ratio, interventions, eval, monitor,
logging.

pydantic does the type checking and coercion; ``plasticrl.lab.config.base`` turns its errors into one message per
problem that names the key path, the bad value, what is allowed, and a close match for a misspelt key.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from plasticrl.lab.config.base import (
    BaseLoggingConfig,
    BaseRunConfig,
    ConfigError,  # noqa: F401 - raised by load and validate; importable from here
    Section,
    read_yaml,
    validate_model,
)


class RunConfig(BaseRunConfig):
    dir: str | None = Field(None, description="the exact run folder (null: <out_dir>/<name>/<seed>-<time>/); train "
                                              "refuses a folder that already holds a run (config.yaml or "
                                              "metrics.jsonl)")
    total_steps: int = Field(100_000, gt=0, description="agent steps (transitions over all envs) to train")
    checkpoint_every: int = Field(0, ge=0, description="save a checkpoint every N agent steps (0: only final)")
    keep_checkpoints: int = Field(3, ge=0, description="keep the newest N step checkpoints (0: all)")
    save_replay: bool = Field(False, description="save the replay buffer with each checkpoint, for an exact resume")
    progress_bar: bool = Field(True, description="show a progress bar")


class EnvConfig(Section):
    id: str = Field("dmc:walker-walk", description="env id for envs.make, e.g. dmc:walker-walk")
    pixels: bool = Field(True, description="pixel observations (DrQ needs them; SAC needs false, its default)")
    size: int = Field(84, ge=16, le=256, description="image height = width in pixels")
    frame_stack: int = Field(3, ge=1, le=16, description="frames stacked per observation")
    action_repeat: int = Field(2, ge=1, le=16, description="simulator steps per agent step")
    n_envs: Annotated[int, Field(ge=1, le=256)] | Literal["auto"] = Field(
        "auto", description="parallel environments (auto: min(16, cores) on CUDA with agent.kind=drq, else 1)")
    vec_env: Literal["auto", "dummy", "subproc"] = Field(
        "auto", description="auto: subproc when n_envs > 1, else dummy")


class AgentConfig(Section):
    kind: Literal["drq", "drqv2", "sac"] = Field(
        "drq", description="drq: plasticrl.agents.DrQ (SAC + DrQ-v2's networks) on pixels; drqv2: "
                           "plasticrl.agents.DrQV2 (DrQ-v2 as its paper ran it) on pixels; sac: "
                           "stable_baselines3.SAC('MlpPolicy') on state")
    learning_rate: float = Field(
        1e-4, gt=0, lt=1, description="Adam learning rate of actor, critic + encoder and temperature")
    batch_size: int = Field(256, ge=1, description="transitions per update")
    buffer_size: int = Field(1_000_000, ge=100, description="transitions kept in replay")
    learning_starts: int = Field(2000, ge=0, description="agent steps before updates (drq, sac: of random actions; "
                                                          "drqv2: uniform actions for num_expl_steps)")
    gamma: float = Field(0.99, gt=0, le=1, description="discount")
    tau: float = Field(0.01, gt=0, le=1, description="target critic Polyak rate")
    n_step: int = Field(3, ge=1, le=20, description="n-step return length")
    feature_dim: int = Field(50, ge=1, description="trunk output width")
    hidden_dim: int = Field(1024, ge=1, description="actor/critic MLP width (2 hidden layers)")
    init_temperature: float = Field(0.1, gt=0, description="initial SAC entropy coefficient (learned; drq, sac)")
    std_schedule: str | float = Field(
        "linear(1.0,0.1,500000)", description="drqv2: exploration noise std in DrQ-v2's syntax, a number or "
                                              "linear(init,final,duration) / step_linear(...), durations in agent "
                                              "steps (DrQ-v2: 100000 easy, 500000 medium, 2000000 hard tasks)")
    stddev_clip: float = Field(0.3, ge=0, description="drqv2: clip of the target-policy and actor-loss noise")
    num_expl_steps: int = Field(2000, ge=0, description="drqv2: agent steps of uniform random actions")
    augment_pad: int = Field(4, ge=0, le=16, description="random-shift padding in pixels")
    buffer_device: Literal["auto", "cuda", "cpu"] = Field("auto", description="where replay frames live")
    async_env_step: bool | Literal["auto"] = Field(
        "auto", description="step the envs while the GPU updates (actions one update round stale; auto: on CUDA)")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 on CUDA, fp32 on the CPU. CUDA: bf16 autocast of encoder, trunks, hidden "
                            "MLP layers (fp32 outputs, weights, losses)")
    compile: bool | Literal["auto", "default", "max-autotune-no-cudagraphs"] = Field(
        "auto", description="torch.compile the update (auto: on CUDA; CUDA only; about a minute of compiling at the "
                            "first update); max-autotune-no-cudagraphs: Inductor also benchmarks Triton GEMM/conv "
                            "kernels (minutes)")
    fused_q_heads: bool | Literal["auto"] = Field(
        "auto", description="critic: both Q heads as batched matmuls instead of two MLPs (same parameters; equal up "
                            "to float rounding; auto: on CUDA)")
    cuda_graph: Literal["auto"] | bool = Field(
        "auto", description="replay each update as one CUDA graph (auto: on CUDA with a constant learning rate)")
    hidden_norm: Literal["none", "layernorm"] = Field(
        "none", description="layernorm: a LayerNorm after each hidden Linear of the actor's and critic's MLPs, before "
                            "the activation (Lyle et al. 2023, 2024)")
    activation: Literal["relu", "crelu"] = Field(
        "relu", description="hidden activation of the actor's and critic's MLPs; crelu: concat(relu(x), relu(-x)) "
                            "(Abbas et al. 2023), the next layer sees twice the width")
    init: Literal["default", "orthogonal"] = Field(
        "default", description="weight init of encoder, actor, critic: PyTorch's layer default, or DrQ-v2's "
                               "orthogonal weights with zero biases")
    l2_init: float = Field(0.0, ge=0, description="L2 towards the initial weights, coefficient of sum ||theta - "
                                                  "theta_0||^2 in the critic and actor losses (Kumar et al. 2023)")
    nap: bool = Field(False, description="Normalize-and-Project (Lyle et al. 2024): LayerNorm before each hidden "
                                         "activation and every weight matrix projected back to its initial norm "
                                         "after each step")


class ReplayRatioConfig(Section):
    kind: Literal["static", "adaptive"] = Field(
        "static", description="static: a fixed ratio; adaptive: low until the critic's FAU settles, then high "
                               "(Ma et al. 2024)")
    ratio: float = Field(0.5, gt=0, le=64, description="static: updates per transition")
    low: float = Field(0.5, gt=0, le=64, description="adaptive: ratio before the switch")
    high: float = Field(2.0, gt=0, le=64, description="adaptive: ratio after the switch")
    check_every: int = Field(50, ge=1, description="adaptive: episodes (or steps) between checks")
    unit: Literal["episodes", "steps"] = Field(
        "episodes", description="adaptive: what check_every counts (steps: for tasks without fixed-length episodes)")
    tolerance: float = Field(1e-3, ge=0, description="adaptive: |delta critic FAU| that counts as settled")


# A metric trigger: "<metric> <op> <threshold>", e.g. "plasticity/critic/dormant_ratio > 0.1"
WHEN = re.compile(r"^\s*(\S+)\s*(>=|<=|>|<)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


class InterventionBase(Section):
    """When an intervention fires and what it acts on (the keys every kind shares)."""

    groups: list[str] = Field(min_length=1, description="module groups to act on, one application each: encoder, "
                                                        "actor, critic (agent.kind=sac: actor, critic)")
    every: int | None = Field(None, gt=0, description="fire at every multiple of N agent steps")
    at: list[Annotated[int, Field(gt=0)]] = Field(default_factory=list,
                                                  description="fire once at each of these agent steps")
    start: int = Field(0, ge=0, description="never fire before this agent step")
    stop: int | None = Field(None, gt=0, description="never fire after this agent step (null: no end)")
    when: str | None = Field(None, description='fire when a monitored metric crosses a threshold, checked at each '
                                               'probe: "<metric> <op> <value>", op one of > >= < <=, e.g. '
                                               '"plasticity/critic/dormant_ratio > 0.1"')
    min_gap: int = Field(0, ge=0, description="agent steps between two firings, at least")

    @model_validator(mode="after")
    def _fires(self) -> InterventionBase:
        if self.every is None and not self.at and self.when is None:
            raise ValueError("give at least one of every, at or when (else it never fires)")
        if self.stop is not None and self.stop <= self.start:
            raise ValueError(f"stop ({self.stop}) must be after start ({self.start})")
        if self.when is not None and WHEN.match(self.when) is None:
            raise ValueError(f"when: {self.when!r} is not '<metric> <op> <number>' with op one of > >= < <=, e.g. "
                             "'plasticity/critic/dormant_ratio > 0.1'")
        return self


class ResetSpec(InterventionBase):
    kind: Literal["reset"] = Field(description="re-initialise layers (Nikishin et al. 2022)")
    layers: str | list[str] = Field("last2", description="all, last<k> (the last k Linear/Conv layers of each head) "
                                                         "or a list of module-name globs, e.g. [q1.4, q2.4]")


class ShrinkPerturbSpec(InterventionBase):
    kind: Literal["shrink_perturb"] = Field(description="theta <- alpha theta + (1 - alpha) theta_fresh (Ash & Adams "
                                                        "2020)")
    alpha: float = Field(0.5, gt=0, lt=1, description="shrink factor: the share of the current weights kept "
                                                      "(BBF's published config: 0.5)")
    layers: str | list[str] = Field("all", description="as for reset")
    towards: Literal["fresh", "initial"] = Field("fresh", description="fresh: a new init draw; initial: the "
                                                                      "weights at the start of training")
    optimizer: Literal["keep", "reset"] = Field("keep", description="Adam state of the interpolated layers: kept "
                                                                    "(as BBF and Plasticine) or zeroed")
    targets: Literal["shrink", "sync"] = Field("shrink", description="target networks: interpolated towards the same "
                                                                     "draw (keeps the Polyak lag) or set to the online "
                                                                     "weights")


class ReDoSpec(InterventionBase):
    kind: Literal["redo"] = Field(description="recycle tau-dormant units (Sokar et al. 2023)")
    tau: float = Field(0.1, ge=0, description="dormancy threshold of the normalised unit score")
    sites: list[str] | None = Field(None, description="activation sites to recycle (globs on the monitor's layer "
                                                      "names; null: every rectifier layer)")


class InjectSpec(InterventionBase):
    kind: Literal["inject"] = Field(description="plasticity injection (Nikishin et al. 2023): frozen head + new head "
                                                "- frozen copy of it")
    heads: list[str] = Field(min_length=1, description="head modules in the group, e.g. [q1, q2] (critic) or "
                                                       "[policy] (actor)")


InterventionSpec = Annotated[ResetSpec | ShrinkPerturbSpec | ReDoSpec | InjectSpec, Field(discriminator="kind")]
INTERVENTION_KINDS = ("reset", "shrink_perturb", "redo", "inject")


class EvalConfig(Section):
    every: int = Field(10_000, ge=0, description="evaluate every N agent steps (0: only at the end)")
    episodes: int = Field(10, ge=1, description="deterministic episodes per evaluation")


class MonitorConfig(Section):
    enabled: bool = Field(True, description="run the plasticity monitor")
    every: int = Field(10_000, ge=1, description="probe every N agent steps")
    batch_size: int = Field(256, ge=2, description="probe batch drawn from replay")
    tau: float = Field(0.025, ge=0, description="dormant threshold (Sokar et al. 2023)")
    delta: float = Field(0.01, gt=0, lt=1, description="srank threshold (Kumar et al. 2021)")
    groups: list[Literal["encoder", "actor", "critic", "critic_target"]] = Field(
        default_factory=lambda: ["encoder", "actor", "critic"],
        description="module groups to probe (agent.kind=sac has no encoder)")
    histograms_every: int = Field(0, ge=0, description="log per-unit histograms every K probes (0: never)")


class LoggingConfig(BaseLoggingConfig):
    print_episodes: bool = Field(True, description="print each finished episode's return")
    plots: bool = Field(True, description="write a PNG dashboard into the run folder at the end")


# agent.kind=sac: defaults of the keys a config leaves out, where SAC on state differs from DrQ on pixels.
SAC_DEFAULTS: dict[str, dict[str, Any]] = {
    "env": {"pixels": False},
    "agent": {"learning_rate": 3e-4, "tau": 0.005, "n_step": 1, "hidden_dim": 256},
    "replay_ratio": {"ratio": 1.0},
    "monitor": {"groups": ["actor", "critic"]},
}
# agent.kind=drqv2: DrQ-v2's orthogonal init unless the config says otherwise.
DRQV2_DEFAULTS: dict[str, dict[str, Any]] = {"agent": {"init": "orthogonal"}}
# DrQ-v2's keys, which the SAC-based agents have no use for, and the SAC key DrQ-v2 has none of.
DRQV2_ONLY = ("std_schedule", "stddev_clip", "num_expl_steps")
SAC_ONLY = ("init_temperature",)
# DrQ's keys that stock SB3 SAC has no use for: with agent.kind=sac they must keep these defaults.
DRQ_ONLY = ("feature_dim", "augment_pad", "buffer_device", "async_env_step", "precision", "cuda_graph", "compile",
            "fused_q_heads", "hidden_norm", "activation", "init", "l2_init", "nap")


class Config(Section):
    run: RunConfig = Field(default_factory=RunConfig)
    env: EnvConfig = Field(default_factory=EnvConfig)
    agent: AgentConfig = Field(default_factory=AgentConfig)
    replay_ratio: ReplayRatioConfig = Field(default_factory=ReplayRatioConfig)
    interventions: list[InterventionSpec] = Field(default_factory=list)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    @model_validator(mode="before")
    @classmethod
    def _agent_defaults(cls, data: Any) -> Any:
        """With ``agent.kind: sac`` (``drqv2``), fills ``SAC_DEFAULTS`` (``DRQV2_DEFAULTS``) into the keys the data
        leaves out."""
        kind = data["agent"].get("kind") if isinstance(data, dict) and isinstance(data.get("agent"), dict) else None
        chosen = {"sac": SAC_DEFAULTS, "drqv2": DRQV2_DEFAULTS}.get(kind)
        if chosen is None:
            return data
        data = dict(data)
        for section, defaults in chosen.items():
            if isinstance(data.get(section, {}), dict):
                data[section] = {**defaults, **(data.get(section) or {})}
        return data


def _kept_defaults(cfg: Config, keys: tuple[str, ...], what: str) -> list[str]:
    """A problem per key of ``keys`` that ``cfg.agent`` sets away from its default (``what``: whose option it is)."""
    problems = []
    for key in keys:
        value, default = getattr(cfg.agent, key), AgentConfig.model_fields[key].default
        if value != default:
            problems.append(f"agent.{key}: {value!r} is {what} that agent.kind={cfg.agent.kind} does not have; remove "
                            f"the key (default {default!r})")
    return problems


def agent_problems(cfg: Config) -> list[str]:
    """Keys that don't fit ``agent.kind`` (one line each, naming the key and the fix); [] if all fit."""
    a, problems = cfg.agent, []
    if a.kind in ("drq", "drqv2"):
        if not cfg.env.pixels:
            problems.append(f"env.pixels: false is not allowed with agent.kind={a.kind}, a pixel agent; set "
                            "env.pixels=true (or agent.kind=sac for state observations)")
        if a.kind == "drq":
            problems += _kept_defaults(cfg, DRQV2_ONLY, "a DrQ-v2 option")
        else:
            problems += _kept_defaults(cfg, SAC_ONLY, "a SAC option")
            try:
                from plasticrl.agents.drqv2.schedule import parse_std_schedule
                parse_std_schedule(a.std_schedule)
            except ValueError as exc:
                problems.append(f"agent.std_schedule: {exc}")
        return problems
    if cfg.env.pixels:
        problems.append("env.pixels: true is not allowed with agent.kind=sac, a state agent (MlpPolicy); set "
                        "env.pixels=false (or agent.kind=drq for pixels)")
    if a.n_step != 1:
        problems.append(f"agent.n_step: {a.n_step} is not supported by agent.kind=sac (stock SB3 SAC uses 1-step "
                        "returns); remove the key or set agent.n_step=1")
    problems += _kept_defaults(cfg, DRQ_ONLY, "a DrQ option") + _kept_defaults(cfg, DRQV2_ONLY, "a DrQ-v2 option")
    if "encoder" in cfg.monitor.groups:
        problems.append("monitor.groups: agent.kind=sac has no encoder (MlpPolicy on state); use actor, critic, "
                        "critic_target")
    return problems


def intervention_problems(cfg: Config) -> list[str]:
    """Interventions that name a group the agent lacks, or a metric trigger that the monitor does not produce."""
    groups = ["encoder", "actor", "critic"] if cfg.agent.kind != "sac" else ["actor", "critic"]  # drq, drqv2: 3
    problems = []
    for i, spec in enumerate(cfg.interventions):
        key = f"interventions.{i}"
        for group in spec.groups:
            if group not in groups:
                close = difflib.get_close_matches(group, groups, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                problems.append(f"{key}.groups: {group!r} is not a group of agent.kind={cfg.agent.kind}.{hint} "
                                f"Allowed: {', '.join(groups)}")
        if spec.when is None:
            continue
        metric = WHEN.match(spec.when).group(1)  # type: ignore[union-attr]  # checked by the schema
        parts = metric.split("/")
        if not cfg.monitor.enabled:
            problems.append(f"{key}.when: {metric!r} is a monitor metric, but monitor.enabled is false; set "
                            "monitor.enabled=true or drop the trigger")
        elif len(parts) < 3 or parts[0] != "plasticity" or parts[1] not in cfg.monitor.groups:
            problems.append(f"{key}.when: {metric!r} is not a metric the monitor logs; it logs "
                            f"plasticity/<group>/<metric> for monitor.groups ({', '.join(cfg.monitor.groups)}), e.g. "
                            "plasticity/critic/dormant_ratio, plasticity/critic/fau, plasticity/critic/srank")
    return problems


# agent.* values that the CPU ignores (the plain path): set on a run.device=cpu run they would do nothing.
CUDA_ONLY = {"compile": "torch.compile of the update", "precision": "bf16 autocast",
             "buffer_device": "replay frames in GPU memory", "cuda_graph": "the update as one CUDA graph"}


def device_problems(cfg: Config, device: str | None = None) -> list[str]:
    """A problem per CUDA-only ``agent`` key (``CUDA_ONLY``) set explicitly on a CPU run; ``device``: the device the
    run resolved to (default ``run.device``, so that ``auto`` is checked only once it is known). ``auto`` values are
    always fine (``plasticrl.lab.fast_path`` picks the plain path on the CPU)."""
    if (device or cfg.run.device) != "cpu" or cfg.agent.kind == "sac":  # sac: agent_problems refuses these keys
        return []
    a = cfg.agent
    cuda_values = {"compile": a.compile not in ("auto", False), "precision": a.precision == "bf16",
                   "buffer_device": a.buffer_device == "cuda", "cuda_graph": a.cuda_graph is True}
    return [f"agent.{key}: {getattr(a, key)!r} needs CUDA ({what}) but run.device is cpu; remove the key (auto: the "
            f"plain path on the CPU) or use run.device=cuda" for key, what in CUDA_ONLY.items() if cuda_values[key]]


def env_problems(cfg: Config) -> list[str]:
    """An unknown ``env.id`` (with close matches), a non-dmc env for a pixel agent, or no working MuJoCo GL backend
    for dmc pixels (naming the system package); [] if the env can be built."""
    from plasticrl import envs  # the registries import dm_control and metaworld: only when validating
    from plasticrl.envs import dmc

    try:
        envs.check_id(cfg.env.id)
    except ValueError as exc:
        return [f"env.id: {exc}"]
    except dmc.GLBackendError as exc:  # a MUJOCO_GL that dm_control can't import with
        return [f"env.id: {exc}"]
    if cfg.agent.kind in ("drq", "drqv2") and not cfg.env.id.startswith("dmc:"):
        return [f"env.id: {cfg.env.id!r} has no pixel observations; agent.kind={cfg.agent.kind} needs a "
                "dmc:<domain>-<task> env"]
    if cfg.env.pixels and cfg.env.id.startswith("dmc:"):
        problem = dmc.gl_problem()
        return [f"env.pixels: {problem}"] if problem else []
    return []


def config_problems(cfg: Config) -> list[str]:
    """Every cross-key problem of a schema-valid config: ``agent_problems``, ``intervention_problems``,
    ``device_problems``, ``env_problems``."""
    return agent_problems(cfg) + intervention_problems(cfg) + device_problems(cfg) + env_problems(cfg)


def validate(data: dict[str, Any], source: str = "config") -> Config:
    """A Config from plain data, or ConfigError listing, in one report, each bad key with its value and what is
    allowed and each cross-key problem (``config_problems``: agent kind, interventions, CUDA-only keys, env id)."""
    return validate_model(Config, data, source, checks=config_problems)


def load(path: str | Path, overrides: list[str] | None = None, overlays: list[str | Path] | None = None) -> Config:
    """Reads a YAML config, merges the overlay files over it in order, applies ``key.sub=value`` overrides in order,
    validates."""
    return validate(read_yaml(path, overrides, overlays=overlays), source=str(path))
