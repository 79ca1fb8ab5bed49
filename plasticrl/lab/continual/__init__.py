"""``plasticrl continual``: an L2M Decision Transformer (or a baseline method) trained on a task sequence, scored
with Continual World's metrics (``plasticrl.continual_metrics``)."""

from plasticrl.lab.continual.runner import (
                                            METHODS,
                                            Evaluator,
                                            check_continual,
                                            check_dmc_episodes,
                                            dmc_references,
                                            dt_config,
                                            ensure_datasets,
                                            ewc_fisher,
                                            ewc_penalty,
                                            load_episodes,
                                            load_pretrained,
                                            load_reference_curves,
                                            random_return,
                                            resolve_task_list,
                                            run_sequence,
                                            score_kinds,
)

__all__ = ["METHODS", "Evaluator", "check_continual", "check_dmc_episodes", "dmc_references", "dt_config",
           "ensure_datasets", "ewc_fisher", "ewc_penalty", "load_episodes", "load_pretrained",
           "load_reference_curves", "random_return", "resolve_task_list", "run_sequence", "score_kinds"]
