"""What the train and continual config schemas share: sections, the run and W&B keys, YAML reading, errors.

pydantic does the type checking and coercion; this module turns its errors into one message per problem that
names the key path, the bad value, what is allowed, and a close match for a misspelt key.
"""

from __future__ import annotations

import copy
import difflib
import re
import types
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from plasticrl.lab.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class BaseRunConfig(Section):
    name: str = Field("run", min_length=1, description="experiment name; runs go to <out_dir>/<name>/")
    seed: int = Field(0, ge=0, description="seed of env, networks and sampling")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="training device; auto = cuda if available")
    out_dir: str = Field("runs", description="root folder of run folders")


class WandbConfig(Section):
    mode: Literal["offline", "online", "disabled"] = Field(
        "offline", description="offline: no account, no network (wandb sync later); disabled: no W&B files")
    project: str = Field("plasticrl", description="W&B project")
    entity: str | None = Field(None, description="W&B entity (team or user)")
    group: str | None = Field(None, description="default: run.name")
    tags: list[str] | None = Field(None, description="default: agent, env, replay-ratio kind")
    name: str | None = Field(None, description="default: <run.name>-s<seed>")
    job_type: str | None = Field(None, description="W&B job type (wandb.init's job_type; a sweep sets it to the arm)")


class BaseLoggingConfig(Section):
    wandb: WandbConfig = Field(default_factory=WandbConfig)


def wandb_settings(w: WandbConfig, run_name: str, seed: int, default_tags: list[str]) -> dict[str, Any]:
    """Keyword arguments of ``plasticrl.runlog.WandbSink`` with this project's defaults filled in: group = the run
    name (seeds group together), name = ``<run name>-s<seed>``, tags = ``default_tags``."""
    return {"mode": w.mode, "project": w.project, "entity": w.entity, "group": w.group or run_name,
            "tags": w.tags or default_tags, "name": w.name or f"{run_name}-s{seed}", "job_type": w.job_type}


def _step(annotation: Any, part: str | int) -> tuple[Any, bool]:
    """The annotation that ``part`` of an error location leads into, and whether ``part`` was a discriminated
    union's tag (pydantic puts the tag, e.g. ``redo`` of ``interventions.0.redo.tau``, into the location)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _step(get_args(annotation)[0], part)
    if origin in (list, tuple) and isinstance(part, int):
        return get_args(annotation)[0], False
    if origin in (Union, types.UnionType) and isinstance(part, str):
        for member in get_args(annotation):
            kind = getattr(member, "model_fields", {}).get("kind")
            if kind is not None and part in get_args(kind.annotation):
                return member, True
        return None, False
    if isinstance(annotation, type) and issubclass(annotation, BaseModel) and isinstance(part, str):
        field = annotation.model_fields.get(part)
        return (field.annotation if field is not None else None), False
    return None, False


def _walk(root: type[BaseModel], path: tuple[str | int, ...]) -> tuple[list[str], tuple[str | int, ...]]:
    """The keys allowed in the section at ``path`` ([] if it is not a section) and ``path`` without union tags."""
    annotation: Any = root
    shown: list[str | int] = []
    for part in path:
        annotation, is_tag = _step(annotation, part)
        if not is_tag:
            shown.append(part)
    fields = list(annotation.model_fields) if isinstance(annotation, type) and issubclass(annotation, BaseModel) \
        else []
    return fields, tuple(shown)


def _describe(root: type[BaseModel], error: dict[str, Any]) -> str:
    loc = tuple(error["loc"])
    value = error.get("input")
    allowed, parent = _walk(root, loc[:-1])
    key = ".".join(str(p) for p in _walk(root, loc)[1]) or "config"
    if error["type"] == "extra_forbidden":
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f" Did you mean '{'.'.join(str(p) for p in parent + (close[0],))}'?" if close else ""
        return f"{key}: unknown key.{hint} Allowed here: {', '.join(allowed)}."
    return f"{key}: {value!r} is not allowed: {error['msg']}."


def check_problems(problems: list[str], source: str = "config") -> None:
    """ConfigError listing ``problems`` (one line each) under ``source``; nothing when there are none."""
    if problems:
        raise ConfigError(f"{source} is invalid:\n  " + "\n  ".join(problems))


def _without(data: dict[str, Any], path: tuple[str | int, ...]) -> str | None:
    """Removes the key at ``path`` from nested dict ``data`` (a list is removed whole: its items shift); the dotted
    path removed, or None when ``path`` is not there."""
    keys: list[str] = []
    for part in path:
        if not isinstance(part, str):
            break
        keys.append(part)
    node: Any = data
    for key in keys[:-1]:
        node = node.get(key) if isinstance(node, dict) else None
    if not keys or not isinstance(node, dict) or keys[-1] not in node:
        return None
    del node[keys[-1]]
    return ".".join(keys)


def _mentions(problem: str, key: str) -> bool:
    return re.search(rf"(?<![\w.]){re.escape(key)}(?!\w)", problem) is not None


def _checks_without_bad_keys(root: type[M], data: dict[str, Any], errors: list[dict[str, Any]],
                             checks: Callable[[M], list[str]]) -> list[str]:
    """``checks`` of the config that ``data`` is without the keys pydantic refused (their defaults instead), less the
    problems that name a removed key (they would be about its default); [] when that config does not validate."""
    kept = copy.deepcopy(data)
    removed = [_without(kept, _walk(root, tuple(e["loc"]))[1]) for e in errors]
    if None in removed:
        return []
    try:
        cfg = root.model_validate(kept)
    except ValidationError:
        return []
    return [p for p in checks(cfg) if not any(_mentions(p, key) for key in removed if key)]


def validate_model(root: type[M], data: dict[str, Any], source: str = "config",
                   checks: Callable[[M], list[str]] | None = None) -> M:
    """``root`` (a config schema) from plain data, or ConfigError listing each bad key with its value and what is
    allowed (one line per key and message: unions report each member) and each problem ``checks`` (cross-key checks
    of a valid config) finds; with bad keys, ``checks`` runs on the config without them, so that one report lists
    both."""
    try:
        cfg = root.model_validate(data)
    except ValidationError as exc:
        lines = list(dict.fromkeys(_describe(root, e) for e in exc.errors()))
        if checks is not None and isinstance(data, dict):
            lines += _checks_without_bad_keys(root, data, exc.errors(), checks)
        raise ConfigError(f"{source} is invalid:\n  " + "\n  ".join(lines)) from None
    check_problems(checks(cfg) if checks is not None else [], source)
    return cfg


class _Loader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (SafeLoader keeps the last, dropping the first
    silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                twice = key in seen
            except TypeError:  # an unhashable key: SafeLoader's own error follows
                continue
            if twice:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice (first on line {seen[key] + 1}): the second would silently "
                                "replace the first; merge them into one", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error in one line: what is wrong and where (line, column)."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        return f"{exc.problem}{where}"
    return str(exc).replace("\n", " ")


def parse_yaml(text: str) -> Any:
    """The value of YAML ``text`` (``yaml.safe_load``, but a key given twice is an error); yaml.YAMLError
    otherwise."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


EXAMPLE_OVERRIDE = "--set run.seed=1, --set agent.learning_rate=3e-4, --set 'monitor.groups=[actor, critic]'"


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Applies ``key.sub=value`` to nested dict ``data``; value parsed as YAML (``1e-4``, ``true``, ``[a, b]``).
    ConfigError (one line naming the override and the form) for a missing ``=``, an empty key part, a value that is
    not YAML, or a key inside a value or list."""
    form = f"expected key.sub=value, e.g. {EXAMPLE_OVERRIDE}"
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: no '='; {form}")
    key, raw = assignment.split("=", 1)
    parts = [part.strip() for part in key.split(".")]
    if not all(parts):
        raise ConfigError(f"--set {assignment!r}: the key {key.strip()!r} is empty or has an empty part; {form}")
    try:
        value = parse_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {assignment!r}: the value {raw!r} is not valid YAML ({_yaml_problem(exc)}); quote "
                          f"the whole override for the shell, e.g. --set 'agent.learning_rate=1e-4' or --set "
                          f"'monitor.groups=[actor, critic]'") from None
    if any(part.isdigit() for part in parts):
        whole = ".".join(parts[:[part.isdigit() for part in parts].index(True)])
        raise ConfigError(f"--set {assignment!r}: list items can't be set one at a time; set the whole list, e.g. "
                          f"--set '{whole}=[...]', or edit the YAML file")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if isinstance(child, list):
            whole = ".".join(parts[:i + 1])
            raise ConfigError(f"--set {assignment!r}: {whole!r} is a list, not a section; set the whole list, e.g. "
                              f"--set '{whole}=[...]', or edit the YAML file")
        if not isinstance(child, dict):
            raise ConfigError(f"--set {assignment!r}: {'.'.join(parts[:i + 1])!r} is a value ({child!r}), not a "
                              "section")
        node = child
    node[parts[-1]] = value


BASE = "${base}"  # in an overlay's string value: the value it replaces, e.g. run.name: ${base}_rr2


def _read_mapping(path: Path, sections: str, examples: str) -> dict[str, Any]:
    if path.is_dir():
        raise ConfigError(f"config file {str(path)!r} is a folder; give a YAML file in it, e.g. "
                          f"{path / 'config.yaml'}{examples}")
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found; the configs/ folder holds examples{examples}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not a text file (not UTF-8); a config is a YAML text file of sections "
                          f"({sections})") from None
    except OSError as exc:
        raise ConfigError(f"{path} can't be read: {exc.strerror}") from None
    try:
        data = parse_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {_yaml_problem(exc)}") from None
    if data is None:
        raise ConfigError(f"{path} is empty (or only comments): a config holds a mapping of sections ({sections}); "
                          f"an empty one would run every default, so it is refused (the configs/ folder holds "
                          f"examples{examples})")
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections ({sections}), got {type(data).__name__}")
    return data


def merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """``overlay`` deep-merged over ``base`` (a new dict): mappings merge key by key, any other value replaces the
    base's; in a string, ``${base}`` stands for the string it replaces (``run.name: ${base}_rr2``)."""
    out = dict(base)
    for key, value in overlay.items():
        old = out.get(key)
        if isinstance(value, dict):
            out[key] = merge(old if isinstance(old, dict) else {}, value)
        elif isinstance(value, str) and BASE in value:
            out[key] = value.replace(BASE, str(old) if old is not None else "")
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path, overrides: list[str] | None = None, sections: str = "run, env, agent, ...",
              examples: str = "", overlays: list[str | Path] | None = None) -> dict[str, Any]:
    """The mapping in a YAML config file, with each overlay file deep-merged over it in order (``merge``), then the
    ``key.sub=value`` overrides applied in order; ConfigError otherwise."""
    data = _read_mapping(Path(path), sections, examples)
    for overlay in overlays or []:
        data = merge(data, _read_mapping(Path(overlay), sections, examples))
    for assignment in overrides or []:
        apply_override(data, assignment)
    return data


def dump(config: BaseModel) -> str:
    """The resolved config as YAML (every key, defaults included)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
