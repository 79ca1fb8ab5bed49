"""The README documents every config key (train and continual configs) and every CLI command."""

import re
from pathlib import Path

from pydantic import BaseModel

from plasticrl.lab.cli import parser as cli_parser
from plasticrl.lab.config.train import Config
from plasticrl.lab.config.continual import ContinualConfig

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def key_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted paths of every leaf field of a config model, e.g. ``agent.fused_q_heads``."""
    paths = []
    for name, field in model.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            paths += key_paths(sub, f"{prefix}{name}.")
        else:
            paths.append(f"{prefix}{name}")
    return paths


def test_every_config_key_has_a_readme_row_and_every_row_a_key():
    rows = set(re.findall(r"^\| `([a-z_.0-9]+)` \|", README, flags=re.MULTILINE))
    keys = key_paths(Config) + key_paths(ContinualConfig)
    missing = [k for k in keys if k not in rows]
    assert not missing, f"config keys without a README table row: {missing}"
    sections = {k.split(".")[0] for k in keys}
    stale = [r for r in rows if r.split(".")[0] in sections and "." in r and r not in keys]
    assert not stale, f"README rows for keys the configs no longer have: {stale}"


def test_every_cli_command_is_in_the_readme():
    parser = cli_parser()
    (sub,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    missing = [c for c in sub.choices if f"`plasticrl {c}" not in README]
    assert not missing, f"commands without README docs: {missing}"
