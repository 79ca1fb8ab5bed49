"""DrQ-v2 (Yarats et al. 2021): DDPG from pixels with random-shift augmentation and scheduled exploration noise, as
stable-baselines3 classes on top of ``plasticrl.agents.drq``."""

from plasticrl.agents.drqv2.algorithm import STAT_KEYS, DrQV2, DrQV2Policy
from plasticrl.agents.drqv2.networks import DeterministicActor, truncated_normal_sample
from plasticrl.agents.drqv2.schedule import StdSchedule, parse_std_schedule

__all__ = ["STAT_KEYS", "DeterministicActor", "DrQV2", "DrQV2Policy", "StdSchedule", "parse_std_schedule",
           "truncated_normal_sample"]
