"""`python -m cifar_lightning.tasks.compare`: two groups of tiny runs compared as a user does, the numbers against a
direct computation, and every refusal in one line."""

import json
import shutil

import pytest
import torch
from conftest import FAST, run_script, train_run, write_cifar

from cifar_lightning.blocks.datasets import make_synthetic
from cifar_lightning.blocks.errors import UserError
from cifar_lightning.blocks.stats import discordant, mcnemar_exact
from cifar_lightning.store.checkpoints import load_model
from cifar_lightning.tasks.compare import compare

COMMAND = ("-m", "cifar_lightning.tasks.compare")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, trained):
    """Recipe A as a sweep of two seeds (sweep_a/0, sweep_a/1, and a pruned job 2), recipe B as two run folders
    holding out 60 validation images instead of 40; all on synthetic data, one epoch."""
    tmp = tmp_path_factory.mktemp("compare")
    for seed in (0, 1):
        trained([*FAST, "data=synthetic", f"seed={seed}"], tmp / "sweep_a" / str(seed))
        train_run([*FAST, "data=synthetic", "data.val_size=60", "optimizer.lr=0.003", f"seed={seed}"], tmp / f"b{seed}")
    pruned = tmp / "sweep_a" / "2"
    shutil.copytree(tmp / "sweep_a" / "0", pruned)
    summary = json.loads((pruned / "summary.json").read_text())
    (pruned / "summary.json").write_text(json.dumps({**summary, "pruned": True}))
    return tmp


def test_compares_a_sweep_with_runs_as_a_user_does(runs, tmp_path):
    out = tmp_path / "report"
    result = run_script(*COMMAND, "--a", "sweep_a", "--b", "b0", "b1", "--out", out, cwd=runs)
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "compare.json").read_text())
    assert (out / "compare.md").read_text() in result.stdout
    assert f"note: group A: {runs / 'sweep_a'}: 1 pruned (stopped early) left out" in result.stdout
    assert [r["checkpoint"] for r in summary["a"]["runs"]] == [
        str(runs / "sweep_a" / s / "checkpoints" / "best.ckpt") for s in ("0", "1")
    ]
    assert f"B - A: {100 * summary['difference']:+.2f} points" in result.stdout
    welch, boot = summary["welch"], summary["bootstrap"]
    for words, (low, high) in (("Welch t", (welch["low"], welch["high"])), ("bootstrap", (boot["low"], boot["high"]))):
        assert words in result.stdout and f"[{100 * low:+.2f}, {100 * high:+.2f}] (" in result.stdout
        assert low <= summary["difference"] <= high
    assert f"p = {summary['mcnemar']['p_value']:.3g}" in result.stdout

    # the numbers, computed directly from the checkpoints on the synthetic test images
    test = make_synthetic()
    images, labels = test.test_images, test.test_labels
    probabilities = {}
    for name, folders in (("a", [runs / "sweep_a" / "0", runs / "sweep_a" / "1"]), ("b", [runs / "b0", runs / "b1"])):
        models = [load_model(f / "checkpoints" / "best.ckpt") for f in folders]
        with torch.no_grad():
            probabilities[name] = [(m(m.normalize(images)) / m.temperature).softmax(1) for m in models]
        accuracies = [float((p.argmax(1) == labels).float().mean()) for p in probabilities[name]]
        assert [r["accuracy"] for r in summary[name]["runs"]] == pytest.approx(accuracies, abs=1e-6)
    ensembles = [(torch.stack(probabilities[n]).mean(0).argmax(1) == labels).numpy() for n in ("a", "b")]
    only_a, only_b = discordant(*ensembles)
    assert (summary["mcnemar"]["only_a_right"], summary["mcnemar"]["only_b_right"]) == (only_a, only_b)
    assert summary["mcnemar"]["p_value"] == pytest.approx(mcnemar_exact(only_a, only_b))
    assert summary["difference"] == pytest.approx(summary["b"]["mean"] - summary["a"]["mean"])
    assert summary["images"] == len(labels) == 500


def test_a_group_of_one_run_omits_the_welch_interval(runs, capsys):
    summary = compare(["--a", str(runs / "sweep_a" / "0"), "--b", str(runs / "b0" / "checkpoints" / "best.ckpt")])
    assert summary["welch"] is None and summary["a"]["std"] is None
    assert "no Welch interval (a group has one run" in capsys.readouterr().out
    assert summary["bootstrap"]["low"] <= summary["difference"] <= summary["bootstrap"]["high"]


def test_a_refusal_as_a_user_sees_it(runs, tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_script(*COMMAND, "--a", tmp_path / "empty", "--b", runs / "b0", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'empty'} is no run folder (.hydra/, checkpoints/) and no sweep folder (jobs with "
        "summary.json): give one of those or a .ckpt file"
    ]
    assert result.stdout == ""


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--a", "missing", "--b", "b0"], "does not exist: give a run folder"),
        (["--a", "unfinished", "--b", "b0"], "is a sweep with no finished job"),
        (["--a", "b0", "b0", "--b", "b1"], "names .*b0/checkpoints/best.ckpt twice"),
        (["--a", "sweep_a", "--b", "b0", "b1", "--split", "val"], "evaluated on other val images than"),
        (["--a", "sweep_a", "--b", "b0", "--out", "b0/compare"], "lies in .*b0, which this command reads"),
        (["--a", "sweep_a", "--b", "b0", "--out", "sweep_a/0/summary.json"], "is a file: name a folder"),
        (["--a", "sweep_a", "--b", "b0", "--split", "train2"], "invalid choice: 'train2'"),
        (["--a", "sweep_a"], "the following arguments are required: --b"),
    ],
)
def test_refusals(runs, monkeypatch, arguments, message):
    (runs / "unfinished" / "0" / ".hydra").mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(runs)
    before = sorted(p for p in runs.rglob("*"))
    with pytest.raises(UserError, match=message):
        compare(arguments)
    assert sorted(p for p in runs.rglob("*")) == before  # nothing written


def test_runs_of_other_classes_are_refused(runs, tmp_path):
    data = write_cifar(tmp_path / "data")
    train_run([*FAST, f"data.root={data}", "data.verify=false"], tmp_path / "cifar")
    with pytest.raises(UserError, match=r"the runs' classes differ: .* class_0, .*\(10\), .* airplane, .*\(10\)"):
        compare(["--a", str(runs / "b0"), "--b", str(tmp_path / "cifar")])
