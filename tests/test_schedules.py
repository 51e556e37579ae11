"""Every scheduler config on runs of 1-4 optimizer steps, and the one-cycle schedule equal to torch's OneCycleLR,
value for value, on ordinary runs. The schedule is always built from configs/scheduler/ (not imported), so these
tests also run, and the short runs fail, on code whose onecycle is still torch's own."""

import math

import pytest
import torch
from conftest import FAST, ROOT, compose_train, train_run
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.optim.lr_scheduler import OneCycleLR

from cifar_lightning.blocks.module import ImageClassifier

SCHEDULERS = sorted(p.stem for p in (ROOT / "configs" / "scheduler").glob("*.yaml"))
# after the run (epochs=1), as a multiple of optimizer.lr; onecycle: max_lr / div_factor / final_div_factor
END = {"onecycle": 1 / 25 / 1e4, "cosine": 0.0, "step": 1.0, "warmup_linear": 0.07, "linear_to_zero": 0.0, "none": 1.0}
TRAIN_IMAGES = 1960  # synthetic data's 2,000 training images less FAST's data.val_size=40


def test_every_scheduler_config_is_covered():
    assert set(SCHEDULERS) == set(END)


def module_of(scheduler: str, optimizer: str = "adamw") -> tuple[ImageClassifier, dict]:
    model = "model=airbench" if optimizer == "muon" else "model=cnn"  # airbench has muon's whitening bias
    cfg = compose_train([f"scheduler={scheduler}", f"optimizer={optimizer}", model, "epochs=1"])
    module = ImageClassifier(net=cfg.model, optimizer=cfg.optimizer, scheduler=cfg.scheduler, class_names=list("ab"))
    return module, cfg


def state(optimizer: torch.optim.Optimizer) -> list[tuple[float, float]]:
    """Each group's learning rate and momentum (Adam's beta1)."""
    return [(g["lr"], g["betas"][0] if "betas" in g else g.get("momentum", 0.0)) for g in optimizer.param_groups]


def run_schedule(scheduler: str, optimizer: str, steps: int) -> tuple[list[list[tuple[float, float]]], dict, list]:
    """States before each optimizer step and after the run, as Lightning steps them (per step or once an epoch)."""
    module, cfg = module_of(scheduler, optimizer)
    optim, schedule, interval = module.optimizer_and_schedule(total_steps=steps)
    groups = [{k: v for k, v in g.items() if k != "params"} for g in optim.param_groups]
    states = []
    for _ in range(steps):
        states.append(state(optim))
        optim.step()
        if schedule is not None and interval == "step":
            schedule.step()
    if schedule is not None and interval == "epoch":
        schedule.step()
    states.append(state(optim))
    return states, cfg, groups


@pytest.mark.parametrize("optimizer", ["adamw", "sgd", "muon"])
@pytest.mark.parametrize("scheduler", SCHEDULERS)
@pytest.mark.parametrize("steps", [1, 2, 3, 4])
def test_a_run_of_a_few_steps_has_finite_rates_and_ends_where_its_schedule_ends(scheduler, optimizer, steps):
    states, cfg, groups = run_schedule(scheduler, optimizer, steps)
    for step, values in enumerate(states):
        for lr, momentum in values:
            assert math.isfinite(lr) and lr >= 0, (step, lr)
            assert math.isfinite(momentum) and 0 <= momentum < 1, (step, momentum)
    lr = cfg.optimizer.lr
    if scheduler == "onecycle":  # max_lr is optimizer.lr for every group
        assert [lr for lr, _ in states[0]] == [lr] * len(groups)  # no step for a warm-up: the first is the peak
        assert [lr for lr, _ in states[-1]] == pytest.approx([lr * END["onecycle"]] * len(groups), rel=1e-12)
        if steps > 1:  # the cosine half of the cycle, down to the final lr at the last step
            final = lr * END["onecycle"]
            for step, values in enumerate(states[:-1]):
                expected = final + (lr - final) * (1 + math.cos(math.pi * step / (steps - 1))) / 2
                assert values[0][0] == pytest.approx(expected, rel=1e-12), step
    else:
        base = [g.get("initial_lr", g["lr"]) for g in groups]
        assert [lr for lr, _ in states[-1]] == pytest.approx([b * END[scheduler] for b in base], rel=1e-12, abs=1e-15)
    if scheduler == "warmup_linear":
        assert [lr for lr, _ in states[0]] == pytest.approx([0.2 * b for b in base], rel=1e-12)
    if scheduler == "linear_to_zero" and optimizer == "muon":  # the whitening bias stops after 3/8 of the run
        whiten = next(i for i, g in enumerate(groups) if "decay_share" in g)
        stop = max(1, round(cfg.optimizer.whiten_bias_decay * steps))
        assert [values[whiten][0] for values in states[stop:]] == [0.0] * (len(states) - stop)
        assert all(values[whiten][0] > 0 for values in states[:stop])


# one run per scheduler in the quick suite (onecycle: the 4 steps that divided by zero), the others marked slow
QUICK_RUN = {"onecycle": 4, "warmup_linear": 1, "linear_to_zero": 2, "cosine": 3, "step": 1, "none": 4}


@pytest.mark.parametrize(
    ("scheduler", "steps"),
    [
        pytest.param(scheduler, steps, marks=() if QUICK_RUN[scheduler] == steps else pytest.mark.slow)
        for scheduler in SCHEDULERS
        for steps in (1, 2, 3, 4)
    ],
)
def test_a_training_run_of_a_few_steps_trains_with_every_scheduler(scheduler, steps, tmp_path):
    """`python train.py data=synthetic epochs=1 batch_size=450` is 4 optimizer steps; 1960 // steps makes `steps`."""
    run = tmp_path / "run"
    overrides = [
        "data=synthetic",
        *FAST,
        f"batch_size={TRAIN_IMAGES // steps}",
        f"scheduler={scheduler}",
        "model.widths=[8,16,16]",  # small and 8x8 images: the schedule is under test, not the net
        "data.image_size=8",
        "calibration=none",
    ]
    summary = train_run(overrides, run)
    assert summary["epochs"] == 1 and math.isfinite(summary["test_loss"])
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == steps
    cfg = compose_train(overrides)
    lr = cfg.optimizer.lr
    if scheduler == "none":
        assert checkpoint["lr_schedulers"] == []
        assert checkpoint["optimizer_states"][0]["param_groups"][0]["lr"] == lr
    else:
        assert checkpoint["lr_schedulers"][0]["last_epoch"] == (steps if cfg.scheduler.interval == "step" else 1)
        assert checkpoint["lr_schedulers"][0]["_last_lr"] == pytest.approx([lr * END[scheduler]], rel=1e-12)


def one_cycle_config(**kwargs) -> tuple[ImageClassifier, dict, dict]:
    """The module, its composed config and configs/scheduler/onecycle.yaml as it would be built (`kwargs` over it)."""
    module, cfg = module_of("onecycle", kwargs.pop("optimizer", "adamw"))
    config = {k: v for k, v in OmegaConf.to_container(cfg.scheduler, resolve=True).items() if k != "interval"}
    return module, cfg, {**config, **kwargs}


def one_cycle_states(total_steps: int, optimizer: str, **kwargs) -> list[list]:
    """(lr, momentum) of every group at steps 0..total_steps (the last after the run), for the onecycle config
    (`kwargs` over it) and for torch's OneCycleLR with the same arguments, each on its own copy of the optimizer."""
    module, cfg, config = one_cycle_config(optimizer=optimizer, total_steps=total_steps, **kwargs)
    arguments = {k: v for k, v in config.items() if not k.startswith("_")}
    sequences = []
    for build in (instantiate(config), lambda optim: OneCycleLR(optim, **arguments)):
        optim = instantiate(cfg.optimizer)(module.named_parameters())
        schedule = build(optim)
        sequence = [state(optim)]
        for _ in range(total_steps):
            optim.step()
            schedule.step()
            sequence.append(state(optim))
        sequences.append(sequence)
    return sequences


@pytest.mark.parametrize("total_steps", [5, 10, 100, 7020])  # 7020: the default run, 20 epochs of 351 steps
def test_onecycle_is_torch_onecycle_bit_for_bit_on_ordinary_runs(total_steps):
    ours, torchs = one_cycle_states(total_steps, "adamw")
    assert ours == torchs  # floats compared with ==, learning rate and Adam's beta1 at every step
    assert len(ours) == total_steps + 1 and ours[0] != ours[-1]


@pytest.mark.parametrize(
    ("optimizer", "kwargs"),
    [
        ("sgd", {}),
        ("adamw", {"pct_start": 0.3, "three_phase": True}),
        ("adamw", {"anneal_strategy": "linear", "div_factor": 10.0}),
        ("adamw", {"cycle_momentum": False}),
    ],
)
def test_onecycle_is_torch_onecycle_bit_for_bit_with_its_other_arguments(optimizer, kwargs):
    for total_steps in (10, 100):
        ours, torchs = one_cycle_states(total_steps, optimizer, **kwargs)
        assert ours == torchs, total_steps


def test_onecycle_too_short_for_three_phases_anneals_to_its_final_rate():
    for total_steps in (1, 2, 3, 4):  # torch's three phases: 1-3 steps start part-way, 4 divide by zero
        module, cfg, config = one_cycle_config(total_steps=total_steps, three_phase=True)
        optim = instantiate(cfg.optimizer)(module.named_parameters())
        schedule = instantiate(config)(optim)
        lrs = [optim.param_groups[0]["lr"]]
        for _ in range(total_steps):
            optim.step()
            schedule.step()
            lrs.append(optim.param_groups[0]["lr"])
        assert lrs[0] == cfg.optimizer.lr, total_steps  # the peak, with no step to warm up in
        assert all(math.isfinite(lr) and lr >= 0 for lr in lrs), (total_steps, lrs)
        final = cfg.optimizer.lr * END["onecycle"]
        assert lrs[max(1, total_steps - 1) :] == pytest.approx([final] * (len(lrs) - max(1, total_steps - 1))), lrs


def test_onecycle_refuses_what_torch_refuses():
    module, cfg, config = one_cycle_config(total_steps=4, pct_start=2.0)
    optim = instantiate(cfg.optimizer)(module.named_parameters())
    with pytest.raises(ValueError, match="Expected float between 0 and 1 pct_start"):
        instantiate(config)(optim)
    schedule = instantiate({**config, "total_steps": 2, "pct_start": 0.25})(optim)
    for _ in range(2):
        optim.step()
        schedule.step()
    with pytest.raises(ValueError, match="Tried to step 3 times"):
        schedule.step()
