"""The fast recipe's parts: whitening, alternating flip, lookahead, decoupled SGD, schedule, TTA, a tiny run."""

import csv
import math

import pytest
import torch
from conftest import FAST, compose_train, run_script, train_run
from helpers import RecordTrainStart

from cifar_lightning.blocks.augment import AlternatingFlip
from cifar_lightning.blocks.callbacks import FreezeAfterEpochs, Lookahead
from cifar_lightning.blocks.models.airbench import AirbenchNet
from cifar_lightning.blocks.module import ImageClassifier
from cifar_lightning.blocks.optim import decoupled_sgd
from cifar_lightning.blocks.schedules import warmup_linear
from cifar_lightning.tasks.train import train


def correlated_images(n=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=g)
    x = x + torch.roll(x, 1, dims=3) + 0.5 * x[:, :1]  # neighbouring pixels and channels correlate
    return x


def test_whitening_makes_patch_second_moments_the_identity():
    net = AirbenchNet(whiten_eps=1e-8)
    images = correlated_images()
    net.init_from_data(images)
    with torch.no_grad():
        out = torch.nn.functional.conv2d(images, net.whiten.weight[:12])  # the half that is not negated
    features = out.permute(0, 2, 3, 1).reshape(-1, 12).double()
    second_moment = features.T @ features / len(features)
    assert torch.allclose(second_moment, torch.eye(12, dtype=torch.double), atol=1e-3)
    assert torch.equal(net.whiten.weight[12:], -net.whiten.weight[:12])
    assert not net.whiten.weight.requires_grad and net.whiten.bias.requires_grad


def test_alternating_flip_flips_each_image_on_alternate_epochs():
    images = torch.arange(32.0).expand(64, 3, 32, 32).clone()
    indices = torch.arange(100, 164)
    flipped = [AlternatingFlip(seed=1)(images, indices, epoch)[:, 0, 0, 0] == 31 for epoch in range(4)]
    assert 20 < flipped[0].sum() < 44  # random in the first epoch
    for a, b in zip(flipped, flipped[1:]):
        assert torch.all(a ^ b)  # every image changes side every epoch
    assert torch.equal(flipped[0], flipped[2])


def test_lookahead_decay_one_keeps_the_slow_weights_and_decay_zero_takes_the_fast_ones():
    net = torch.nn.Linear(4, 2)
    lookahead = Lookahead()
    start = {k: v.clone() for k, v in net.state_dict().items()}
    lookahead.slow = {k: v.clone() for k, v in start.items()}
    with torch.no_grad():
        net.weight.add_(1.0)
    moved = {k: v.clone() for k, v in net.state_dict().items()}
    lookahead.pull(net, decay=1.0)
    assert all(torch.equal(net.state_dict()[k], start[k]) for k in start)  # slow unchanged, weights back to it
    with torch.no_grad():
        net.weight.add_(1.0)
    lookahead.pull(net, decay=0.0)
    assert torch.equal(lookahead.slow["weight"], moved["weight"]) and torch.equal(net.weight, moved["weight"])


def test_decoupled_sgd_numbers_match_the_published_formulas():
    net = AirbenchNet()
    optimizer = decoupled_sgd(net.named_parameters(), lr=11.5, weight_decay=0.0153, momentum=0.85, batch_size=1024)
    lr = 11.5 / (1024 * (1 + 1 / (1 - 0.85)))
    wd = 0.0153 * 1024 / (1024 * (1 + 1 / (1 - 0.85))) / lr
    norm_biases, others = optimizer.param_groups
    assert others["lr"] == pytest.approx(lr) and others["weight_decay"] == pytest.approx(wd)
    assert norm_biases["lr"] == pytest.approx(64 * lr)
    assert norm_biases["lr"] * norm_biases["weight_decay"] == pytest.approx(lr * wd)
    assert optimizer.defaults["momentum"] == 0.85 and optimizer.defaults["nesterov"]
    assert len(norm_biases["params"]) == 6 and all(p.ndim == 1 for p in norm_biases["params"])


@pytest.mark.parametrize("total", [10, 100, 441])
def test_warmup_linear_is_airbench_schedule_step_by_step(total):
    """torch's LinearLR twice gives the schedule's closed form: warm-up from 0.2 to 1 over 23% of the steps,
    then down to 0.07 at the last step, and no further."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = warmup_linear(optimizer, total_steps=total)
    peak = round(0.23 * total)
    for step in range(total + 5):
        expected = 0.2 + 0.8 * step / peak if step < peak else 1 - 0.93 * min(1.0, (step - peak) / (total - peak))
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-12, abs=1e-12), step
        optimizer.step()
        schedule.step()


def test_freeze_after_epochs_stops_training_that_parameter_only():
    cfg = compose_train(["experiment=fast94_lookahead", "model.widths=[8,16,16]"])
    module = ImageClassifier(net=cfg.model, optimizer=cfg.optimizer, class_names=list("ab"), channels_last=False)
    optimizer, _, _ = module.optimizer_and_schedule(total_steps=10)
    freeze = FreezeAfterEpochs("net.whiten.bias", epochs=1)
    x = torch.randn(8, 3, 32, 32)
    for epoch, bias_trains in ((0, True), (1, False)):
        freeze.on_train_epoch_start(type("FakeTrainer", (), {"current_epoch": epoch})(), module)
        bias, head = module.net.whiten.bias.clone(), module.net.head.weight.clone()
        module(x).square().sum().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        assert torch.equal(module.net.whiten.bias, bias) != bias_trains, epoch
        assert not torch.equal(module.net.head.weight, head)  # everything else goes on training


def test_lookahead_resumes_with_its_slow_weights_from_the_checkpoint(tmp_path):
    """A run cut after epoch 0 and resumed: the lookahead starts again from the slow weights it had saved, not
    from the net's current weights (which differ: 28 steps an epoch, a pull every 5)."""
    run = tmp_path / "run"
    overrides = [
        "experiment=fast94_lookahead",
        "data=synthetic",
        *FAST,
        "epochs=2",
        "batch_size=70",
        "model.widths=[8,16,16]",
        "+callbacks.record._target_=helpers.RecordTrainStart",
    ]
    train_run([*overrides, "+callbacks.stop._target_=helpers.StopAfterEpoch"], run)
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 0 and last["global_step"] == 28
    saved = next(v for k, v in last["callbacks"].items() if k.startswith("Lookahead"))["slow"]
    RecordTrainStart.seen.clear()
    summary = train(compose_train(overrides, output_dir=run), resume_from=run / "checkpoints" / "last.ckpt")
    assert summary["epochs"] == 2
    restored = RecordTrainStart.seen[0]
    assert restored["slow"].keys() == saved.keys()
    assert all(torch.equal(restored["slow"][k], saved[k]) for k in saved)
    assert any(not torch.equal(restored["net"][k], saved[k]) for k in saved)


@pytest.mark.parametrize("tta", [0, 1, 2])
def test_tta_of_a_model_that_ignores_its_input_is_the_plain_prediction(tta):
    class Constant(torch.nn.Module):
        def __init__(self, num_classes=3):
            super().__init__()
            self.logits = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))

        def forward(self, x):
            return self.logits.expand(len(x), -1)

    cfg = compose_train()
    module = ImageClassifier(net=cfg.model, optimizer=cfg.optimizer, class_names=list("abc"), tta=tta)
    module.net = Constant()
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    assert torch.allclose(module.logits(images), module.net(images))


def test_tta_two_averages_six_views():
    cfg = compose_train()
    module = ImageClassifier(net=cfg.model, optimizer=cfg.optimizer, class_names=list("ab"), tta=2)
    module.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    x = module.normalize(images)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    views = [x, padded[..., :8, :8], padded[..., 2:, 2:]]
    both = [(module.net(v) + module.net(v.flip(3))) / 2 for v in views]
    assert torch.allclose(module.logits(images), both[0] / 2 + (both[1] + both[2]) / 4, atol=1e-6)
    assert torch.allclose(module.logits(images, tta=0), module.net(x), atol=1e-6)  # the argument wins


@pytest.mark.parametrize("tta", [1, 2])
def test_selective_tta_gives_the_views_to_the_least_confident_images_only(tta):
    cfg = compose_train()
    module = ImageClassifier(net=cfg.model, optimizer=cfg.optimizer, class_names=list("abc"), tta=tta, tta_fraction=0.3)
    torch.manual_seed(0)
    module.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3))
    images = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)
    # by hand: the 3 images (ceil(0.3 x 10)) of lowest top probability take the full TTA logits, the rest the plain
    plain, full = module.logits(images, tta=0), module.logits(images, tta_fraction=1.0)
    chosen = plain.softmax(1).amax(1).argsort()[:3]
    expected = plain.clone()
    expected[chosen] = full[chosen]
    selective = module.logits(images)
    assert torch.allclose(selective, expected, atol=1e-6)
    assert not torch.allclose(selective, full, atol=1e-4) and not torch.allclose(selective, plain, atol=1e-4)
    assert torch.allclose(
        module.predict_logits(images, batch_size=5),
        torch.cat([module.logits(images[:5]), module.logits(images[5:])]),
        atol=1e-6,
    )


def test_a_fractional_epoch_with_accumulated_batches_stops_and_decays_in_optimizer_steps(tmp_path):
    run = tmp_path / "run"
    overrides = ["data=synthetic", *FAST, "epochs=1.5", "batch_size=64", "trainer.accumulate_grad_batches=2"]
    train_run([*overrides, "scheduler=linear_to_zero"], run)
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    steps = round(1.5 * math.ceil((1960 // 64) / 2))  # 30 batches an epoch, 15 optimizer steps
    assert checkpoint["global_step"] == steps
    assert checkpoint["lr_schedulers"][0]["last_epoch"] == steps
    assert checkpoint["lr_schedulers"][0]["_last_lr"][0] == 0.0  # the decay ends with the run, not after it


def test_fast94_lookahead_runs_one_short_epoch_on_tiny_data_and_evaluates(tmp_path):
    run = tmp_path / "run"
    overrides = [
        "experiment=fast94_lookahead",
        "data=synthetic",
        *FAST,
        "epochs=1.5",
        "batch_size=64",
        "model.widths=[16,32,32]",
    ]
    cfg = compose_train(overrides, output_dir=run)
    assert cfg.module.loss_reduction == "sum" and cfg.module.tta == 2 and cfg.module.label_smoothing == 0.2
    summary = train_run(overrides, run)
    assert summary["epochs"] == 2 and 0 <= summary["best_val_acc"] <= 1
    steps = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert steps == round(1.5 * (1960 // 64))  # 1.5 epochs of 30 full batches
    with open(run / "metrics.csv") as f:
        validated = {row["epoch"] for row in csv.DictReader(f) if row["val/acc"]}
    assert validated == {"0", "1"}  # the half epoch at the end is validated too, so its weights can be best
    result = run_script("evaluate.py", f"ckpt={run}", "split=val", "tta=true")
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize(
    "limit, accumulate, steps",
    [
        (4, 1, 6),  # 1.5 epochs of 4 batches
        (0.5, 1, 22),  # half of 30 batches is 15 an epoch; 22.5 steps round to 22
        (5, 2, 4),  # 5 batches make 3 steps of 2 (the last incomplete); 4.5 round to 4
    ],
)
def test_a_limited_epoch_sets_the_run_length_and_the_schedule_in_the_batches_it_really_runs(
    limit, accumulate, steps, tmp_path
):
    run = tmp_path / "run"
    overrides = ["data=synthetic", *FAST, "epochs=1.5", "batch_size=64", "scheduler=linear_to_zero"]
    train_run(
        [*overrides, f"+trainer.limit_train_batches={limit}", f"trainer.accumulate_grad_batches={accumulate}"], run
    )
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == steps
    assert checkpoint["lr_schedulers"][0]["last_epoch"] == steps
    assert checkpoint["lr_schedulers"][0]["_last_lr"][0] == 0.0  # the decay ends with the run


@pytest.mark.parametrize(("epochs", "stops_inside"), [("1", False), ("1.5", True)])
def test_a_callback_at_every_step_ends_a_fractional_epoch_and_whole_epochs_do_without(epochs, stops_inside, tmp_path):
    from cifar_lightning.blocks.callbacks import StopAtMaxSteps
    from cifar_lightning.tasks.train import build

    cfg = compose_train(["data=synthetic", *FAST, f"epochs={epochs}", "batch_size=64"], output_dir=tmp_path / "run")
    _, _, trainer = build(cfg)
    assert any(isinstance(c, StopAtMaxSteps) for c in trainer.callbacks) is stops_inside
    assert trainer.max_steps == (round(1.5 * (1960 // 64)) if stops_inside else -1)
    assert trainer.max_epochs == (2 if stops_inside else 1)  # epochs, set in train.yaml alone, rounded up
