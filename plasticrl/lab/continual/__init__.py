"""``plasticrl continual``: an L2M Decision Transformer (or a baseline method) trained on a task sequence, scored
with Continual World's metrics (``plasticrl.continual_metrics``).

``run`` (the run: ``ContinualRun``, ``run_sequence``), ``methods`` (one class per ``sequence.method``), ``data``
(datasets, episodes, DMC references), ``evaluation`` (``Evaluator``, score kinds), ``checks`` (the config against
files and registries)."""

from plasticrl.lab.continual.checks import (
    RunInputs,
    check_continual,
    check_inputs,
    dt_config,
    load_pretrained,
    load_reference_curves,
    resolve_task_list,
)
from plasticrl.lab.continual.data import (
    check_dmc_episodes,
    data_seed,
    dmc_references,
    ensure_datasets,
    load_episodes,
    random_return,
)
from plasticrl.lab.continual.evaluation import RETURN_SCALES, Evaluator, eval_seeds, return_scale, score_kinds
from plasticrl.lab.continual.methods import METHODS, REGISTRY, Method, ewc_fisher, ewc_penalty
from plasticrl.lab.continual.run import ContinualRun, run_sequence

__all__ = ["METHODS", "REGISTRY", "RETURN_SCALES", "ContinualRun", "Evaluator", "Method", "RunInputs",
           "check_continual", "check_dmc_episodes", "check_inputs", "data_seed", "dmc_references", "dt_config",
           "ensure_datasets", "eval_seeds", "ewc_fisher", "ewc_penalty", "load_episodes", "load_pretrained",
           "load_reference_curves", "random_return", "resolve_task_list", "return_scale", "run_sequence",
           "score_kinds"]
