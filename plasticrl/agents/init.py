"""Weight initialisations the agents offer (torch only).

``orthogonal_init``: DrQ-v2's ``utils.weight_init`` (Yarats et al. 2021), which the Adaptive-RR paper keeps:
orthogonal weights with gain 1 for ``nn.Linear`` and gain sqrt(2) (ReLU's) for ``nn.Conv2d``/``nn.ConvTranspose2d``,
zero biases; other modules (LayerNorm, ...) keep their own init. Apply it with ``module.apply(orthogonal_init)``.
"""

from __future__ import annotations

from torch import nn

INITS = ("default", "orthogonal")  # agent.init: PyTorch's own layer init, or DrQ-v2's


def orthogonal_init(module: nn.Module) -> None:
    """In place, for one module (``module.apply`` walks the tree): orthogonal weights, zero bias."""
    if isinstance(module, nn.Linear):
        nn.init.orthogonal_(module.weight.data)
    elif isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.orthogonal_(module.weight.data, nn.init.calculate_gain("relu"))
    else:
        return
    if module.bias is not None:
        module.bias.data.fill_(0.0)


def layer_init_fn(init: str):
    """The function that re-initialises one layer in place as an agent built with ``init`` did (``INITS``): for
    interventions that reset layers. ``default``: the layer's own ``reset_parameters()``."""
    if init == "orthogonal":
        def reinit(module: nn.Module) -> None:
            if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
                orthogonal_init(module)
            elif hasattr(module, "reset_parameters"):
                module.reset_parameters()
        return reinit
    if init == "default":
        return lambda module: module.reset_parameters() if hasattr(module, "reset_parameters") else None
    raise ValueError(f"init {init!r}: allowed are {', '.join(map(repr, INITS))}")
