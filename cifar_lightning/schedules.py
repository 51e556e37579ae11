"""Learning-rate schedules beyond a single torch scheduler, as factories taking the run's total optimizer steps."""

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LinearLR, SequentialLR


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
