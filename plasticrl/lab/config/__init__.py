"""Config schemas of the lab: ``train`` (``plasticrl train``) and ``continual`` (``plasticrl continual``) on one
shared ``base`` (sections, run and W&B keys, YAML reading and overlays, one-line errors)."""

from plasticrl.lab.config.base import ConfigError, dump

__all__ = ["ConfigError", "dump"]
