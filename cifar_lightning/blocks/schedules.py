"""Learning-rate schedules beyond a single torch scheduler, as factories taking the run's total optimizer steps."""

from collections.abc import Callable

from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LinearLR, LRScheduler, OneCycleLR, SequentialLR


class OneCycle(OneCycleLR):
    """torch.optim.lr_scheduler.OneCycleLR (Smith & Topin, "Super-Convergence", 2017), with the same arguments and,
    whenever each of its phases spans at least one step (two phases: 1 < pct_start * total_steps < total_steps),
    exactly the same learning rates and momenta: per optimizer step, max_lr / div_factor annealed up to max_lr at
    step pct_start * total_steps - 1, then down to max_lr / div_factor / final_div_factor at step total_steps - 1.

    Otherwise (a run of a few steps; pct_start 0 or 1) torch divides by zero or starts part-way down the annealing;
    here each phase's end is clamped into the run (steps 0 .. total_steps - 1, after the previous phase's end), a
    phase of no length is passed at once at its end value, and the last phase's end value is kept after the run.
    With pct_start=0.25: 1 step trains at max_lr; 2-4 steps go from max_lr at step 0 down to the final lr at the
    last step. Raises what OneCycleLR raises (ValueError for a pct_start outside [0, 1] or stepping beyond
    total_steps)."""

    def get_lr(self) -> list[float | Tensor]:
        ends = [phase["end_step"] for phase in self._schedule_phases]
        if all(a < b for a, b in zip([0.0, *ends], ends)):
            return super().get_lr()
        step = self.last_epoch
        if step > self.total_steps:
            raise ValueError(f"Tried to step {step} times. The specified number of total steps is {self.total_steps}")
        start = 0.0
        for i, phase in enumerate(self._schedule_phases):
            end = min(max(phase["end_step"], start), self.total_steps - 1)
            if step <= end or i == len(self._schedule_phases) - 1:
                share = min(1.0, (step - start) / (end - start)) if end > start else 1.0
                break
            start = end
        lrs = []
        for group in self.optimizer.param_groups:
            lrs.append(self._anneal_func(group[phase["start_lr"]], group[phase["end_lr"]], share))
            if self.cycle_momentum:
                momentum = self._anneal_func(group[phase["start_momentum"]], group[phase["end_momentum"]], share)
                if self.use_beta1:
                    group["betas"] = (momentum, *group["betas"][1:])
                else:
                    group["momentum"] = momentum
        return lrs


def warmup_linear(
    optimizer: Optimizer, total_steps: int, start: float = 0.2, warmup: float = 0.23, end: float = 0.07
) -> LRScheduler:
    """Multiplier of each group's lr per optimizer step (airbench's schedule, github.com/KellerJordan/cifar10-airbench):
    linear from `start` up to 1 over the first `warmup` share of the steps (at least one step), then linear down to
    `end`, reached after the last step. A run of one step trains at `start` and ends at `end`. Raises ValueError
    (from LinearLR) for a `start` outside (0, 1] or an `end` outside [0, 1]."""
    if total_steps == 1:  # no step left for the peak: warm-up and decay in one
        return LinearLR(optimizer, start, end, total_iters=1)
    peak = min(max(1, round(warmup * total_steps)), total_steps - 1)  # and at least one step of decay
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
