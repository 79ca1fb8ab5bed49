"""DrQ: SAC from pixels with random-shift augmentation and DrQ-v2's networks, as stable-baselines3 classes."""

from plasticrl.agents.accel import COMPILE_MODES
from plasticrl.agents.drq.algorithm import STAT_KEYS, DrQ, DrQPolicy
from plasticrl.agents.drq.networks import Actor, Critic, Encoder, mlp, trunk
from plasticrl.agents.drq.replay import FrameReplayBuffer, PixelBatch

__all__ = ["COMPILE_MODES", "STAT_KEYS", "Actor", "Critic", "DrQ", "DrQPolicy", "Encoder", "FrameReplayBuffer",
           "PixelBatch", "mlp", "trunk"]
