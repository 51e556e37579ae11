"""Optimizer factories beyond torch.optim's own, called (as partials) with the model's named parameters."""

from collections.abc import Callable, Iterable, Sequence
from typing import Annotated

import torch
from annotated_types import Ge


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


# The quintic Newton-Schulz coefficients of Jordan et al.'s Muon: chosen for the steepest slope at zero, so 3 steps
# bring every singular value into roughly [0.5, 1.5] rather than exactly to 1, which trains as well as U V^T.
NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)


def orthogonalize(
    matrix: torch.Tensor, steps: int = 3, eps: float = 1e-7, coefficients: Sequence[float] = NEWTON_SCHULZ
) -> torch.Tensor:
    """An approximation of U V^T for matrix = U S V^T, by `steps` Newton-Schulz iterations x <- a x + (b G + c G^2) x,
    G = x x^T, with `coefficients` (a, b, c) (float32 on the CPU, bfloat16 on a GPU, where it is a few matrix
    products at tensor-core speed). `matrix` is (m, n) or a batch (..., m, n) of matrices orthogonalised each on its
    own, in one batched product per iteration."""
    a, b, c = coefficients
    x = matrix.to(torch.bfloat16 if matrix.is_cuda else torch.float32)
    # the largest singular value at most 1, where the iteration converges
    x = x / (torch.linalg.matrix_norm(x, keepdim=True) + eps)
    tall = matrix.size(-2) > matrix.size(-1)
    if tall:  # iterate on the smaller Gram matrix
        x = x.mT
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.mT if tall else x).to(matrix.dtype)


class Muon(torch.optim.Optimizer):
    """Muon for the groups marked `muon=True` (conv filters: each output filter's weights flattened into a row),
    Nesterov SGD with weight decay for the rest (biases, the head), in one optimizer so that Lightning's automatic
    optimization and one schedule drive both.

    Muon group: momentum buffer -> Nesterov update -> orthogonalised by `ns_steps` Newton-Schulz iterations with
    `ns_coefficients` (every direction of the update gets about the same size) -> step of `lr` -> multiplied by
    1 - lr x weight_decay (decoupled; hiverge/cifar10-speedrun decays the filters so). Before the steps 1,
    1 + norm_every, 1 + 2 norm_every, ... the filters are rescaled to norm sqrt(out channels): with BatchNorm after
    them only their direction matters and `lr` sets how far it turns. With `norm_every_end` the interval grows
    linearly from `norm_every` at the start to `norm_every_end` at step `total_steps`, and the filters are rescaled
    once the interval has passed since the last time or the start (hiverge: 2 to 17; often while the filters move
    fast, rarely at the end). Filters of the same shape are orthogonalised together, one batched matrix product per
    iteration (hiverge batches all filter banks).
    SGD groups: torch.optim.SGD's Nesterov rule, with the group's own lr and weight_decay.

    Raises:
        ValueError: `norm_every_end` without `total_steps`."""

    def __init__(
        self,
        params: Iterable,
        lr: float,
        momentum: float,
        nesterov: bool = True,
        ns_steps: int = 3,
        weight_decay: float = 0.0,
        muon: bool = True,
        norm_every: int = 1,
        norm_every_end: int | None = None,
        total_steps: int | None = None,
        ns_coefficients: Sequence[float] = NEWTON_SCHULZ,
    ):
        if norm_every_end is not None and total_steps is None:
            raise ValueError("a growing renormalisation interval (norm_every_end) needs the run's total_steps")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            nesterov=nesterov,
            ns_steps=ns_steps,
            weight_decay=weight_decay,
            muon=muon,
            norm_every=norm_every,
            norm_every_end=norm_every_end,
            total_steps=total_steps,
            ns_coefficients=tuple(ns_coefficients),
        )
        super().__init__(params, defaults)

    # torch's stub overloads step on a closure returning float; Lightning's closures return the loss tensor
    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            updates = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                grad = p.grad if group["muon"] else p.grad.add(p, alpha=group["weight_decay"])
                buffer = state.setdefault("momentum_buffer", torch.zeros_like(p))
                buffer.mul_(group["momentum"]).add_(grad)
                updates[p] = grad.add(buffer, alpha=group["momentum"]) if group["nesterov"] else buffer
                if group["muon"]:
                    # the step counts in the state, as torch's optimizers keep them, so that a resumed run goes on
                    step = state["step"] = state.get("step", 0) + 1
                    if self._renormalises(group, state, step):
                        p.mul_(len(p) ** 0.5 / p.norm().clamp_min(1e-12))
            if group["muon"]:
                updates = self._orthogonalized(updates, group["ns_steps"], group["ns_coefficients"])
            for p, update in updates.items():
                p.add_(update, alpha=-group["lr"])
                if group["muon"] and group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
        return loss

    @staticmethod
    def _renormalises(group: dict, state: dict, step: int) -> bool:
        """Whether the filter whose `state` this is is renormalised before optimizer step `step` (from 1). A fixed
        interval: steps 1, 1 + norm_every, ... (airbench94_muon: every step). A growing one (hiverge): once the
        interval at this step has passed since the last time or the start, remembered in the state."""
        start, end = group["norm_every"], group["norm_every_end"]
        if end is None:
            return (step - 1) % start == 0
        if step - state.get("normalised_at", 0) < start + int((end - start) * step / group["total_steps"]):
            return False
        state["normalised_at"] = step
        return True

    @staticmethod
    def _orthogonalized(updates: dict, ns_steps: int, coefficients: Sequence[float]) -> dict:
        """Each filter bank's update (out, in, k, k) orthogonalised as an (out, in*k*k) matrix, those of one shape
        stacked into one batch."""
        by_shape: dict[torch.Size, list] = {}
        for p in updates:
            by_shape.setdefault(p.shape, []).append(p)
        out = {}
        for shape, params in by_shape.items():
            stacked = torch.stack([updates[p].reshape(shape[0], -1) for p in params])
            for p, update in zip(params, orthogonalize(stacked, ns_steps, coefficients=coefficients)):
                out[p] = update.view(shape)
        return out


def muon_sgd(
    named_parameters: Iterable[tuple[str, torch.nn.Parameter]],
    lr: float,
    momentum: float,
    bias_lr: float,
    head_lr: float,
    sgd_momentum: float,
    weight_decay: float,
    batch_size: int,
    ns_steps: int = 3,
    whiten_bias_decay: float = 1.0,
    norm_every: Annotated[int, Ge(1), "must be a whole number of steps, at least 1"] = 1,
    norm_every_end: Annotated[int, Ge(1)] | None = None,
    total_steps: Annotated[int, Ge(1)] | None = None,
    ns_coefficients: tuple[float, float, float] = NEWTON_SCHULZ,
    decay_filters: bool = False,
) -> Muon:
    """airbench94_muon's optimizer: Muon on the trainable conv filters; Nesterov SGD on the BatchNorm biases and
    the whitening bias (`bias_lr`) and on the head (`head_lr`). Weight decay (per example of a summed loss, times
    `batch_size`) is applied as lr x weight_decay per step in every SGD group, and with `decay_filters` to the
    filters as Muon's lr x weight_decay x batch_size (hiverge/cifar10-speedrun's filter decay). `whiten_bias_decay`
    is the share of the run over which the whitening bias's learning rate falls to zero (schedules.linear_to_zero
    reads it). `norm_every`, `norm_every_end` (with the run's `total_steps`), `ns_steps`, `ns_coefficients`: see
    Muon. Raises ValueError for `norm_every_end` without `total_steps`."""
    trainable = [(name, p) for name, p in named_parameters if p.requires_grad]
    decay = weight_decay * batch_size
    filters = [p for _, p in trainable if p.ndim == 4]
    whiten_bias = [p for name, p in trainable if name.endswith("whiten.bias")]
    head = [p for name, p in trainable if p.ndim == 2]
    biases = [p for name, p in trainable if p.ndim == 1 and not name.endswith("whiten.bias")]
    sgd = dict(muon=False, momentum=sgd_momentum)
    groups = [
        dict(params=filters, lr=lr, momentum=momentum, weight_decay=decay if decay_filters else 0.0),
        dict(params=whiten_bias, lr=bias_lr, weight_decay=decay / bias_lr, decay_share=whiten_bias_decay, **sgd),
        dict(params=biases, lr=bias_lr, weight_decay=decay / bias_lr, **sgd),
        dict(params=head, lr=head_lr, weight_decay=decay / head_lr, **sgd),
    ]
    return Muon(
        [g for g in groups if g["params"]],
        lr=lr,
        momentum=momentum,
        ns_steps=ns_steps,
        norm_every=norm_every,
        norm_every_end=norm_every_end,
        total_steps=total_steps,
        ns_coefficients=ns_coefficients,
    )
