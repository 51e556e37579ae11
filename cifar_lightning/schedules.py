"""Learning-rate schedules beyond torch's, as LambdaLR factories taking the run's total optimizer steps."""
from torch.optim.lr_scheduler import LambdaLR


def warmup_linear(optimizer, total_steps: int, start: float = 0.2, warmup: float = 0.23,
                  end: float = 0.07) -> LambdaLR:
    """Linear from `start` x lr up to lr over the first `warmup` share of the steps, then linear down to `end` x lr."""
    peak = max(1, round(warmup * total_steps))

    def factor(step: int) -> float:
        if step < peak:
            return start + (1 - start) * step / peak
        return 1 + (end - 1) * min(1.0, (step - peak) / max(1, total_steps - peak))

    return LambdaLR(optimizer, factor)
