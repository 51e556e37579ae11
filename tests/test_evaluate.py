"""evaluate.py on a tiny checkpoint trained here: files, numbers, checkpoint choice and every error."""

import os
import pickle
import re

import numpy as np
import pytest
import torch
from conftest import FAST, run_script, train_run, write_cifar, write_folder
from PIL import Image

from cifar_lightning.blocks.errors import UserError
from cifar_lightning.blocks.metrics import evaluate_predictions
from cifar_lightning.store.checkpoints import load_model
from cifar_lightning.store.locate import resolve
from cifar_lightning.tasks.cli import compose_config
from cifar_lightning.tasks.evaluate import evaluate

FILES = {
    "classification_report.txt",
    "metrics.json",
    "confusion_matrix.png",
    "misclassified.png",
    "training_curves.png",
    "reliability.png",
    "risk_coverage.png",
    "report.md",
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """outputs/ with two finished runs (2 epochs each) on tiny CIFAR files; the second is the newer."""
    tmp = tmp_path_factory.mktemp("evaluate")
    data = write_cifar(tmp / "data")
    outputs = tmp / "outputs"
    runs = []
    for name in ("older", "newer"):
        run = outputs / "runs" / name
        summary = train_run([*FAST, "epochs=2", f"data.root={data}", "data.verify=false"], run)
        runs.append((run, summary))
    for name in ("best", "last"):  # make "older" unambiguously older
        os.utime(runs[0][0] / "checkpoints" / f"{name}.ckpt", (1, 1))
    return {"data": data, "outputs": outputs, "runs": runs}


def run_evaluate(trained, *overrides) -> dict:
    return evaluate(compose_config("evaluate", [f"outputs={trained['outputs']}", *overrides]))


def test_writes_every_file_with_valid_figures(trained):
    metrics = run_evaluate(trained)
    newer = trained["runs"][1][0]
    out = newer / "eval" / "test"
    assert {p.name for p in out.iterdir()} == FILES
    assert metrics["checkpoint"] == str(newer / "checkpoints" / "best.ckpt")
    for png in out.glob("*.png"):
        with Image.open(png) as image:
            image.verify()
        with Image.open(png) as image:
            assert image.format == "PNG" and 400 <= image.width <= 3000 and 300 <= image.height <= 3000, png.name
    report = (out / "report.md").read_text()
    assert all(f"({name})" in report for name in FILES if name.endswith(".png"))
    text = (out / "classification_report.txt").read_text()
    assert "precision" in text and "airplane" in text and "weighted avg" in text


def test_numbers_equal_a_direct_computation(trained):
    metrics = run_evaluate(trained, "split=test")
    model = load_model(resolve("best", trained["outputs"]))
    raw = pickle.loads((trained["data"] / "cifar-10-batches-py" / "test_batch").read_bytes(), encoding="latin1")
    images = torch.from_numpy(raw["data"].reshape(-1, 3, 32, 32))
    labels = np.array(raw["labels"])
    with torch.no_grad():
        predicted = model(model.normalize(images)).argmax(1).numpy()
    assert metrics["accuracy"] == pytest.approx((predicted == labels).mean(), abs=1e-6)
    for c, name in enumerate(metrics["per_class"]):
        tp = ((predicted == c) & (labels == c)).sum()
        precision = tp / max((predicted == c).sum(), 1)
        recall = tp / max((labels == c).sum(), 1)
        row = metrics["per_class"][name]
        assert row["support"] == (labels == c).sum()
        assert row["precision"] == pytest.approx(precision, abs=1e-6)
        assert row["recall"] == pytest.approx(recall, abs=1e-6)
    assert np.array(metrics["confusion_matrix"]).trace() == (predicted == labels).sum()


def test_validation_accuracy_matches_what_training_logged(trained):
    run, summary = trained["runs"][1]
    metrics = run_evaluate(trained, f"ckpt={run}", "split=val")
    assert metrics["accuracy"] == pytest.approx(summary["best_val_acc"], abs=1e-6)
    assert metrics["samples"] == 40


def test_perfect_and_constant_classifiers():
    labels = torch.arange(40) % 4
    perfect = evaluate_predictions(torch.nn.functional.one_hot(labels, 4).float() * 20, labels, list("abcd"))
    assert perfect.metrics["accuracy"] == 1 and perfect.metrics["macro_avg"]["f1"] == pytest.approx(1)
    assert perfect.metrics["ece"] == pytest.approx(0, abs=1e-6) and perfect.confusion.trace() == 40

    constant = evaluate_predictions(torch.tensor([[5.0, 0, 0, 0]]).repeat(40, 1), labels, list("abcd"))
    m = constant.metrics
    assert m["accuracy"] == pytest.approx(0.25) and m["top3_accuracy"] == pytest.approx(0.75)
    assert m["per_class"]["a"] == pytest.approx({"precision": 0.25, "recall": 1.0, "f1": 0.4, "support": 10})
    assert m["per_class"]["b"]["recall"] == 0 and m["macro_avg"]["f1"] == pytest.approx(0.1)
    confidence = torch.tensor([5.0, 0, 0, 0]).softmax(0)[0].item()
    assert m["ece"] == pytest.approx(confidence - 0.25, abs=1e-5)  # one bin: confidence vs accuracy
    assert constant.confusion[:, 0].tolist() == [10, 10, 10, 10]


def test_best_picks_the_most_recent_run_and_its_highest_val_acc(trained):
    older, newer = (run for run, _ in trained["runs"])
    assert resolve("best", trained["outputs"]) == newer / "checkpoints" / "best.ckpt"
    assert resolve("last", trained["outputs"]) == newer / "checkpoints" / "last.ckpt"
    assert resolve(str(older), trained["outputs"]) == older / "checkpoints" / "best.ckpt"
    saved = torch.load(newer / "checkpoints" / "best.ckpt", weights_only=True)
    column = _column(newer, "val/acc")
    logged = {
        int(line.split(",")[_column(newer, "epoch")]): float(line.split(",")[column])
        for line in (newer / "metrics.csv").read_text().splitlines()[1:]
        if line.split(",")[column]
    }
    assert saved["callbacks"]["BestCheckpoint"]["best_model_score"] == max(logged.values())
    assert logged[saved["epoch"]] == max(logged.values())  # the weights are those of the best epoch


def _column(run, name):
    return (run / "metrics.csv").read_text().splitlines()[0].split(",").index(name)


def test_tta_averages_the_image_and_its_mirror_and_is_recorded(trained):
    metrics = run_evaluate(trained, "tta=true")
    model = load_model(resolve("best", trained["outputs"]))
    raw = pickle.loads((trained["data"] / "cifar-10-batches-py" / "test_batch").read_bytes(), encoding="latin1")
    x = model.normalize(torch.from_numpy(raw["data"].reshape(-1, 3, 32, 32)))
    labels = torch.tensor(raw["labels"])
    with torch.no_grad():
        mirrored = (model(x) + model(x.flip(3))) / 2
    assert metrics["tta"] == 1
    assert metrics["loss"] == pytest.approx(torch.nn.functional.cross_entropy(mirrored, labels).item(), abs=1e-5)
    assert metrics["accuracy"] == pytest.approx((mirrored.argmax(1) == labels).float().mean().item(), abs=1e-6)
    assert metrics["tta_fraction"] == 1.0 and metrics["forward_passes_per_image"] == 2
    plain = run_evaluate(trained, "tta=0")
    assert plain["tta"] == 0 and plain["loss"] != pytest.approx(metrics["loss"], abs=1e-6)
    assert plain["forward_passes_per_image"] == 1
    selective = run_evaluate(trained, "tta=2", "tta_fraction=0.25")
    assert selective["tta_fraction"] == 0.25 and selective["forward_passes_per_image"] == 2.25


def test_corruption_report_is_what_the_model_does_on_the_corrupted_images(trained):
    from cifar_lightning.blocks.corruptions import CORRUPTIONS, corrupt
    from cifar_lightning.blocks.robustness import choose

    metrics = run_evaluate(trained, "corruptions=all", "corruptions.images=20", "corruptions.seed=4")
    out = trained["runs"][1][0] / "eval" / "test"
    assert {"corruptions.png", "corruption_examples.png"} < {p.name for p in out.iterdir()}
    report = metrics["corruptions"]
    assert list(report["accuracy"]) == list(CORRUPTIONS) and all(len(r) == 5 for r in report["accuracy"].values())
    table = torch.tensor(list(report["accuracy"].values()))
    assert report["mean_corruption_accuracy"] == pytest.approx(table.mean().item())
    assert report["per_severity"] == pytest.approx(table.mean(0).tolist())
    assert report["relative_accuracy"] == pytest.approx(report["mean_corruption_accuracy"] / report["clean_accuracy"])
    assert report["images"] == 20 and "synthesised" in report["frost"]
    # one cell recomputed: the same 20 images, corrupted with the same seed, through the model directly
    model = load_model(resolve("best", trained["outputs"]))
    raw = pickle.loads((trained["data"] / "cifar-10-batches-py" / "test_batch").read_bytes(), encoding="latin1")
    chosen = choose(len(raw["labels"]), 20, 4)
    images = torch.from_numpy(raw["data"].reshape(-1, 3, 32, 32))[chosen]
    labels = torch.tensor(raw["labels"])[chosen]
    with torch.no_grad():
        predicted = model(model.normalize(corrupt(images, "fog", 3, seed=4))).argmax(1)
    assert report["accuracy"]["fog"][2] == pytest.approx((predicted == labels).float().mean().item())
    assert "## Corruptions" in (out / "report.md").read_text() and "| fog |" in (out / "report.md").read_text()


@pytest.mark.parametrize(
    "override, message",
    [
        ("corruptions.names=[fog,rain]", "corruptions.names: rain is not one of the corruptions"),
        ("corruptions.severities=[0,6]", "corruptions.severities=[0, 6] must list severities from 1 to 5"),
        ("corruptions.images=0", "corruptions.images=0 must be a whole number of at least 1"),
        ("corruptions.tta=7", "corruptions.tta=7 must be one of null, 0, 1, 2"),
    ],
)
def test_corruption_options_are_checked_in_one_line(trained, override, message):
    with pytest.raises(UserError, match=re.escape(message)):
        run_evaluate(trained, "corruptions=all", override)


@pytest.mark.parametrize(
    "make, overrides, message",
    [
        (None, ["outputs=/nonexistent/outputs"], "no training runs with a best.ckpt under"),
        (None, ["ckpt=/nonexistent/model.ckpt"], "does not exist"),
        (None, ["split=train"], "split='train' does not exist"),
        (
            lambda tmp, run: (tmp / "x.ckpt").write_text("not a checkpoint"),
            ["ckpt={tmp}/x.ckpt"],
            "not a readable checkpoint",
        ),
        (
            lambda tmp, run: (tmp / "x.ckpt").write_bytes((run / "checkpoints" / "best.ckpt").read_bytes()[:5000]),
            ["ckpt={tmp}/x.ckpt"],
            "not a readable checkpoint",
        ),
        (
            lambda tmp, run: torch.save({"state_dict": {}, "epoch": 3}, tmp / "x.ckpt"),
            ["ckpt={tmp}/x.ckpt"],
            "not a cifar-lightning checkpoint",
        ),
        (
            lambda tmp, run: write_folder(tmp / "folder"),
            ["data=folder", "data.root={tmp}/folder", "data.val_size=0"],
            "do not match the data",
        ),
        (lambda tmp, run: (tmp / "empty").mkdir(), ["ckpt={tmp}/empty"], "holds no checkpoints"),
    ],
)
def test_errors_are_clear_and_leave_earlier_outputs_alone(trained, tmp_path, make, overrides, message):
    run = trained["runs"][1][0]
    run_evaluate(trained)  # an earlier evaluation, which a failed one must leave intact
    before = {p.name: p.read_bytes() for p in (run / "eval" / "test").iterdir()}
    if make:
        make(tmp_path, run)
    with pytest.raises(UserError, match=message):
        run_evaluate(trained, *(o.format(tmp=tmp_path) for o in overrides))
    assert {p.name: p.read_bytes() for p in (run / "eval" / "test").iterdir()} == before


def test_a_checkpoint_that_would_run_code_is_refused_and_the_code_never_runs(trained, tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    checkpoint = torch.load(trained["runs"][1][0] / "checkpoints" / "best.ckpt", weights_only=True)
    checkpoint["extra"] = Payload()
    torch.save(checkpoint, tmp_path / "evil.ckpt")
    with pytest.raises(UserError, match="was refused"):
        run_evaluate(trained, f"ckpt={tmp_path / 'evil.ckpt'}")
    assert not marker.exists()

    checkpoint.pop("extra")
    checkpoint["hyper_parameters"]["net"] = {"_target_": "os.system", "command": f"touch {marker}"}
    torch.save(checkpoint, tmp_path / "target.ckpt")
    with pytest.raises(UserError, match="net._target_='os.system' is not one of the nets"):
        run_evaluate(trained, f"ckpt={tmp_path / 'target.ckpt'}")
    assert not marker.exists()


def test_cli_errors_are_one_line_without_traceback(tmp_path):
    result = run_script("evaluate.py", f"outputs={tmp_path}")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: no training runs")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "script, override, message",
    [
        ("evaluate.py", "tta=5", "tta=5 must be one of null, 0, 1, 2"),
        (
            "evaluate.py",
            "tta_fraction=0",
            "tta_fraction=0 must be a share in (0, 1]: 1 gives every image the TTA views",
        ),
        ("evaluate.py", "misclassified=-1", "misclassified=-1 must be a whole number of at least 0"),
        ("predict.py", "top_k=0", "top_k=0 must be a whole number of at least 1"),
        ("predict.py", "tta=abc", "tta='abc' must be one of null, 0, 1, 2"),
        ("export.py", "tolerance=abc", "tolerance='abc' must be a number of at least 0"),
        ("export.py", "check_images=0", "check_images=0 must be a whole number of at least 1"),
        # the absolute path checked, from the working folder
        ("predict.py", "csv=no_such_folder/p.csv", "csv=no_such_folder/p.csv: the folder {cwd}/no_such_folder does"),
        ("predict.py", "csv=tests", "csv=tests: {cwd}/tests is a folder: name a file"),
        ("export.py", "output=no_such_folder/m.onnx", "output=no_such_folder/m.onnx: the folder {cwd}/no_such_folder"),
    ],
)
def test_task_options_are_checked_in_one_line(trained, tmp_path, script, override, message):
    from cifar_lightning.tasks.export import export
    from cifar_lightning.tasks.predict import predict

    task = {"evaluate.py": evaluate, "predict.py": predict, "export.py": export}[script]
    extra = [f"images={tmp_path}"] if script == "predict.py" else []
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "an image.png")
    with pytest.raises(UserError, match=re.escape(message.format(cwd=os.getcwd()))):
        task(compose_config(script.removesuffix(".py"), [f"outputs={trained['outputs']}", override, *extra]))
