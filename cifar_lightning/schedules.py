"""Learning-rate schedules beyond a single torch scheduler, as factories taking the run's total optimizer steps."""

from collections.abc import Callable

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LinearLR, SequentialLR


def warmup_linear(
    optimizer: Optimizer, total_steps: int, start: float = 0.2, warmup: float = 0.23, end: float = 0.07
) -> SequentialLR:
    """Linear from `start` x lr up to lr over the first `warmup` share of the steps, then linear down to `end` x lr."""
    peak = max(1, round(warmup * total_steps))
    return SequentialLR(
        optimizer,
        [
            LinearLR(optimizer, start, 1.0, total_iters=peak),
            LinearLR(optimizer, 1.0, end, total_iters=max(1, total_steps - peak)),
        ],
        milestones=[peak],
    )


def linear_to_zero(optimizer: Optimizer, total_steps: int) -> LambdaLR:
    """Each group's learning rate falls linearly from its own value to zero, over the run or over the share of it
    the group names as `decay_share` (airbench94_muon's whitening bias stops learning after 3 of 8 epochs)."""

    def factor(share: float) -> Callable[[int], float]:
        steps = max(1, round(share * total_steps))
        return lambda step: max(0.0, 1 - step / steps)

    return LambdaLR(optimizer, [factor(group.get("decay_share", 1.0)) for group in optimizer.param_groups])
