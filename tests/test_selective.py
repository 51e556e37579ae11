"""Selective classification: AURC, E-AURC, risk at 80% coverage and coverage at 5% risk against a direct computation;
what evaluate.py writes of them; predict.py's abstain_below=."""

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from conftest import run_script
from PIL import Image

from cifar_lightning.blocks import selective
from cifar_lightning.tasks.cli import compose_config
from cifar_lightning.tasks.evaluate import compute, evaluate

KEYS = ("aurc", "e_aurc", "oracle_aurc", "risk_at_80_coverage", "coverage_at_5_risk")


def direct(confidence, correct) -> dict:
    """The definitions, one threshold at a time: a threshold t keeps the images of confidence >= t (ties: all or
    none); every image counts with the risk of the threshold at its own confidence."""
    confidence, correct = np.asarray(confidence, dtype=float), np.asarray(correct, dtype=bool)
    n = len(confidence)
    points = []  # (coverage, risk) per distinct threshold
    for t in sorted(set(confidence.tolist()), reverse=True):
        kept = confidence >= t
        points.append((kept.mean(), 1 - correct[kept].mean()))
    risk_of = {t: 1 - correct[confidence >= t].mean() for t in confidence.tolist()}
    aurc = np.mean([risk_of[c] for c in confidence.tolist()])
    errors_last = np.sort(correct)[::-1]  # True first
    oracle = np.mean([1 - errors_last[:k].mean() for k in range(1, n + 1)])
    at_80 = min((c, r) for c, r in points if c >= 0.8)[1]
    within = [c for c, r in points if r <= 0.05 + 1e-12]
    return {
        "aurc": aurc,
        "e_aurc": aurc - oracle,
        "oracle_aurc": oracle,
        "risk_at_80_coverage": at_80,
        "coverage_at_5_risk": max(within) if within else 0.0,
    }


def computed(confidence, correct) -> dict:
    confidence, correct = np.asarray(confidence, dtype=float), np.asarray(correct, dtype=bool)
    coverage, risk = selective.curve(confidence, correct)
    area = selective.aurc(coverage, risk)
    oracle = selective.oracle_aurc(correct)
    return {
        "aurc": area,
        "e_aurc": area - oracle,
        "oracle_aurc": oracle,
        "risk_at_80_coverage": selective.risk_at(coverage, risk),
        "coverage_at_5_risk": selective.coverage_at(coverage, risk),
    }


rng = np.random.default_rng(0)
CASES = {
    "distinct": ([0.9, 0.8, 0.7, 0.6, 0.5], [1, 1, 0, 1, 0]),
    "ties": ([0.9, 0.8, 0.8, 0.8, 0.6, 0.6], [1, 0, 1, 1, 0, 1]),
    "all tied": ([0.5] * 8, [1, 0, 1, 1, 1, 0, 1, 1]),
    "all correct": ([0.9, 0.3, 0.3, 0.7], [1, 1, 1, 1]),
    "all wrong": ([0.9, 0.3, 0.3, 0.7], [0, 0, 0, 0]),
    "one image": ([0.4], [1]),
    "errors first": ([0.9, 0.8, 0.7, 0.6], [0, 0, 1, 1]),
    "5% exactly": (np.linspace(1, 0.5, 40), [*[1] * 19, 0, *[1] * 19, 0]),
    "random with ties": (rng.integers(0, 6, 200) / 5, rng.random(200) < 0.7),
}


@pytest.mark.parametrize("case", CASES)
def test_metrics_equal_a_direct_computation(case):
    confidence, correct = CASES[case]
    assert computed(confidence, correct) == pytest.approx(direct(confidence, correct), abs=1e-12)


def test_known_values_and_order_of_ties():
    # thresholds 0.9 | 0.8 (3 images) | 0.6 (2): coverage 1/6, 4/6, 1; risk 0, 1/4, 2/6
    got = computed(*CASES["ties"])
    assert got["aurc"] == pytest.approx((0 * 1 + 1 / 4 * 3 + 2 / 6 * 2) / 6)
    assert got["oracle_aurc"] == pytest.approx((1 / 5 + 2 / 6) / 6)  # 4 right: the 5th and 6th are the errors
    assert got["risk_at_80_coverage"] == pytest.approx(2 / 6) and got["coverage_at_5_risk"] == pytest.approx(1 / 6)
    confidence, correct = CASES["ties"]
    order = [5, 3, 1, 0, 4, 2]  # a tie's order does not matter
    assert computed(np.array(confidence)[order], np.array(correct)[order]) == pytest.approx(got)
    assert computed(*CASES["all correct"]) == pytest.approx(
        {"aurc": 0, "e_aurc": 0, "oracle_aurc": 0, "risk_at_80_coverage": 0, "coverage_at_5_risk": 1}
    )
    assert computed(*CASES["all wrong"]) == pytest.approx(
        {"aurc": 1, "e_aurc": 0, "oracle_aurc": 1, "risk_at_80_coverage": 1, "coverage_at_5_risk": 0}
    )
    assert computed(*CASES["5% exactly"])["coverage_at_5_risk"] == 1  # 2 errors in 40: exactly 5%


def test_summary_uses_the_top_probability_and_its_class():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.3, 0.3, 0.4], [0.5, 0.45, 0.05]])
    labels = torch.tensor([0, 2, 2, 1])  # right, wrong, right, wrong
    summary = selective.summary(probs, labels)
    assert {k: summary[k] for k in KEYS} == pytest.approx(direct([0.7, 0.6, 0.4, 0.5], [1, 0, 1, 0]))


def test_evaluate_writes_the_selective_metrics_and_the_figure(synthetic_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(synthetic_run, run)  # calibrate=true writes the temperature into the checkpoint
    metrics = evaluate(compose_config("evaluate", [f"ckpt={run}", "calibrate=true"]))
    out = run / "eval" / "test"
    assert json.loads((out / "metrics.json").read_text())["selective"] == metrics["selective"]
    with Image.open(out / "risk_coverage.png") as image:
        image.verify()
    assert "(risk_coverage.png)" in (out / "report.md").read_text()
    assert "AURC" in (out / "report.md").read_text()

    result = compute(compose_config("evaluate", [f"ckpt={run}"]))  # the logits again, and the fitted temperature
    assert result.temperature != 1
    probs = (result.logits / result.temperature).softmax(dim=1)
    confidence, predicted = probs.max(dim=1)
    expected = direct(confidence.numpy(), (predicted == result.labels).numpy())
    assert {k: metrics["selective"][k] for k in KEYS} == pytest.approx(expected, abs=1e-9)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


@pytest.mark.parametrize("below, abstained", [(0, False), (1, True)])
def test_predict_abstains_below_the_threshold(synthetic_run, images, tmp_path, below, abstained):
    out = tmp_path / "out.csv"
    result = run_script(
        "predict.py", f"ckpt={synthetic_run}", f"images={images}", f"csv={out}", f"abstain_below={below}"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith(str(images))]
    assert len(lines) == 3
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert [r["abstained"] for r in rows] == [str(abstained).lower()] * 3
    for line, row in zip(lines, rows):
        if abstained:  # the top class and its probability, nothing else
            assert line == f"{row['path']}: abstained (top: {row['class_1']} {float(row['prob_1']):.1%})"
        else:
            assert "abstained" not in line and line.count("%") == 3


@pytest.mark.parametrize("value", ["1.5", "-0.1", "abc", "true", "nan"])
def test_a_bad_abstain_below_is_one_line(synthetic_run, images, value):
    result = run_script("predict.py", f"ckpt={synthetic_run}", f"images={images}", f"abstain_below={value}")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.strip().startswith("error: abstain_below=") and "from 0 to 1" in result.stderr
