"""Temperature scaling: the fit, the measures, and the temperature carried by checkpoints into every output."""

import logging

import pytest
import torch
import torch.nn.functional as F
from conftest import FAST, train_run

from cifar_lightning.blocks.calibration import fit_temperature
from cifar_lightning.blocks.errors import UserError
from cifar_lightning.blocks.metrics import calibration, evaluate_predictions
from cifar_lightning.store.checkpoints import load_model, write_temperature
from cifar_lightning.tasks.cli import compose_config
from cifar_lightning.tasks.evaluate import evaluate
from cifar_lightning.tasks.predict import predict


@pytest.mark.parametrize("true_temperature", [0.5, 2.5])
def test_fit_recovers_the_temperature_the_labels_were_drawn_with(true_temperature):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(20000, 10, generator=g) * 3
    labels = torch.multinomial((logits / true_temperature).softmax(1), 1, generator=g).squeeze(1)
    assert fit_temperature(logits, labels) == pytest.approx(true_temperature, rel=0.05)


def test_logits_without_an_error_keep_temperature_one_and_one_error_gives_a_finite_fit():
    logits = torch.randn(200, 10) * 3
    labels = logits.argmax(dim=1)
    assert fit_temperature(logits, labels) == 1.0  # no finite T minimises the NLL: it falls towards T = 0
    labels[0] = (labels[0] + 1) % 10
    fitted = fit_temperature(logits, labels)
    assert 0 < fitted < 1 and F.cross_entropy(logits / fitted, labels) < F.cross_entropy(logits, labels)


def test_calibration_measures_equal_a_direct_computation():
    logits = torch.tensor([[4.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, 3.0]])
    labels = torch.tensor([0, 0, 0, 1])
    measured = calibration(logits, labels, temperature=2.0)
    probs = (logits / 2).softmax(1)
    assert measured["nll"] == pytest.approx(F.cross_entropy(logits / 2, labels).item(), abs=1e-6)
    assert measured["brier"] == pytest.approx(((probs - F.one_hot(labels, 2)) ** 2).sum(1).mean().item(), abs=1e-6)
    confidence, correct = probs.max(1).values, (probs.argmax(1) == labels).float()
    # 4 distinct confidences in 15 bins: each sample is its own bin, so ECE is the mean gap, MCE the largest
    assert measured["ece"] == pytest.approx((confidence - correct).abs().mean().item(), abs=1e-6)
    assert measured["mce"] == pytest.approx((confidence - correct).abs().max().item(), abs=1e-6)


def test_temperature_changes_probabilities_never_the_prediction():
    logits, labels = torch.randn(200, 5), torch.randint(0, 5, (200,))
    plain, scaled = (
        evaluate_predictions(logits, labels, list("abcde")),
        evaluate_predictions(logits, labels, list("abcde"), 3.0),
    )
    assert plain.metrics["accuracy"] == scaled.metrics["accuracy"] and torch.equal(plain.confusion, scaled.confusion)
    assert scaled.metrics["calibration"]["before"] == plain.metrics["calibration"]["after"]
    assert scaled.metrics["ece"] == scaled.metrics["calibration"]["after"]["ece"] != plain.metrics["ece"]


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    run = tmp_path_factory.mktemp("calibration") / "run"
    # one short epoch: the validation split keeps some errors to fit a temperature on (without any, it stays 1)
    summary = train_run([*FAST, "data=synthetic", "epochs=1", "+trainer.limit_train_batches=3"], run)
    return run, summary


def test_training_fits_the_temperature_on_validation_and_writes_it_into_every_checkpoint(calibrated):
    run, summary = calibrated
    assert summary["temperature"] != 1 and summary["temperature"] > 0
    for name in ("best", "last"):
        saved = torch.load(run / "checkpoints" / f"{name}.ckpt", weights_only=True)["state_dict"]["temperature"]
        assert float(saved) == pytest.approx(summary["temperature"])
    metrics = evaluate(compose_config("evaluate", [f"ckpt={run}", "split=val"]))
    calibrated_metrics = metrics["calibration"]
    assert calibrated_metrics["temperature"] == pytest.approx(summary["temperature"])
    assert calibrated_metrics["after"]["nll"] <= calibrated_metrics["before"]["nll"]  # the fit minimised it here
    assert metrics["accuracy"] == pytest.approx(summary["best_val_acc"], abs=1e-6)


def test_predict_shows_calibrated_probabilities(calibrated, tmp_path):
    import numpy as np
    from PIL import Image

    run, summary = calibrated
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    rows = predict(compose_config("predict", [f"ckpt={run}", f"images={tmp_path}", "top_k=10"]))
    model = load_model(run / "checkpoints" / "best.ckpt")
    from cifar_lightning.blocks.datasets import read_image

    with torch.no_grad():
        logits = model(model.normalize(read_image(tmp_path / "a.png", 32)[None]))
    expected = (logits / summary["temperature"]).softmax(1)[0]
    top = dict(rows[0]["top"])
    assert all(top[name] == pytest.approx(float(p), abs=1e-5) for name, p in zip(model.hparams.class_names, expected))


def test_calibrate_true_refits_and_calibration_none_keeps_one(tmp_path, monkeypatch, trained):
    import cifar_lightning.tasks.evaluate as task

    run = tmp_path / "run"
    summary = trained([*FAST, "data=synthetic", "calibration=none"], run)
    assert summary["temperature"] == 1
    assert float(torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]["temperature"]) == 1

    def write_fails(*_):
        raise UserError("could not write")

    with monkeypatch.context() as failing:  # an evaluation that fails once fitted leaves the checkpoint as it was
        failing.setattr(task, "write", write_fails)
        with pytest.raises(UserError, match="could not write"):
            evaluate(compose_config("evaluate", [f"ckpt={run}", "calibrate=true"]))
    assert float(torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]["temperature"]) == 1
    metrics = evaluate(compose_config("evaluate", [f"ckpt={run}", "calibrate=true"]))
    written = float(torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]["temperature"])
    assert written != 1 and metrics["calibration"]["temperature"] == pytest.approx(written)


def test_without_validation_the_temperature_stays_one(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    summary = train_run([*FAST, "data=synthetic", "data.val_size=0"], tmp_path / "run")
    assert summary["temperature"] == 1
    assert any("data.val_size=0 leaves no validation images" in r.getMessage() for r in caplog.records)
    run = tmp_path / "run"
    with pytest.raises(
        UserError, match=r"calibrate=true fits .* the run held out, .* held out none \(data.val_size=0\)"
    ):
        evaluate(compose_config("evaluate", [f"ckpt={run}", "calibrate=true"]))
    # other data's validation split: here 200 of the very images the run trained on (it held none out)
    with pytest.raises(UserError, match="calibrate=true fits on the validation split the run held out, .*drop data="):
        evaluate(compose_config("evaluate", [f"ckpt={run}", "calibrate=true", "data=synthetic"]))
    assert float(torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]["temperature"]) == 1


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan")])
def test_a_checkpoint_with_a_temperature_that_is_not_positive_is_refused(calibrated, tmp_path, temperature):
    path = tmp_path / "x.ckpt"
    path.write_bytes((calibrated[0] / "checkpoints" / "best.ckpt").read_bytes())
    write_temperature(path, temperature)
    with pytest.raises(UserError, match="temperature .* is not a positive number"):
        load_model(path)
