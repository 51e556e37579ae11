"""Conformal prediction sets (RAPS): the scores, the finite-sample quantile and the sets against a direct computation,
the coverage on exchangeable data, the scores kept in checkpoints, evaluate.py and predict.py with coverage=, and
every refusal."""

import csv
import json
import math
import shutil

import numpy as np
import pytest
import torch
from conftest import FAST, run_script, train_run
from PIL import Image

from cifar_lightning.blocks import conformal
from cifar_lightning.blocks.conformal import K_REG, LAMBDA
from cifar_lightning.blocks.errors import UserError
from cifar_lightning.store.checkpoints import load_model, write_temperature
from cifar_lightning.tasks.cli import compose_config
from cifar_lightning.tasks.evaluate import evaluate, model_and_data
from cifar_lightning.tasks.predict import predict

# hand-made probabilities over 7 classes (ranks 6 and 7 are penalised: K_REG = 5), no ties within a row; the
# calibration scores are 0 (4 times: the top class), 0.55, 0.74, 0.8, 0.95, 0.97, none of them a score of NEW's
CALIBRATION = np.array(
    [
        [0.50, 0.20, 0.10, 0.08, 0.06, 0.04, 0.02],
        [0.05, 0.60, 0.15, 0.09, 0.06, 0.03, 0.02],
        [0.30, 0.25, 0.20, 0.10, 0.08, 0.05, 0.02],
        [0.02, 0.03, 0.05, 0.70, 0.10, 0.06, 0.04],
        [0.10, 0.11, 0.12, 0.13, 0.14, 0.15, 0.25],
        [0.90, 0.04, 0.02, 0.015, 0.012, 0.008, 0.005],
        [0.20, 0.19, 0.18, 0.17, 0.13, 0.08, 0.05],
        [0.01, 0.02, 0.03, 0.04, 0.05, 0.35, 0.50],
        [0.40, 0.35, 0.10, 0.07, 0.04, 0.03, 0.01],
    ]
)
CALIBRATION_LABELS = np.array([5, 1, 2, 3, 1, 0, 4, 6, 5])
NEW = np.array(
    [
        [0.81, 0.09, 0.045, 0.027, 0.014, 0.009, 0.005],
        [0.25, 0.24, 0.20, 0.15, 0.08, 0.05, 0.03],
        [0.07, 0.06, 0.05, 0.045, 0.04, 0.035, 0.70],
    ]
)


def direct_score(p: np.ndarray, y: int) -> float:
    """RAPS' score with u = 0 written out: the mass of the classes more probable than y, plus LAMBDA per rank of y
    past K_REG."""
    rank = 1 + int((p > p[y]).sum())
    return float(p[p > p[y]].sum() + LAMBDA * max(rank - K_REG, 0))


def direct_threshold(scores: np.ndarray, alpha: float) -> float:
    """The ceil((n + 1)(1 - alpha)) / n empirical quantile: the smallest score with that share of scores at or below."""
    n = len(scores)
    q = math.ceil(round((n + 1) * (1 - alpha), 9)) / n
    return math.inf if q > 1 else float(np.quantile(scores, q, method="inverted_cdf"))


def test_scores_equal_a_direct_computation():
    p = torch.tensor(CALIBRATION)
    expected = [[direct_score(row, y) for y in range(7)] for row in CALIBRATION]
    assert conformal.class_scores(p).numpy() == pytest.approx(np.array(expected), abs=1e-12)
    # by hand: the class last of 7 has all the mass but its own above it and 2 penalised ranks; the 5th of 7 none;
    # the most probable class 0
    assert direct_score(CALIBRATION[0], 6) == pytest.approx(0.98 + 2 * LAMBDA)
    assert direct_score(CALIBRATION[0], 4) == pytest.approx(0.88)
    assert direct_score(CALIBRATION[0], 0) == 0
    kept = conformal.calibration_scores(p, torch.tensor(CALIBRATION_LABELS)).numpy()
    pairs = sorted(((direct_score(r, y), r[y]) for r, y in zip(CALIBRATION, CALIBRATION_LABELS)), key=lambda t: t[0])
    assert kept == pytest.approx(np.array(pairs))  # the scores ascending (ties in image order), with their probability
    # equal probabilities are ranked by class index, so that every run gives the same scores
    assert conformal.class_scores(torch.tensor([[0.25, 0.25, 0.5]])).tolist() == [[0.5, 0.75, 0.0]]


@pytest.mark.parametrize("alpha", [0.1, 0.2, 0.3, 0.45, 0.5, 0.8, 0.05])
def test_the_threshold_is_the_finite_sample_quantile(alpha):
    scores = conformal.calibration_scores(torch.tensor(CALIBRATION), torch.tensor(CALIBRATION_LABELS))
    expected = direct_threshold(scores[:, 0].numpy(), alpha)
    assert conformal.threshold(scores, 1 - alpha) == pytest.approx(expected, abs=1e-12)
    assert conformal.threshold(scores[:, 0], 1 - alpha) == pytest.approx(expected, abs=1e-12)  # plain scores too
    k = math.ceil(round(10 * (1 - alpha), 9))  # n = 9: the k-th smallest; 0.05 asks for the 10th of 9: every class
    assert expected == (math.inf if k > 9 else pytest.approx(float(np.sort(scores[:, 0].numpy())[k - 1])))


def test_the_quantile_counts_the_level_as_written():
    # (99 + 1) x 0.55 is 55.00000000000001 in floats: ceil would take the 56th score, and 0.55 asks for the 55th
    scores = torch.arange(1, 100, dtype=torch.float64)
    assert 100 * 0.55 > 55 and conformal.threshold(scores, 0.55) == 55
    assert conformal.threshold(torch.tensor([3.0, 1.0, 2.0]), 0.5) == 2  # any order: ceil(4 x 0.5) = 2nd smallest


@pytest.mark.parametrize("alpha", [0.1, 0.2, 0.5, 0.8, 0.05])
def test_sets_equal_a_direct_computation(alpha):
    scores = conformal.calibration_scores(torch.tensor(CALIBRATION), torch.tensor(CALIBRATION_LABELS))
    q = direct_threshold(scores[:, 0].numpy(), alpha)
    sets = conformal.prediction_sets(torch.tensor(NEW), conformal.threshold(scores, 1 - alpha)).numpy()
    for row, chosen in zip(NEW, sets):
        expected = {y for y in range(7) if direct_score(row, y) <= q}
        assert set(np.flatnonzero(chosen)) == expected
    if alpha == 0.05:
        assert sets.all()  # too few calibration images for 95%: every class
    if alpha == 0.8:
        assert sets.sum(1).tolist() == [1, 1, 1]  # the threshold is 0: the top class alone


def test_the_report_gives_exact_fractions_of_the_images():
    # 40 images, the top class right on 33: at level 0.5 (threshold 0: the top class alone) the sets cover 33 of 40
    probabilities = torch.full((40, 10), 0.01).index_fill_(1, torch.tensor([0]), 0.91)
    labels = torch.tensor([0] * 33 + [1] * 7)
    scores = conformal.calibration_scores(probabilities, torch.zeros(40, dtype=torch.long))  # all 0
    (row,) = conformal.coverage_report(probabilities, labels, scores, [0.5])["levels"]
    assert (row["empirical_coverage"], row["mean_set_size"], row["empty_sets"]) == (0.825, 1.0, 0.0)


def test_set_sizes_grow_with_the_level_and_always_hold_the_top_class():
    g = torch.Generator().manual_seed(1)
    p = (torch.randn(2000, 10, generator=g) * 2).softmax(1)
    scores = conformal.calibration_scores(p[:1000], torch.multinomial(p[:1000], 1, generator=g).squeeze(1))
    previous = None
    for level in (0.5, 0.8, 0.9, 0.95, 0.99):
        sets = conformal.prediction_sets(p[1000:], conformal.threshold(scores, level))
        sizes = sets.sum(1)
        assert sizes.min() >= 1 and sizes.max() <= 10 and sets[torch.arange(1000), p[1000:].argmax(1)].all()
        if previous is not None:
            assert (sets | ~previous).all()  # a higher level's set holds the lower one's
        previous = sets
    confident = torch.full((5, 10), 0.001).index_fill_(1, torch.tensor([3]), 0.991)
    assert conformal.prediction_sets(confident, conformal.threshold(scores, 0.5)).sum(1).tolist() == [1] * 5


@pytest.mark.parametrize("sharpen", [1.0, 2.0, 0.5])  # the model's probabilities right, overconfident, underconfident
def test_coverage_on_exchangeable_data_is_at_least_the_level(sharpen):
    g = torch.Generator().manual_seed(0)
    coverages = {0.8: [], 0.9: [], 0.95: []}
    for _ in range(10):
        logits = torch.randn(3000, 10, generator=g) * 2
        labels = torch.multinomial(logits.softmax(1), 1, generator=g).squeeze(1)
        p = (logits * sharpen).softmax(1)  # what the model says; the labels follow softmax(logits)
        report = conformal.coverage_report(
            p[1000:], labels[1000:], conformal.calibration_scores(p[:1000], labels[:1000]), list(coverages)
        )
        for row in report["levels"]:
            coverages[row["coverage"]].append(row["empirical_coverage"])
            assert 1 <= row["mean_set_size"] < 10
    for level, measured in coverages.items():
        assert np.mean(measured) >= level - 0.01 and min(measured) >= level - 0.04, (level, measured)


def direct_randomized(p: np.ndarray, y: int, u: float) -> float:
    """The paper's randomised score: the u = 0 score plus u times the class's own probability."""
    return direct_score(p, y) + u * p[y]


@pytest.mark.parametrize("alpha", [0.1, 0.2, 0.5, 0.8])
def test_randomized_threshold_and_sets_equal_a_direct_computation(alpha):
    scores = conformal.calibration_scores(torch.tensor(CALIBRATION), torch.tensor(CALIBRATION_LABELS))
    u_calibration = conformal.uniform(9, conformal.SEED).numpy()  # one draw per calibration score, in sorted order
    order = sorted(range(9), key=lambda i: direct_score(CALIBRATION[i], CALIBRATION_LABELS[i]))
    randomized = [
        direct_randomized(CALIBRATION[i], CALIBRATION_LABELS[i], u) for i, u in zip(order, u_calibration, strict=True)
    ]
    q = direct_threshold(np.array(randomized), alpha)
    assert conformal.threshold(scores, 1 - alpha, "raps_randomized") == pytest.approx(q, abs=1e-12)
    u_new = torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64)
    sets = conformal.prediction_sets(torch.tensor(NEW), q, "raps_randomized", u_new).numpy()
    for row, u, chosen in zip(NEW, u_new.tolist(), sets):
        assert set(np.flatnonzero(chosen)) == {y for y in range(7) if direct_randomized(row, y, u) <= q}
    with pytest.raises(ValueError, match="raps_randomized needs the calibration images' probabilities"):
        conformal.threshold(scores[:, 0], 1 - alpha, "raps_randomized")
    with pytest.raises(ValueError, match="need each image's draw"):
        conformal.prediction_sets(torch.tensor(NEW), q, "raps_randomized")


@pytest.mark.parametrize("alpha", [0.1, 0.2, 0.5, 0.8])
def test_thr_threshold_and_sets_equal_a_direct_computation(alpha):
    """THR (Sadinle, Lei and Wasserman, 2019): a class's score is 1 minus its probability."""
    scores = conformal.calibration_scores(torch.tensor(CALIBRATION), torch.tensor(CALIBRATION_LABELS))
    q = direct_threshold(np.array([1 - r[y] for r, y in zip(CALIBRATION, CALIBRATION_LABELS)]), alpha)
    assert conformal.threshold(scores, 1 - alpha, "thr") == pytest.approx(q, abs=1e-12)
    sets = conformal.prediction_sets(torch.tensor(NEW), q, "thr").numpy()
    for row, chosen in zip(NEW, sets):
        assert set(np.flatnonzero(chosen)) == {y for y in range(7) if 1 - row[y] <= q + 1e-12}
    if alpha == 0.8:
        assert sets.sum(1).tolist() == [1, 0, 1]  # a set holds nothing when no class is probable enough


def test_an_images_draw_depends_on_its_pixels_only():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2000, 3, 8, 8), dtype=torch.uint8, generator=g)
    draws = conformal.image_draws(images)
    assert draws.dtype == torch.float64 and draws.shape == (2000,) and 0 <= draws.min() and draws.max() < 1
    alone = torch.cat([conformal.image_draws(images[i : i + 1]) for i in (7, 3)])
    assert alone.tolist() == [draws[7].item(), draws[3].item()]  # alone or in any batch, the same u
    assert conformal.image_draws(images.flip(0)).tolist() == draws.flip(0).tolist()
    changed = images[:1].clone()
    changed[0, 0, 0, 0] ^= 1
    assert conformal.image_draws(changed).item() != draws[0].item()
    # about uniform: each tenth of [0, 1) holds about a tenth of the draws
    counts = torch.histc(draws.float(), bins=10, min=0, max=1)
    assert counts.min() > 150 and counts.max() < 250


def test_randomized_coverage_is_the_level_for_a_model_more_accurate_than_it():
    """Deterministic sets always hold the top class, so they cover at least the accuracy; randomised ones reach the
    level itself, with some empty sets (the paper's exact coverage)."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(20000, 10, generator=g) * 20  # about 95% of the top classes right
    labels = torch.multinomial(logits.softmax(1), 1, generator=g).squeeze(1)
    p = logits.softmax(1)
    accuracy = float((p[10000:].argmax(1) == labels[10000:]).float().mean())
    scores = conformal.calibration_scores(p[:10000], labels[:10000])
    fixed = conformal.coverage_report(p[10000:], labels[10000:], scores, [0.8, 0.9])
    images = torch.randint(0, 256, (10000, 3, 4, 4), dtype=torch.uint8, generator=g)
    draws = conformal.image_draws(images)
    drawn = conformal.coverage_report(p[10000:], labels[10000:], scores, [0.8, 0.9], "raps_randomized", draws)
    assert accuracy > 0.92 and drawn["randomized"] is True and fixed["randomized"] is False
    for deterministic, randomized in zip(fixed["levels"], drawn["levels"]):
        assert deterministic["empirical_coverage"] >= accuracy and deterministic["empty_sets"] == 0
        assert abs(randomized["empirical_coverage"] - randomized["coverage"]) < 0.015, randomized  # ~3.5 sd
        assert 0 < randomized["empty_sets"] < 1 - randomized["coverage"] + 0.01
    assert "empty" in conformal.console_line(drawn) and "randomised" in conformal.markdown(drawn)
    thr = conformal.coverage_report(p[10000:], labels[10000:], scores, [0.8, 0.9], "thr")
    assert thr["method"] == "THR" and "THR" in conformal.markdown(thr) and "empty" in conformal.console_line(thr)
    for row, randomized in zip(thr["levels"], drawn["levels"]):
        assert abs(row["empirical_coverage"] - row["coverage"]) < 0.015, row
        assert row["mean_set_size"] < randomized["mean_set_size"]  # the smallest sets of the three


def test_a_checkpoint_keeps_scores_of_any_length_and_one_without_them_has_none(synthetic_run, tmp_path):
    path = tmp_path / "x.ckpt"
    path.write_bytes((synthetic_run / "checkpoints" / "best.ckpt").read_bytes())
    assert len(load_model(path).conformal_scores) == 40  # data.val_size=40
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["state_dict"]["conformal_scores"] = torch.tensor([0.3, 0.6, 0.9])
    torch.save(checkpoint, path)
    assert load_model(path).conformal_scores.tolist() == pytest.approx([0.3, 0.6, 0.9])
    del checkpoint["state_dict"]["conformal_scores"]  # as saved before they were kept
    torch.save(checkpoint, path)
    assert len(load_model(path).conformal_scores) == 0
    for bad in (torch.tensor([0.3, float("nan")]), torch.ones(2, 3), torch.ones(2, 2, 2)):
        write_temperature(path, 1.0, bad)
        with pytest.raises(UserError, match="its conformal scores are not a list of finite numbers"):
            load_model(path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, trained):
    """Two tiny runs: one without temperature (calibration=none) but with a validation split, one without."""
    tmp = tmp_path_factory.mktemp("conformal")
    trained([*FAST, "data=synthetic", "calibration=none"], tmp / "validated")
    train_run([*FAST, "data=synthetic", "data.val_size=0"], tmp / "unvalidated")
    images = tmp / "images"
    images.mkdir()
    for i in range(3):
        pixels = np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"{i}.png")
    return {"validated": tmp / "validated", "unvalidated": tmp / "unvalidated", "images": images}


def test_training_keeps_the_validation_scores_in_every_checkpoint(runs):
    cfg = compose_config("evaluate", [f"ckpt={runs['validated']}"])
    _, model, data = model_and_data(cfg, "val")
    validation = data.splits["val"]
    p = model.predict_logits(validation.images).softmax(1).double().numpy()  # calibration=none: temperature 1
    expected = sorted(((direct_score(r, y), r[y]) for r, y in zip(p, validation.labels.tolist())), key=lambda t: t[0])
    for name in ("best", "last"):
        kept = torch.load(runs["validated"] / "checkpoints" / f"{name}.ckpt", weights_only=True)["state_dict"]
        assert float(kept["temperature"]) == 1
        assert kept["conformal_scores"][:, 0].tolist() == pytest.approx([s for s, _ in expected], abs=1e-5)
        # each score's own probability beside it (the order of tied scores may differ: compared as a multiset)
        assert sorted(kept["conformal_scores"][:, 1].tolist()) == pytest.approx(
            sorted(q for _, q in expected), abs=1e-5
        )


def test_evaluate_reports_coverage_and_set_size_at_each_level(synthetic_run, tmp_path):
    run = shutil.copytree(synthetic_run, tmp_path / "run")  # its eval folder is written: the shared run stays as it is
    metrics = evaluate(compose_config("evaluate", [f"ckpt={run}"]))
    report = metrics["conformal"]
    assert {k: report[k] for k in ("method", "score", "lambda", "k_reg", "randomized", "calibration_images")} == {
        "method": "RAPS",
        "score": "raps",
        "lambda": LAMBDA,
        "k_reg": K_REG,
        "randomized": False,
        "calibration_images": 40,
    }
    assert [row["coverage"] for row in report["levels"]] == [0.9, 0.95]  # the default levels
    for row in report["levels"]:
        assert set(row) == {"coverage", "threshold", "empirical_coverage", "mean_set_size", "empty_sets"}
        assert row["empty_sets"] == 0  # not randomised: the top class is always in
        assert 0 <= row["empirical_coverage"] <= 1 and 1 <= row["mean_set_size"] <= 10
    out = run / "eval" / "test"
    assert json.loads((out / "metrics.json").read_text())["conformal"] == report
    assert "## Conformal prediction sets" in (out / "report.md").read_text()
    # on the calibration images themselves at least ceil(41 x level) / 40 of the true classes are in their sets
    on_val = evaluate(compose_config("evaluate", [f"ckpt={run}", "split=val", "coverage=[0.5,0.8]"]))
    for row in on_val["conformal"]["levels"]:
        assert row["empirical_coverage"] >= math.ceil(41 * row["coverage"]) / 40
    none = evaluate(compose_config("evaluate", [f"ckpt={run}", "coverage=[]"]))
    assert "conformal" not in none


def test_calibrate_true_refits_the_scores_with_the_temperature(runs, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for part in (".hydra", "checkpoints"):
        (run / part).mkdir()
    (run / ".hydra" / "config.yaml").write_bytes((runs["validated"] / ".hydra" / "config.yaml").read_bytes())
    best = run / "checkpoints" / "best.ckpt"
    best.write_bytes((runs["validated"] / "checkpoints" / "best.ckpt").read_bytes())
    before = load_model(best).conformal_scores.clone()
    metrics = evaluate(compose_config("evaluate", [f"ckpt={run}", "calibrate=true", "coverage=0.9"]))
    after = load_model(best)
    assert float(after.temperature) != 1 and not torch.allclose(after.conformal_scores, before)
    assert metrics["conformal"]["levels"][0]["threshold"] == conformal.threshold(after.conformal_scores, 0.9)


def test_predict_prints_each_images_set_and_writes_it_in_the_csv(runs, tmp_path):
    out = tmp_path / "sets.csv"
    result = run_script(
        "predict.py", f"ckpt={runs['validated']}", f"images={runs['images']}", "coverage=0.9", f"csv={out}"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines() if "set at 90%: {" in line]
    assert len(lines) == 3
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3
    model = load_model(runs["validated"] / "checkpoints" / "best.ckpt")
    for row, line in zip(rows, lines):
        chosen = row["set"].split("|")
        assert chosen[0] == row["class_1"] and set(chosen) <= set(model.hparams["class_names"])
        assert line.endswith("{" + ", ".join(chosen) + "}")
    # 40 calibration images are too few for 99%: ceil(41 x 0.99) = 41 > 40, every class
    assert conformal.threshold(model.conformal_scores, 0.99) == math.inf
    options = [f"ckpt={runs['validated']}", f"images={runs['images']}", "coverage=0.99"]
    assert all(len(row["set"]) == 10 for row in predict(compose_config("predict", options)))


@pytest.mark.parametrize("level", ["0", "1", "1.5", "abc", "-0.1", "nan", "true", "[0.9,2]"])
def test_a_level_outside_zero_one_or_not_a_number_is_refused_naming_the_key(runs, level):
    with pytest.raises(UserError, match=r"^coverage=.* must be a coverage level in \(0, 1\)"):
        evaluate(compose_config("evaluate", [f"ckpt={runs['validated']}", f"coverage={level}"]))
    if not level.startswith("["):
        with pytest.raises(UserError, match=r"^coverage=.* must be a coverage level in \(0, 1\)"):
            options = [f"ckpt={runs['validated']}", f"images={runs['images']}", f"coverage={level}"]
            predict(compose_config("predict", options))


def test_a_checkpoint_trained_without_validation_is_refused_when_a_coverage_is_asked(runs):
    unvalidated = runs["unvalidated"]
    assert len(load_model(unvalidated / "checkpoints" / "best.ckpt").conformal_scores) == 0
    assert "conformal" not in evaluate(compose_config("evaluate", [f"ckpt={unvalidated}"]))  # null: when there are
    with pytest.raises(UserError, match=r"^coverage=\[0.9\]: .* holds no conformal scores: .*data.val_size=0"):
        evaluate(compose_config("evaluate", [f"ckpt={unvalidated}", "coverage=[0.9]"]))
    result = run_script("predict.py", f"ckpt={unvalidated}", f"images={runs['images']}", "coverage=0.9")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()
    assert (
        len(last) == 1 and last[0].startswith("error: coverage=0.9: ") and "train with data.val_size above 0" in last[0]
    )


def test_levels_hold_for_the_logits_the_scores_were_fitted_on_only(runs):
    validated = runs["validated"]
    tta = 1 - load_model(validated / "checkpoints" / "best.ckpt").hparams["tta"]  # the other level
    # by default: reported at the checkpoint's own TTA on a split they were not fitted on, else left out
    assert "conformal" not in evaluate(compose_config("evaluate", [f"ckpt={validated}", f"tta={tta}"]))
    assert "conformal" not in evaluate(compose_config("evaluate", [f"ckpt={validated}", "split=val"]))
    with pytest.raises(UserError, match=r"^coverage=\[0.9\]: .* fitted at its own test-time augmentation"):
        evaluate(compose_config("evaluate", [f"ckpt={validated}", f"tta={tta}", "coverage=[0.9]"]))
    with pytest.raises(UserError, match=r"^coverage=0.9 with tta=.* fitted at its own test-time augmentation"):
        predict(
            compose_config("predict", [f"ckpt={validated}", f"images={runs['images']}", "coverage=0.9", f"tta={tta}"])
        )


def test_randomised_sets_in_evaluate_and_predict_and_scores_kept_without_probabilities_refused(runs, tmp_path):
    validated = runs["validated"]
    drawn = "conformal_score=raps_randomized"
    metrics = evaluate(compose_config("evaluate", [f"ckpt={validated}", drawn, "coverage=[0.8]"]))
    model = load_model(validated / "checkpoints" / "best.ckpt")
    split = model_and_data(compose_config("evaluate", [f"ckpt={validated}"]), "test")[2].splits["test"]
    p = model.predict_logits(split.images, calibrated=True).softmax(1)
    q = conformal.threshold(model.conformal_scores, 0.8, "raps_randomized")
    sets = conformal.prediction_sets(p, q, "raps_randomized", conformal.image_draws(split.images))
    row = metrics["conformal"]["levels"][0]
    assert metrics["conformal"]["randomized"] is True and row["threshold"] == pytest.approx(q)
    assert row["empirical_coverage"] == pytest.approx(float(sets[torch.arange(len(p)), split.labels].float().mean()))
    rows = predict(compose_config("predict", [f"ckpt={validated}", f"images={runs['images']}", "coverage=0.8", drawn]))
    images = torch.stack(
        [torch.from_numpy(np.array(Image.open(runs["images"] / f"{i}.png"))).permute(2, 0, 1) for i in range(3)]
    )
    probabilities = model.predict_logits(images, calibrated=True).softmax(1)
    expected = conformal.prediction_sets(probabilities, q, "raps_randomized", conformal.image_draws(images))
    names = model.hparams["class_names"]
    assert [set(r["set"]) for r in rows] == [{names[i] for i in s.nonzero().flatten().tolist()} for s in expected]
    # scores kept before their probabilities were (a list of numbers): refused in one line, until refitted
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_bytes((validated / ".hydra" / "config.yaml").read_bytes())
    best = run / "checkpoints" / "best.ckpt"
    best.write_bytes((validated / "checkpoints" / "best.ckpt").read_bytes())
    write_temperature(best, 1.0, model.conformal_scores[:, 0])
    asked = [f"ckpt={run}", drawn]
    with pytest.raises(UserError, match=r"^conformal_score=raps_randomized: .* without the probabilities .*calibrate"):
        evaluate(compose_config("evaluate", asked))
    with pytest.raises(UserError, match=r"^conformal_score=raps_randomized: .* kept without the probabilities"):
        predict(compose_config("predict", [*asked, f"images={runs['images']}", "coverage=0.8"]))
    assert evaluate(compose_config("evaluate", [*asked, "calibrate=true"]))["conformal"]["randomized"] is True
    assert load_model(best).conformal_scores.shape == (40, 2)


def test_thr_sets_in_evaluate_and_predict_and_refused_without_a_level(runs):
    validated = runs["validated"]
    metrics = evaluate(compose_config("evaluate", [f"ckpt={validated}", "conformal_score=thr", "coverage=[0.8]"]))
    model = load_model(validated / "checkpoints" / "best.ckpt")
    q = conformal.threshold(model.conformal_scores, 0.8, "thr")
    assert metrics["conformal"]["method"] == "THR"
    assert metrics["conformal"]["levels"][0]["threshold"] == pytest.approx(q)
    options = [f"ckpt={validated}", f"images={runs['images']}", "conformal_score=thr"]
    rows = predict(compose_config("predict", [*options, "coverage=0.8"]))
    for row in rows:
        kept = {name for name, p in row["top"] if 1 - p <= q}  # top_k=3 covers every class above 1 - q here
        assert set(row["set"]) == kept
    with pytest.raises(UserError, match=r"^conformal_score=thr chooses how the sets of coverage= are made"):
        predict(compose_config("predict", options))


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_an_unknown_conformal_score_is_refused_in_one_line(runs, command):
    options = [f"ckpt={runs['validated']}", "conformal_score=aps", "coverage=0.9"]
    options += [f"images={runs['images']}"] if command == "predict" else []
    with pytest.raises(UserError, match=r"^conformal_score='aps' must be raps, raps_randomized or thr"):
        (evaluate if command == "evaluate" else predict)(compose_config(command, options))
