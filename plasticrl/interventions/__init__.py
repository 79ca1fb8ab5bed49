"""Interventions on plasticity (torch only): mechanisms that rewrite a network's weights in the middle of training,
and the schedule that says when they fire.

- ``Reset`` (Nikishin et al. 2022): re-initialise chosen layers.
- ``ShrinkPerturb`` (Ash & Adams 2020; BBF): interpolate chosen layers towards a fresh init or the initial weights.
- ``ReDo`` (Sokar et al. 2023): recycle dormant units.
- ``Inject`` / ``PlasticityInjection`` (Nikishin et al. 2023): freeze a head and add a fresh one, output unchanged.
- ``Schedule``, ``Trigger``, ``ScheduledIntervention``: when they fire.

Each mechanism has ``kind`` and ``apply(target, forward_fn) -> Outcome`` (``plasticrl.interventions.base``); all
but injection write in place, so captured CUDA graphs stay valid. Fresh weights are drawn from the global torch RNG.
"""

from __future__ import annotations

from plasticrl.interventions.base import (
    WEIGHT_LAYERS,
    Changes,
    Group,
    Intervention,
    Outcome,
    Target,
    finish,
    fresh_layer,
    fresh_module,
    parameters_of,
    reset_optimizer_state,
    select_layers,
    sync_targets,
)
from plasticrl.interventions.injection import Inject, InjectedHead, PlasticityInjection
from plasticrl.interventions.redo import ReDo
from plasticrl.interventions.reset import Reset
from plasticrl.interventions.schedule import Schedule, ScheduledIntervention, Trigger
from plasticrl.interventions.shrink_perturb import ShrinkPerturb

__all__ = [
    "WEIGHT_LAYERS", "Changes", "Group", "Inject", "InjectedHead", "Intervention", "Outcome", "PlasticityInjection",
    "ReDo", "Reset", "Schedule", "ScheduledIntervention", "ShrinkPerturb", "Target", "Trigger", "finish",
    "fresh_layer", "fresh_module", "parameters_of", "reset_optimizer_state", "select_layers", "sync_targets",
]
