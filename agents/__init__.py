"""plasticrl's agents: ``DrQ`` (SAC + random shift with DrQ-v2's networks, an SB3 algorithm; ``agents.drq``) and
``L2MAgent`` (L2M's Decision Transformer, torch only; ``agents.l2m``).

Names load on first use, so ``import agents.l2m`` does not import stable-baselines3.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {"DrQ": "agents.drq", "DrQPolicy": "agents.drq", "FrameReplayBuffer": "agents.drq",
          "L2MAgent": "agents.l2m", "DTConfig": "agents.l2m"}

__all__ = ["DTConfig", "DrQ", "DrQPolicy", "FrameReplayBuffer", "L2MAgent"]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'agents' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
