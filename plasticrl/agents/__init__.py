"""plasticrl's agents: ``DrQ`` (SAC + random shift with DrQ-v2's networks, an SB3 algorithm;
``plasticrl.agents.drq``), ``DrQV2`` (DrQ-v2 as its paper ran it: DDPG with scheduled noise;
``plasticrl.agents.drqv2``) and ``L2MAgent`` (L2M's Decision Transformer, torch only; ``plasticrl.agents.l2m``).

Names load on first use, so ``import plasticrl.agents.l2m`` does not import stable-baselines3.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {"DrQ": "plasticrl.agents.drq", "DrQPolicy": "plasticrl.agents.drq",
          "FrameReplayBuffer": "plasticrl.agents.drq", "L2MAgent": "plasticrl.agents.l2m",
          "DTConfig": "plasticrl.agents.l2m", "DrQV2": "plasticrl.agents.drqv2",
          "DrQV2Policy": "plasticrl.agents.drqv2"}

__all__ = ["DTConfig", "DrQ", "DrQPolicy", "DrQV2", "DrQV2Policy", "FrameReplayBuffer", "L2MAgent"]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'plasticrl.agents' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
