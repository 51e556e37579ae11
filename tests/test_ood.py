"""Out-of-distribution detection (blocks/ood.py, evaluate.py ood=heldout|generated): AUROC, AUPR and FPR95 equal
direct computations over pairs and thresholds (ties, perfect and reversed separation), the scores equal their
formulas, and evaluate.py writes the report of a run trained on some of the classes; refusals are one line."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import FAST, run_script, train_run

from cifar_lightning.blocks import ood
from cifar_lightning.blocks.data import ImageDataModule
from cifar_lightning.blocks.datasets import make_synthetic
from cifar_lightning.blocks.errors import UserError
from cifar_lightning.store.checkpoints import load_model
from cifar_lightning.tasks.cli import compose_config
from cifar_lightning.tasks.evaluate import evaluate

KNOWN = [f"class_{i}" for i in range(6)]


# ------------------------------------------------------------------ direct computations, written out
def direct_auroc(inside, outside) -> float:
    """Every (in, out) pair: 1 when in scores higher, 1/2 on a tie."""
    i, o = np.asarray(inside, float)[:, None], np.asarray(outside, float)[None, :]
    return float(((i > o) + 0.5 * (i == o)).mean())


def direct_thresholds(inside, outside):
    """(TPR, FPR, precision) when accepting scores >= t, for each distinct score t, highest first."""
    inside, outside = np.asarray(inside, float), np.asarray(outside, float)
    rows = []
    for t in sorted(set(inside) | set(outside), reverse=True):
        tp, fp = (inside >= t).sum(), (outside >= t).sum()
        rows.append((tp / len(inside), fp / len(outside), tp / (tp + fp)))
    return rows


def direct_aupr(inside, outside) -> float:
    total, previous = 0.0, 0.0
    for recall, _, precision in direct_thresholds(inside, outside):
        total += (recall - previous) * precision
        previous = recall
    return total


def direct_fpr95(inside, outside) -> float:
    """The lowest FPR of the thresholds that accept at least 95% of the in-distribution scores."""
    return min(fpr for tpr, fpr, _ in direct_thresholds(inside, outside) if tpr >= 0.95)


CASES = {
    "ties across the sets": ([3, 3, 2, 1, 1, 0.5], [3, 1, 1, 0, 0]),
    "perfect separation": ([5, 6, 7, 8], [1, 2, 3]),
    "reversed": ([1, 2, 3], [5, 6, 7, 8]),
    "every score equal": ([2, 2, 2], [2, 2]),
    "twenty in, 95% of them exactly at a threshold": (list(range(20)), [0, 0, 1, 18, 19]),
}


@pytest.mark.parametrize("inside, outside", CASES.values(), ids=CASES.keys())
def test_separation_equals_direct_computations(inside, outside):
    got = ood.separation(np.array(inside, float), np.array(outside, float))
    assert got["auroc"] == pytest.approx(direct_auroc(inside, outside), abs=1e-12)
    assert got["aupr"] == pytest.approx(direct_aupr(inside, outside), abs=1e-12)
    assert got["fpr95"] == pytest.approx(direct_fpr95(inside, outside), abs=1e-12)


def test_known_values_of_perfect_reversed_and_tied_scores():
    assert ood.separation(np.array([5.0, 6]), np.array([1.0, 2, 3])) == {"auroc": 1.0, "aupr": 1.0, "fpr95": 0.0}
    reversed_ = ood.separation(np.array([1.0, 2]), np.array([5.0, 6, 7]))
    assert reversed_["auroc"] == 0.0 and reversed_["fpr95"] == 1.0
    tied = ood.separation(np.array([2.0, 2, 2]), np.array([2.0, 2]))
    assert tied == {"auroc": 0.5, "aupr": pytest.approx(3 / 5), "fpr95": 1.0}


@pytest.mark.parametrize("seed", range(5))
def test_random_scores_with_many_ties(seed):
    rng = np.random.default_rng(seed)
    inside, outside = rng.integers(0, 6, 40).astype(float), rng.integers(0, 4, 30).astype(float)
    got = ood.separation(inside, outside)
    assert got["auroc"] == pytest.approx(direct_auroc(inside, outside), abs=1e-12)
    assert got["aupr"] == pytest.approx(direct_aupr(inside, outside), abs=1e-12)
    assert got["fpr95"] == pytest.approx(direct_fpr95(inside, outside), abs=1e-12)
    fpr, tpr = ood.roc(inside, outside)
    assert np.trapezoid(tpr, fpr) == pytest.approx(got["auroc"])  # straight across ties: the area is the AUROC


def test_an_empty_side_is_refused():
    with pytest.raises(ValueError, match="needs in-distribution and out-of-distribution"):
        ood.auroc(np.array([1.0]), np.array([]))


def test_scores_equal_their_formulas():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 0.0, 0.0], [10.0, 30.0, -5.0]])
    for row, msp, logit, energy in zip(
        logits.tolist(), ood.msp(logits, 2.0), ood.max_logit(logits), ood.energy(logits), strict=True
    ):
        exps = [math.exp(v / 2.0) for v in row]
        assert float(msp) == pytest.approx(max(exps) / sum(exps), rel=1e-12)
        assert float(logit) == max(row)
        assert float(energy) == pytest.approx(math.log(sum(math.exp(v) for v in row)), rel=1e-12)
    assert float(ood.energy(logits[:1], t=2.0)) == pytest.approx(2 * math.log(sum(math.exp(v / 2) for v in logits[0])))


def test_permuted_pixels_keep_each_images_colours_and_move_them():
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    permuted = ood.permute_pixels(images, torch.Generator().manual_seed(0))
    for before, after in zip(images, permuted):
        pixels = sorted(map(tuple, before.flatten(1).T.tolist()))  # (r, g, b) triples: one permutation per image
        assert sorted(map(tuple, after.flatten(1).T.tolist())) == pixels
    assert not torch.equal(images, permuted)


def test_generated_sets_are_named_sized_and_reproducible():
    images = torch.randint(0, 256, (30, 3, 8, 8), dtype=torch.uint8)
    sets = list(ood.generated(images, count=10))
    assert [name for name, _, _ in sets][:3] == ["uniform_noise", "permuted_pixels", "gaussian_noise"]
    assert len(sets) == 2 + 15 and all(x.shape == (10, 3, 8, 8) and x.dtype == torch.uint8 for _, x, _ in sets)
    assert all(torch.equal(a[1], b[1]) for a, b in zip(sets, ood.generated(images, count=10)))


def test_held_out_are_the_test_images_of_the_classes_left_out():
    data = ImageDataModule(source="synthetic", val_size=40, classes=KNOWN)
    data.setup("test")
    name, images, about = ood.held_out(data)
    full = make_synthetic()
    expected = full.test_images[full.test_labels >= 6]
    assert name == "held_out_classes" and about["classes"] == [f"class_{i}" for i in range(6, 10)]
    assert torch.equal(images, expected)
    every = ImageDataModule(source="synthetic", val_size=40)
    every.setup("test")
    with pytest.raises(UserError, match="trained on every class of its data \\(10\\), so none is held out"):
        ood.held_out(every)


# ------------------------------------------------------------------------------ evaluate.py, end to end
@pytest.fixture(scope="module")
def runs(tmp_path_factory, trained):
    """A run trained on class_0..class_5 of the synthetic data, and one on all ten classes."""
    tmp = tmp_path_factory.mktemp("ood")
    classes = f"data.classes=[{','.join(KNOWN)}]"
    train_run([*FAST, "data=synthetic", classes], tmp / "six")
    trained([*FAST, "data=synthetic"], tmp / "all")
    return tmp


def test_heldout_scores_the_held_out_classes_test_images(runs):
    result = run_script("evaluate.py", f"ckpt={runs / 'six'}", "ood=heldout")
    assert result.returncode == 0, result.stderr[-2000:]
    out = runs / "six" / "eval" / "test"
    report = json.loads((out / "metrics.json").read_text())["ood"]
    assert report["protocol"] == "heldout" and report["positive"] == "in-distribution"
    entry = report["sets"]["held_out_classes"]
    assert entry["classes"] == [f"class_{i}" for i in range(6, 10)]
    # the numbers: the checkpoint's logits on both sets, at its own TTA level, scored here
    model = load_model(runs / "six" / "checkpoints" / "best.ckpt")
    full = make_synthetic()
    inside = model.predict_logits(full.test_images[full.test_labels < 6])
    outside = model.predict_logits(full.test_images[full.test_labels >= 6])
    assert report["in_distribution_images"] == len(inside) and entry["images"] == len(outside)
    temperature = float(model.temperature)
    for score in ("msp", "max_logit", "energy"):
        expected = ood.separation(ood.scores(inside, temperature)[score], ood.scores(outside, temperature)[score])
        assert entry[score] == pytest.approx(expected, abs=1e-6)
    assert (out / "ood.png").stat().st_size > 0
    assert "## Out-of-distribution detection" in (out / "report.md").read_text()
    assert "held_out_classes (" in result.stdout and "MaxLogit AUROC" in result.stdout


def test_generated_reports_each_set(runs):
    result = run_script("evaluate.py", f"ckpt={runs / 'six'}", "ood=generated")
    assert result.returncode == 0, result.stderr[-2000:]
    out = runs / "six" / "eval" / "test"
    report = json.loads((out / "metrics.json").read_text())["ood"]
    assert list(report["sets"])[:2] == ["uniform_noise", "permuted_pixels"] and len(report["sets"]) == 17
    for entry in report["sets"].values():
        for score in ("msp", "max_logit", "energy"):
            assert set(entry[score]) == {"auroc", "aupr", "fpr95"}
            assert all(0 <= v <= 1 for v in entry[score].values())
    assert report["sets"]["fog"]["severity"] == 5
    assert (out / "ood.png").is_file() and "| uniform_noise |" in (out / "report.md").read_text()


@pytest.mark.parametrize(
    "run, override, message",
    [
        ("all", "ood=heldout", "error: ood=heldout: the checkpoint was trained on every class of its data (10)"),
        ("six", "ood=maybe", "error: ood='maybe' must be one of null, heldout, generated"),
    ],
)
def test_refusals_are_one_line_and_leave_earlier_outputs_alone(runs, run, override, message):
    evaluate(compose_config("evaluate", [f"ckpt={runs / run}"]))
    out = runs / run / "eval" / "test"
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    result = run_script("evaluate.py", f"ckpt={runs / run}", override)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(message)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
