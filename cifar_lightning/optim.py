"""Optimizer factories beyond torch.optim's own, called (as partials) with the model's named parameters."""

from collections.abc import Iterable

import torch


def decoupled_sgd(
    named_parameters: Iterable[tuple[str, torch.nn.Parameter]],
    lr: float,
    weight_decay: float,
    momentum: float,
    batch_size: int,
    nesterov: bool = True,
    norm_bias_lr_scale: float = 64.0,
) -> torch.optim.SGD:
    """Nesterov SGD in airbench's units. `lr` and `weight_decay` are per 1024 examples of a summed loss and
    independent of momentum; weight decay is decoupled (its product with the learning rate is what counts).
    BatchNorm biases (parameters named *norm*) learn `norm_bias_lr_scale` times faster with the same decay."""
    kilostep_scale = 1024 * (1 + 1 / (1 - momentum))
    torch_lr = lr / kilostep_scale
    decay = weight_decay * batch_size / kilostep_scale  # lr x weight decay, kept equal across groups
    trainable = [(name, p) for name, p in named_parameters if p.requires_grad]
    norm_biases = [p for name, p in trainable if "norm" in name]
    others = [p for name, p in trainable if "norm" not in name]
    bias_lr = torch_lr * norm_bias_lr_scale
    groups = [
        dict(params=norm_biases, lr=bias_lr, weight_decay=decay / bias_lr),
        dict(params=others, lr=torch_lr, weight_decay=decay / torch_lr),
    ]
    return torch.optim.SGD([g for g in groups if g["params"]], momentum=momentum, nesterov=nesterov)
