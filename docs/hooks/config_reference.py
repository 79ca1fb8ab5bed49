"""mkdocs hook: the configuration reference, rendered from the pydantic schemas at build time.

``docs/configuration.md`` holds the marker ``<!-- config-reference -->``; ``on_page_markdown`` replaces it with one
table per schema (``plasticrl.lab.config.train.Config``, ``plasticrl.lab.config.continual.ContinualConfig``): every
leaf key as ``section.key``, its type, its default and the description of its ``Field``. Nothing is written by hand,
so the page cannot fall behind the code. ``python docs/hooks/config_reference.py`` prints the same markdown.
"""

from __future__ import annotations

import importlib
import json
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

MARKER = "<!-- config-reference -->"
# (title, module, class, command): the schemas the reference documents, in page order
SCHEMAS = (
    ("Train config", "plasticrl.lab.config.train", "Config", "plasticrl train"),
    ("Continual config", "plasticrl.lab.config.continual", "ContinualConfig", "plasticrl continual"),
)
# constraint attributes of pydantic's annotated-types metadata, as the page writes them
_BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="), ("min_length", "min length"))


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _tagged_members(annotation: Any) -> list[type[BaseModel]]:
    """The member schemas of a list of a kind-tagged union (``interventions``), else []."""
    if typing.get_origin(annotation) is not list:
        return []
    (item,) = typing.get_args(annotation)
    if typing.get_origin(item) is typing.Annotated:
        item = typing.get_args(item)[0]
    members = [a for a in typing.get_args(item) if _is_section(a)]
    return members if members and all("kind" in m.model_fields for m in members) else []


def _kind(member: type[BaseModel]) -> str:
    return typing.get_args(member.model_fields["kind"].annotation)[0]


def leaf_fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, FieldInfo]]:
    """``(dotted key, field)`` of every leaf field of a schema, in declaration order (``agent.fused_q_heads``). A
    list of kind-tagged sections (``interventions``) gives ``interventions[].kind``, the keys every kind has, then
    each kind's own keys as ``interventions[kind=redo].tau``."""
    out: list[tuple[str, FieldInfo]] = []
    for name, field in model.model_fields.items():
        members = _tagged_members(field.annotation)
        if members:
            shared = [k for k in members[0].model_fields if all(k in m.model_fields for m in members)]
            kinds = FieldInfo(annotation=typing.Literal[tuple(_kind(m) for m in members)], default=PydanticUndefined,
                              description="; ".join(f"{_kind(m)}: {m.model_fields['kind'].description}"
                                                    for m in members))
            out.append((f"{prefix}{name}[].kind", kinds))
            out += [(f"{prefix}{name}[].{k}", members[0].model_fields[k]) for k in shared if k != "kind"]
            for m in members:
                out += [(f"{prefix}{name}[kind={_kind(m)}].{k}", f) for k, f in m.model_fields.items()
                        if k not in shared]
        elif _is_section(field.annotation):
            out += leaf_fields(field.annotation, f"{prefix}{name}.")
        else:
            out.append((f"{prefix}{name}", field))
    return out


def type_name(annotation: Any) -> str:
    """A short, readable type: ``int``, ``str | None``, ``'auto' | 'cpu' | 'cuda'``, ``list[str]``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "None"
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(type_name(a) for a in args)}]"
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))


def default_value(field: FieldInfo) -> Any:
    """The field's default (``default_factory`` called), or ``PydanticUndefined`` for a required field."""
    if field.default_factory is not None:
        return field.default_factory()
    return field.default


def _json(value: Any) -> str:
    if value is PydanticUndefined:
        return "required"
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    return json.dumps(value) if not isinstance(value, str) else value


def constraints(field: FieldInfo) -> str:
    """``> 0, <= 1`` from the field's ``gt``/``ge``/``lt``/``le``/``min_length``; '' if it has none."""
    parts = []
    for item in field.metadata:
        for attr, sign in _BOUNDS:
            value = getattr(item, attr, None)
            if value is not None:
                parts.append(f"{sign} {value}")
    return ", ".join(parts)


def _cell(text: str) -> str:
    """Table-cell safe: no pipes, no newlines, and ``<name>`` outside code spans shown as text, not an HTML tag."""
    parts = text.replace("|", "\\|").replace("\n", " ").split("`")
    return "`".join(p if i % 2 else p.replace("<", "&lt;").replace(">", "&gt;") for i, p in enumerate(parts))


def render_schema(model: type[BaseModel], overrides: dict[str, dict[str, Any]] | None = None) -> str:
    """A markdown table of every key of ``model``: ``| `section.key` | type | default | description |``.

    ``overrides`` (e.g. ``SAC_DEFAULTS`` of the train schema: section -> key -> default) adds those alternative
    defaults to the default column, written ``(sac: ...)``.
    """
    lines = ["| key | type | default | description |", "| --- | --- | --- | --- |"]
    for key, field in leaf_fields(model):
        section, _, name = key.rpartition(".")
        default = f"`{_json(default_value(field))}`"
        alt = (overrides or {}).get(section.split(".")[0], {})
        if "." not in section and name in alt:
            default += f" (sac: `{_json(alt[name])}`)"
        description = field.description or ""
        bounds = constraints(field)
        if bounds:
            description = f"{description} ({bounds})" if description else f"({bounds})"
        lines.append(f"| `{key}` | {_cell(type_name(field.annotation))} | {_cell(default)} | {_cell(description)} |")
    return "\n".join(lines) + "\n"


def render_reference() -> str:
    """The whole generated part of the configuration page: one section and table per schema."""
    parts = []
    for title, module, name, command in SCHEMAS:
        mod = importlib.import_module(module)
        model = getattr(mod, name)
        sections = ", ".join(f"`{s}`" for s in model.model_fields)
        overrides = getattr(mod, "SAC_DEFAULTS", None)
        note = (" With `agent.kind: sac`, keys a config leaves out take the defaults marked *sac*."
                if overrides else "")
        parts.append(f"### {title}\n\n`{command}` reads `{module}.{name}`; sections {sections}.{note}\n\n"
                     f"{render_schema(model, overrides)}")
    return "\n".join(parts)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """mkdocs event: put the generated reference where the page holds ``MARKER``."""
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, render_reference())


if __name__ == "__main__":
    print(render_reference())
