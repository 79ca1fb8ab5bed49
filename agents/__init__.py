"""SB3 agents of plasticrl: DrQ (SAC + random shift, DrQ-v2 networks) and its frame-once replay buffer."""

from agents.drq import DrQ, DrQPolicy
from agents.l2m import L2MAgent as L2MAgent
from agents.replay import FrameReplayBuffer

__all__ = ["DrQ", "DrQPolicy", "FrameReplayBuffer"]
