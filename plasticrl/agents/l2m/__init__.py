"""L2M's multi-domain Decision Transformer (Schmied et al., NeurIPS 2023) and its agent; torch only, no SB3."""

from plasticrl.agents.l2m.agent import EpisodeBatch, EpisodeData, L2MAgent
from plasticrl.agents.l2m.model import DecisionTransformer, DTConfig, bin_centers, discretize

__all__ = ["DTConfig", "DecisionTransformer", "EpisodeBatch", "EpisodeData", "L2MAgent", "bin_centers", "discretize"]
