"""The docs document every config key (the generated reference) and every CLI command and option; the README stays
short; no page mentions how or where measurements were made beyond what they need."""

import argparse
import importlib.util
import re
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from plasticrl.lab.cli import parser as cli_parser
from plasticrl.lab.config.continual import ContinualConfig
from plasticrl.lab.config.train import Config

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
DOCS = ROOT / "docs"
ROW = re.compile(r"^\| `([a-z_.0-9\[\]=]+)` \|", flags=re.MULTILINE)


def _hook():
    """docs/hooks/config_reference.py, imported from its path (it is an mkdocs hook, not a package module)."""
    spec = importlib.util.spec_from_file_location("config_reference", DOCS / "hooks" / "config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HOOK = _hook()


def _union_members(annotation) -> list[type[BaseModel]]:
    """The schemas of a ``list[Annotated[A | B | ..., discriminator]]`` field (``interventions``), else []."""
    if typing.get_origin(annotation) is not list:
        return []
    item = typing.get_args(annotation)[0]
    if typing.get_origin(item) is typing.Annotated:
        item = typing.get_args(item)[0]
    return [m for m in typing.get_args(item) if isinstance(m, type) and issubclass(m, BaseModel)]


def key_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted paths of every leaf field of a config model, e.g. ``agent.fused_q_heads``; a list of kind-tagged
    sections gives ``interventions[].kind``, the keys all kinds share, then ``interventions[kind=redo].tau``."""
    paths = []
    for name, field in model.model_fields.items():
        sub = field.annotation
        members = _union_members(sub)
        if members:
            shared = [k for k in members[0].model_fields if all(k in m.model_fields for m in members)]
            paths += [f"{prefix}{name}[].kind"] + [f"{prefix}{name}[].{k}" for k in shared if k != "kind"]
            for m in members:
                kind = typing.get_args(m.model_fields["kind"].annotation)[0]
                paths += [f"{prefix}{name}[kind={kind}].{k}" for k in m.model_fields if k not in shared]
        elif isinstance(sub, type) and issubclass(sub, BaseModel):
            paths += key_paths(sub, f"{prefix}{name}.")
        else:
            paths.append(f"{prefix}{name}")
    return paths


def _rendered_page() -> str:
    """docs/configuration.md as mkdocs serves it: the hook's marker replaced by the generated reference."""
    markdown = (DOCS / "configuration.md").read_text()
    assert HOOK.MARKER in markdown, "docs/configuration.md lost the marker the config reference is generated into"
    return HOOK.on_page_markdown(markdown, page=None, config=None, files=None)


def _pages() -> dict[str, str]:
    """The README and every hand-written docs page (markdown), by path."""
    pages = {"README.md": README}
    pages.update({str(p.relative_to(ROOT)): p.read_text() for p in sorted(DOCS.rglob("*.md"))})
    return pages


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in cli_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


@pytest.mark.parametrize("model", [Config, ContinualConfig], ids=["train", "continual"])
def test_every_config_key_has_a_reference_row_and_every_row_a_key(model):
    rows = ROW.findall(HOOK.render_schema(model))
    keys = key_paths(model)
    assert rows == keys, "the generated table should hold exactly the schema's keys, in order"
    page = _rendered_page()
    missing = [k for k in keys if f"| `{k}` |" not in page]
    assert not missing, f"config keys without a row on the configuration page: {missing}"


def test_every_field_has_a_description():
    undocumented = [k for k, field in HOOK.leaf_fields(Config) + HOOK.leaf_fields(ContinualConfig)
                    if not field.description]
    assert not undocumented, f"config keys with no description (Field(description=...)): {undocumented}"


def test_no_rows_for_removed_keys():
    keys = set(key_paths(Config)) | set(key_paths(ContinualConfig))
    sections = {k.split(".")[0] for k in keys}
    for path, text in _pages().items():
        stale = [r for r in ROW.findall(text) if r.split(".")[0] in sections and "." in r and r not in keys]
        assert not stale, f"{path}: table rows for keys the configs no longer have: {stale}"


def test_every_cli_command_and_option_is_documented():
    cli = (DOCS / "cli.md").read_text()
    for name, sub in _subcommands().items():
        assert f"`plasticrl {name}" in cli, f"command without docs/cli.md docs: {name}"
        assert f"## plasticrl {name}" in cli, f"docs/cli.md has no section for {name}"
        section = cli.split(f"## plasticrl {name}", 1)[1].split("\n## ", 1)[0]
        options = [o for a in sub._actions for o in a.option_strings if o.startswith("--") and o != "--help"]
        missing = [o for o in options if o not in section]
        assert not missing, f"plasticrl {name}: options missing from its docs/cli.md section: {missing}"


def test_readme_is_short_and_links_every_docs_page():
    assert len(README.encode()) <= 16_000, f"README.md is {len(README.encode())} bytes; the limit is 16,000"
    for page in sorted(DOCS.glob("*.md")):
        if page.name != "index.md":
            assert f"docs/{page.name}" in README, f"README.md does not link docs/{page.name}"


def test_every_config_path_in_the_docs_exists():
    for path, text in _pages().items():
        for ref in sorted(set(re.findall(r"configs/[\w./-]+\.yaml", text))):
            assert (ROOT / ref).is_file(), f"{path} names {ref}, which does not exist"


# words about how figures were made, not about plasticrl; joined at run time so this file does not contain them
OFF_TOPIC = [" ".join(parts) for parts in (("session",), ("device", "tool"))] + [
    f"nvidia-h{n}00-x" for n in (1, 2)]


@pytest.mark.parametrize("word", OFF_TOPIC)
def test_docs_say_nothing_about_how_measurements_were_run(word):
    texts = dict(_pages())
    texts.update({str(p.relative_to(ROOT)): p.read_text() for p in DOCS.rglob("*")
                  if p.is_file() and p.suffix in {".py", ".yaml", ".yml"}})
    texts["docs/configuration.md (rendered)"] = _rendered_page()
    found = [path for path, text in texts.items() if word in text.lower()]
    assert not found, f"{word!r} appears in {found}"
