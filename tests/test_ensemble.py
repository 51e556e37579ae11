"""Ensembles (evaluate.py / predict.py / export.py with ckpt= a sweep folder or a list of runs): the mean of the
members' calibrated probabilities against a direct computation, one member equal to the member, a sweep with failed
and pruned jobs, and every refusal in one line."""

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
import yaml
from conftest import FAST, run_script, train_run
from PIL import Image

from cifar_lightning.blocks import conformal
from cifar_lightning.blocks.calibration import fit_temperature
from cifar_lightning.blocks.conformal import calibration_scores
from cifar_lightning.blocks.data import ImageDataModule
from cifar_lightning.blocks.datasets import make_synthetic, read_image
from cifar_lightning.blocks.ensemble import average
from cifar_lightning.blocks.errors import UserError
from cifar_lightning.store.checkpoints import load_model, write_temperature
from cifar_lightning.store.locate import checkpoints_of
from cifar_lightning.store.runs import RunFolder
from cifar_lightning.tasks.cli import compose_config
from cifar_lightning.tasks.ensemble import evaluate_any
from cifar_lightning.tasks.export import export
from cifar_lightning.tasks.predict import predict


def fake_run(folder, summary):
    """A job folder as train.py leaves it, without the training: .hydra/ and, unless it failed, summary.json."""
    (folder / ".hydra").mkdir(parents=True)
    if summary:
        (folder / "summary.json").write_text(json.dumps(summary))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, trained):
    """sweep/0 and sweep/1: two tiny runs on synthetic data (seeds 0, 1); sweep/2 pruned (a copy of 0 marked so);
    sweep/3 failed (no summary.json); and `three`, a run on three of the synthetic classes."""
    tmp = tmp_path_factory.mktemp("ensemble")
    for seed in (0, 1):
        trained([*FAST, "data=synthetic", f"seed={seed}"], tmp / "sweep" / str(seed))
    pruned = tmp / "sweep" / "2"
    shutil.copytree(tmp / "sweep" / "0", pruned)
    summary = json.loads((pruned / "summary.json").read_text())
    (pruned / "summary.json").write_text(json.dumps({**summary, "pruned": True}))
    fake_run(tmp / "sweep" / "3", None)
    train_run([*FAST, "data=synthetic", "data.classes=[class_0,class_1,class_2]"], tmp / "three")
    return tmp


def evaluate(*overrides) -> dict:
    return evaluate_any(compose_config("evaluate", list(overrides)))


def direct(folder, images) -> torch.Tensor:
    """A member's calibrated probabilities, computed here: softmax(logits / T), no TTA (the runs' level)."""
    model = load_model(folder / "checkpoints" / "best.ckpt")
    with torch.no_grad():
        return (model(model.normalize(images)) / model.temperature).softmax(1)


def test_a_sweeps_ensemble_is_the_mean_of_its_finished_members(sweep, capsys):
    metrics = evaluate(f"ckpt={sweep / 'sweep'}")
    out = sweep / "sweep" / "eval" / "test"
    assert {"metrics.json", "report.md", "classification_report.txt", "risk_coverage.png", "misclassified.png"} <= {
        p.name for p in out.iterdir()
    }
    assert json.loads((out / "metrics.json").read_text()) == metrics
    resume, printed = f"python train.py -m resume={sweep / 'sweep'}", capsys.readouterr().out
    left_out = f"1 pruned (stopped early), 1 unfinished ({resume} finishes them) left out"
    assert f"note: {sweep / 'sweep'}: {left_out}" in printed
    members = [sweep / "sweep" / s for s in ("0", "1")]  # not 2 (pruned), not 3 (failed)
    best = [str(m / "checkpoints" / "best.ckpt") for m in members]
    assert f"ensemble of 2: {best[0]}, {best[1]}\n" in printed
    assert [m["checkpoint"] for m in metrics["members"]] == [str(m / "checkpoints" / "best.ckpt") for m in members]

    data = ImageDataModule(source="synthetic", val_size=40)  # FAST's split of the synthetic images
    data.setup("fit")
    labels = make_synthetic().test_labels
    each = [direct(m, make_synthetic().test_images) for m in members]
    # pool, then calibrate: the log of the members' mean divided by the ensemble's own temperature, fitted here on
    # the members' mean over the validation split
    val = data.splits["val"]
    temperature = fit_temperature(sum(direct(m, val.images) for m in members).div(2).log(), val.labels)
    assert temperature != 1.0, "the tiny members classify every validation image right: nothing to calibrate"
    assert metrics["calibration"]["temperature"] == pytest.approx(temperature, rel=1e-4)
    mean = ((each[0] + each[1]) / 2).log().div(temperature).softmax(1)
    right = mean[torch.arange(len(labels)), labels]
    assert metrics["accuracy"] == pytest.approx(float((mean.argmax(1) == labels).float().mean()), abs=1e-6)
    assert metrics["ensemble"]["nll"] == pytest.approx(float(-right.log().mean()), rel=1e-4)
    brier = float((mean - torch.nn.functional.one_hot(labels, 10)).square().sum(1).mean())
    assert metrics["ensemble"]["brier"] == pytest.approx(brier, rel=1e-4)
    for member, p in zip(metrics["members"], each):
        assert member["accuracy"] == pytest.approx(float((p.argmax(1) == labels).float().mean()), abs=1e-6)
    # the ensemble's conformal sets: calibrated on the members' shared validation split (FAST: 40 images)
    assert metrics["conformal"]["calibration_images"] == 40
    assert [r["coverage"] for r in metrics["conformal"]["levels"]] == [0.9, 0.95]
    assert "Members" in (out / "report.md").read_text()


def test_a_job_still_training_is_counted_apart_from_the_unfinished_ones(sweep, tmp_path):
    copy = shutil.copytree(sweep / "sweep", tmp_path / "sweep", ignore=shutil.ignore_patterns("eval", "*.onnx"))
    fake_run(copy / "4", None)
    with RunFolder(copy / "4").training():  # a live job: resume would refuse it, it has to finish
        found, note = checkpoints_of(str(copy))
    assert [c.parent.parent.name for c in found] == ["0", "1"]
    resume = f"python train.py -m resume={copy}"
    assert note == f"{copy}: 1 pruned (stopped early), 1 still training, 1 unfinished ({resume} finishes them) left out"


def test_an_ensemble_of_one_equals_its_member(sweep, tmp_path):
    run = sweep / "sweep" / "1"
    single = evaluate(f"ckpt={run}")
    one = evaluate(f"ckpt=[{run}]", f"out={tmp_path / 'one'}")
    assert one["accuracy"] == single["accuracy"] and one["confusion_matrix"] == single["confusion_matrix"]
    for key in ("ece", "mce", "nll", "brier"):
        assert one["ensemble"][key] == pytest.approx(single["calibration"]["after"][key], rel=1e-5, abs=1e-7)
    assert one["selective"] == pytest.approx(single["selective"])
    assert one["members"][0]["conformal"] == single["conformal"]  # the checkpoint's own scores
    # and the ensemble's sets, calibrated here on the same split from the same probabilities, match them
    for mine, theirs in zip(one["conformal"]["levels"], single["conformal"]["levels"], strict=True):
        assert {k: mine[k] for k in ("coverage", "empirical_coverage", "mean_set_size")} == pytest.approx(
            {k: theirs[k] for k in ("coverage", "empirical_coverage", "mean_set_size")}
        )


def test_predict_with_a_sweep_gives_the_ensembles_calibrated_probabilities_and_sets(sweep, tmp_path, capsys):
    data = make_synthetic()
    for i in range(3):
        Image.fromarray(data.test_images[i].permute(1, 2, 0).numpy()).save(tmp_path / f"{i}.png")
    sweep_only = [f"ckpt={sweep / 'sweep'}", f"images={tmp_path}"]
    rows = predict(compose_config("predict", [*sweep_only, "top_k=2", "coverage=0.9"]))
    images = torch.stack([read_image(tmp_path / f"{i}.png", 32) for i in range(3)])
    # as evaluate.py computes it: the log of the members' mean, divided by the temperature fitted on that mean over
    # the members' validation split (FAST: 40 images)
    fit = ImageDataModule(source="synthetic", val_size=40)
    fit.setup("fit")
    val, members = fit.splits["val"], [sweep / "sweep" / s for s in ("0", "1")]
    temperature = fit_temperature(sum(direct(m, val.images) for m in members).div(2).log(), val.labels)
    assert f"ensemble temperature {temperature:.3f} (fitted on 40 validation images" in capsys.readouterr().out
    mean = sum(direct(m, images) for m in members).div(2).log().div(temperature).softmax(1)
    top = mean.topk(2, dim=1)
    for row, values, indices in zip(rows, top.values, top.indices):
        assert [name for name, _ in row["top"]] == [f"class_{i}" for i in indices.tolist()]
        assert [p for _, p in row["top"]] == pytest.approx(values.tolist(), abs=1e-5)
    # its sets at 90%: RAPS with the scores of the ensemble's own calibrated probabilities on that split
    scores = calibration_scores(sum(direct(m, val.images) for m in members).div(2).log().div(temperature).softmax(1),
                                val.labels)  # fmt: skip
    sets = conformal.prediction_sets(mean, conformal.threshold(scores, 0.9, "raps"), "raps")
    assert [set(row["set"]) for row in rows] == [{f"class_{i}" for i in s.nonzero().flatten().tolist()} for s in sets]
    assert all(row["set"][0] == row["top"][0][0] for row in rows)  # raps keeps the top class, listed first
    evaluated = evaluate(f"ckpt={sweep / 'sweep'}")  # the same temperature as evaluate.py's
    assert evaluated["calibration"]["temperature"] == pytest.approx(temperature, rel=1e-4)
    # an ensemble of one is that run: its temperature on top fits to 1
    one = predict(compose_config("predict", [f"ckpt=[{sweep / 'sweep' / '0'}]", f"images={tmp_path}"]))
    single = predict(compose_config("predict", [f"ckpt={sweep / 'sweep' / '0'}", f"images={tmp_path}"]))
    assert [[name for name, _ in r["top"]] for r in one] == [[name for name, _ in r["top"]] for r in single]
    assert [p for r in one for _, p in r["top"]] == pytest.approx([p for r in single for _, p in r["top"]], abs=1e-4)


def test_predicts_csv_is_never_a_file_of_any_members_run(sweep, tmp_path):
    """Not the first member's only: a record of the second, or a new file in one of its folders, is refused."""
    Image.fromarray(make_synthetic().test_images[0].permute(1, 2, 0).numpy()).save(tmp_path / "0.png")
    second = sweep / "sweep" / "1"
    for target in (second / "summary.json", second / "checkpoints" / "new.csv"):
        before = {p: p.read_bytes() for p in second.rglob("*") if p.is_file()}
        with pytest.raises(UserError, match=f"^csv=.* would write over {target}, a file of the run {second}: name"):
            predict(
                compose_config("predict", [f"ckpt={sweep / 'sweep'}", f"images={tmp_path / '0.png'}", f"csv={target}"])
            )
        assert {p: p.read_bytes() for p in second.rglob("*") if p.is_file()} == before


def test_an_ensemble_without_a_validation_split_keeps_the_mean_and_refuses_sets(sweep, tmp_path, capsys):
    runs = []
    for seed in ("0", "1"):  # copies whose recorded data held nothing out
        runs.append(shutil.copytree(sweep / "sweep" / seed, tmp_path / "runs" / seed))
        config = yaml.safe_load((runs[-1] / ".hydra" / "config.yaml").read_text())
        config["data"]["val_size"] = 0
        (runs[-1] / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    Image.fromarray(make_synthetic().test_images[0].permute(1, 2, 0).numpy()).save(tmp_path / "0.png")
    both = [f"ckpt=[{runs[0]},{runs[1]}]", f"images={tmp_path / '0.png'}"]
    with pytest.raises(UserError, match="^[^\n]*hold out none in common \\(data.val_size=0\\): drop coverage=$"):
        predict(compose_config("predict", [*both, "coverage=0.9"]))
    (row,) = predict(compose_config("predict", [*both, "top_k=1"]))
    image = read_image(tmp_path / "0.png", 32)[None]
    mean = (direct(runs[0], image) + direct(runs[1], image)) / 2
    assert row["top"][0] == (f"class_{int(mean.argmax())}", pytest.approx(float(mean.max()), abs=1e-5))
    out = export(compose_config("export", [both[0], f"output={tmp_path / 'mean.onnx'}", "check_images=8"]))
    printed = capsys.readouterr().out
    assert printed.count("ensemble temperature 1.000 (no validation split held out in common: the plain mean)") == 2
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = torch.tensor(session.run(["logits"], {"images": image.numpy()})[0]).softmax(1)
    assert torch.allclose(got, mean, atol=1e-5)


def test_export_of_an_ensemble_is_one_graph_of_its_calibrated_mean(sweep, tmp_path):
    out = export(compose_config("export", [f"ckpt={sweep / 'sweep'}", "check_images=50"]))
    assert out == sweep / "sweep" / "model.onnx"
    images = make_synthetic().test_images[:8]
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = torch.tensor(session.run(["logits"], {"images": images.numpy()})[0]).softmax(1)
    # the members at TTA 0 (their own level here), so the temperature is evaluate.py's
    temperature = evaluate(f"ckpt={sweep / 'sweep'}")["calibration"]["temperature"]
    members = [sweep / "sweep" / s for s in ("0", "1")]
    expected = sum(direct(m, images) for m in members).div(2).log().div(temperature).softmax(1)
    assert torch.allclose(got, expected, atol=1e-5)
    listed = f"ckpt=[{members[0]},{members[1]}]"
    for overrides, message in [
        ([listed], "say where their ensemble's model goes with output=FILE"),
        (
            [listed, f"output={members[1] / 'model.onnx'}"],
            "lies in a member's run folder: choose a file outside the runs",
        ),
        ([f"ckpt={sweep / 'sweep'}", "format=mlflow"], "format=mlflow registers one run's model; use format=onnx"),
    ]:
        with pytest.raises(UserError, match=f"^[^\\n]*{message}$"):
            export(compose_config("export", overrides))
    assert not (members[1] / "model.onnx").exists()
    written = export(compose_config("export", [listed, f"output={tmp_path / 'two.onnx'}", "check_images=8"]))
    again = onnxruntime.InferenceSession(str(written), providers=["CPUExecutionProvider"])
    assert torch.allclose(torch.tensor(again.run(["logits"], {"images": images.numpy()})[0]).softmax(1), got, atol=1e-6)


def mirrored(folder, images) -> torch.Tensor:
    """A member's calibrated probabilities at TTA 1: softmax of the mean of its logits and its mirror's, over T."""
    model = load_model(folder / "checkpoints" / "best.ckpt")
    x = model.normalize(images)
    with torch.no_grad():
        return ((model(x) + model(x.flip(3))) / 2 / model.temperature).softmax(1)


def test_an_ensemble_is_calibrated_on_what_its_members_held_out_at_the_tta_it_predicts_with(sweep, tmp_path):
    """Members at TTA 1: evaluate.py fits the ensemble's temperature on their mirrored validation probabilities, also
    when data= evaluates other images; export.py's graph has no TTA, so its temperature is fitted at TTA 0, and
    predict.py tta=0 coverage= recalibrates the ensemble's sets at that level too."""
    runs = [shutil.copytree(sweep / "sweep" / seed, tmp_path / "runs" / seed) for seed in ("0", "1")]
    for run in runs:
        checkpoint = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
        checkpoint["hyper_parameters"]["tta"] = 1
        torch.save(checkpoint, run / "checkpoints" / "best.ckpt")
    fit = ImageDataModule(source="synthetic", val_size=40)
    fit.setup("fit")
    val = fit.splits["val"]
    at_tta1 = fit_temperature(sum(mirrored(r, val.images) for r in runs).div(2).log(), val.labels)
    at_tta0 = fit_temperature(sum(direct(r, val.images) for r in runs).div(2).log(), val.labels)
    assert at_tta1 != pytest.approx(at_tta0, rel=1e-3)
    both = f"ckpt=[{runs[0]},{runs[1]}]"
    assert evaluate(both, f"out={tmp_path / 'e'}")["calibration"]["temperature"] == pytest.approx(at_tta1, rel=1e-4)
    # data= holding out 100 images, 60 of which the members trained on: still calibrated on their own 40
    other = evaluate(both, f"out={tmp_path / 'd'}", "data=synthetic", "data.val_size=100")
    assert other["calibration"]["temperature"] == pytest.approx(at_tta1, rel=1e-4)

    images = make_synthetic().test_images[:8]
    out = export(compose_config("export", [both, f"output={tmp_path / 'e.onnx'}", "check_images=8"]))
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = torch.tensor(session.run(["logits"], {"images": images.numpy()})[0]).softmax(1)
    expected = sum(direct(r, images) for r in runs).div(2).log().div(at_tta0).softmax(1)
    assert torch.allclose(got, expected, atol=1e-5)

    Image.fromarray(images[0].permute(1, 2, 0).numpy()).save(tmp_path / "0.png")
    (row,) = predict(
        compose_config("predict", [both, f"images={tmp_path / '0.png'}", "tta=0", "coverage=0.9", "top_k=1"])
    )
    one = read_image(tmp_path / "0.png", 32)[None]
    p = sum(direct(r, one) for r in runs).div(2).log().div(at_tta0).softmax(1)[0]
    assert row["top"][0] == (f"class_{int(p.argmax())}", pytest.approx(float(p.max()), abs=1e-5))
    assert row["set"][0] == row["top"][0][0]


def other_data(sweep, tmp_path):
    """A copy of sweep/0 whose recorded data holds out 60 validation images: another data config."""
    copy = tmp_path / "other"
    shutil.copytree(sweep / "sweep" / "0", copy)
    config = yaml.safe_load((copy / ".hydra" / "config.yaml").read_text())
    config["data"]["val_size"] = 60
    (copy / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    return copy


def test_members_without_a_validation_split_in_common_keep_the_plain_mean_with_data(sweep, tmp_path, capsys):
    """With data=, members of other data configs (k-fold members hold out other folds) or loose checkpoints (data
    unknown) are evaluated on data='s images, and with no validation split they all held out the ensemble keeps
    the plain mean: temperature 1, no conformal sets of its own."""
    loose = tmp_path / "loose"
    loose.mkdir()
    shutil.copyfile(sweep / "sweep" / "1" / "checkpoints" / "best.ckpt", loose / "b.ckpt")
    images, labels = make_synthetic().test_images, make_synthetic().test_labels
    first = sweep / "sweep" / "0"
    cases = [(other_data(sweep, tmp_path), first, []), (loose / "b.ckpt", sweep / "sweep" / "1", ["coverage=[]"])]
    for second, source, levels in cases:  # the default coverage too: no sets without scores of the ensemble's own
        metrics = evaluate(f"ckpt=[{first},{second}]", f"out={tmp_path / 'out'}", "data=synthetic", *levels)
        assert "hold out no validation split in common" in capsys.readouterr().out
        mean = (direct(first, images) + direct(source, images)) / 2
        assert metrics["calibration"]["temperature"] == 1.0 and "conformal" not in metrics
        nll = float(-mean[torch.arange(len(labels)), labels].log().mean())
        assert metrics["ensemble"]["nll"] == pytest.approx(nll, rel=1e-4)
    with pytest.raises(UserError, match="none in common \\(other data configs, such as folds, or loose checkpoints\\)"):
        evaluate(f"ckpt=[{first},{loose / 'b.ckpt'}]", f"out={tmp_path / 'o2'}", "data=synthetic", "coverage=0.9")
    # a list of loose checkpoints exports beside them: only the checkpoints themselves are the members' own
    shutil.copyfile(sweep / "sweep" / "0" / "checkpoints" / "best.ckpt", loose / "a.ckpt")
    listed = [f"ckpt=[{loose / 'a.ckpt'},{loose / 'b.ckpt'}]", "data=synthetic", "check_images=8"]
    assert export(compose_config("export", [*listed, f"output={loose / 'ens.onnx'}"])) == loose / "ens.onnx"
    with pytest.raises(UserError, match="a file this command reads: name another$"):
        export(compose_config("export", [*listed, f"output={loose / 'a.ckpt'}"]))
    # without data=, export has no images to check on; predict needs none: the plain mean of loose checkpoints
    with pytest.raises(UserError, match="^the members' data is unknown .*: name the images to check the export on"):
        export(compose_config("export", [listed[0], f"output={tmp_path / 'x.onnx'}"]))
    Image.fromarray(images[0].permute(1, 2, 0).numpy()).save(tmp_path / "0.png")
    (row,) = predict(compose_config("predict", [listed[0], f"images={tmp_path / '0.png'}", "top_k=1"]))
    one = read_image(tmp_path / "0.png", 32)[None]
    mean = (direct(first, one) + direct(sweep / "sweep" / "1", one)) / 2
    assert row["top"][0] == (f"class_{int(mean.argmax())}", pytest.approx(float(mean.max()), abs=1e-5))


def test_output_replaces_only_a_model_export_wrote(sweep, tmp_path):
    """An ONNX model of another kind (other inputs and outputs) is no earlier export: refused, kept."""
    import onnx

    other = tmp_path / "other.onnx"
    node = onnx.helper.make_node("Identity", ["x"], ["y"])
    info = [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1]) for n in ("x", "y")]
    onnx.save(onnx.helper.make_model(onnx.helper.make_graph([node], "g", info[:1], info[1:])), other)
    before = other.read_bytes()
    with pytest.raises(UserError, match=f"would write over {other}, which it did not write: name a new file$"):
        export(compose_config("export", [f"ckpt={sweep / 'sweep' / '0'}", f"output={other}"]))
    assert other.read_bytes() == before


@pytest.mark.parametrize(
    "case, message",
    [
        ("unfinished", "is a sweep with no finished job (none has summary.json): let it finish or resume it"),
        ("only_pruned", "holds only pruned jobs (stopped early): nothing finished to use"),
        ("pruned_and_unfinished", "nothing finished to use; 1 unfinished (python train.py -m resume="),
        ("no_run", "is no run folder (.hydra/, checkpoints/) and no sweep folder (jobs with summary.json)"),
        ("classes", "the ensemble's members differ in classes:"),
        ("data", "(data.val_size 60 vs 40): an ensemble's members are trained on the same data"),
        ("no_out", "names several runs: say where their ensemble's evaluation goes with out=DIR"),
        ("out_taken", "exists and is no ensemble evaluation"),
        ("calibrate", "calibrate=true, corruptions= and ood= take one run"),
        ("ood", "calibrate=true, corruptions= and ood= take one run"),
        ("empty_list", "ckpt=[] names no run"),
        ("no_checkpoint", "holds no checkpoint yet (stopped in its first epoch): train it again"),
        ("missing", "does not exist: give a run folder, a sweep folder or a .ckpt file"),
    ],
)
def test_refusals_in_one_line(sweep, tmp_path, case, message):
    s0 = sweep / "sweep" / "0"
    out = f"out={tmp_path / 'out'}"
    if case == "unfinished":
        fake_run(tmp_path / "unfinished" / "0", None)
        overrides = [f"ckpt={tmp_path / 'unfinished'}"]
    elif case in ("only_pruned", "pruned_and_unfinished"):
        fake_run(tmp_path / "pruned" / "0", {"pruned": True})
        if case == "pruned_and_unfinished":
            fake_run(tmp_path / "pruned" / "1", None)
        overrides = [f"ckpt={tmp_path / 'pruned'}"]
    elif case == "no_run":
        (tmp_path / "empty").mkdir()
        overrides = [f"ckpt={tmp_path / 'empty'}"]
    elif case == "classes":
        overrides = [f"ckpt=[{s0},{sweep / 'three'}]", out]
    elif case == "data":
        overrides = [f"ckpt=[{s0},{other_data(sweep, tmp_path)}]", out]
    elif case == "no_out":
        overrides = [f"ckpt=[{s0},{sweep / 'sweep' / '1'}]"]
    elif case == "out_taken":
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "mine.txt").write_text("keep me")
        overrides = [f"ckpt=[{s0}]", out]
    elif case == "calibrate":
        overrides = [f"ckpt={sweep / 'sweep'}", "calibrate=true"]
    elif case == "ood":
        overrides = [f"ckpt={sweep / 'sweep'}", "ood=generated"]
    elif case == "no_checkpoint":
        fake_run(tmp_path / "stopped", None)
        overrides = [f"ckpt=[{s0},{tmp_path / 'stopped'}]", out]
    elif case == "missing":
        overrides = [f"ckpt=[{s0},{tmp_path / 'nope'}]", out]
    else:
        overrides = ["ckpt=[]", out]
    with pytest.raises(UserError, match="^[^\n]*$") as raised:
        evaluate(*overrides)
    assert message in str(raised.value)
    assert not (tmp_path / "out" / "metrics.json").exists()
    if case == "out_taken":
        assert (tmp_path / "out" / "mine.txt").read_text() == "keep me"


def test_refusals_as_a_user_sees_them(sweep, tmp_path):
    fake_run(tmp_path / "unfinished" / "0", None)
    result = run_script("evaluate.py", f"ckpt={tmp_path / 'unfinished'}")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'unfinished'} is a sweep with no finished job (none has summary.json): let it finish or "
        f"resume it: python train.py -m resume={tmp_path / 'unfinished'}"
    ]
    with pytest.raises(UserError, match="out= places an ensemble's evaluation"):
        evaluate(f"ckpt={sweep / 'sweep' / '0'}", f"out={tmp_path / 'out'}")


def test_average_refuses_nothing_and_keeps_one_member_unchanged():
    p = torch.rand(4, 3).softmax(1)
    assert torch.equal(average([p]), p)
    with pytest.raises(ValueError):
        average([])
    assert np.allclose(average([p, 1 - p]).numpy(), 0.5)


def test_randomised_sets_of_an_ensemble_leave_out_a_member_whose_scores_lack_probabilities(sweep, tmp_path):
    runs = tmp_path / "runs"
    for seed in ("0", "1"):
        shutil.copytree(sweep / "sweep" / seed, runs / seed)
    both, randomised = f"ckpt=[{runs / '0'},{runs / '1'}]", "conformal_score=raps_randomized"
    drawn = evaluate(both, f"out={tmp_path / 'drawn'}", randomised)
    assert drawn["conformal"]["randomized"] is True
    assert all(member["conformal"]["randomized"] is True for member in drawn["members"])
    assert all("empty_sets" in row for row in drawn["conformal"]["levels"])
    best = runs / "1" / "checkpoints" / "best.ckpt"
    write_temperature(best, float(load_model(best).temperature), load_model(best).conformal_scores[:, 0])
    again = evaluate(both, f"out={tmp_path / 'again'}", randomised)
    assert "conformal" in again["members"][0] and "conformal" not in again["members"][1]
    assert again["conformal"] == drawn["conformal"]  # the ensemble's own sets, calibrated afresh, are the same


def test_the_ensemble_is_calibrated_as_one_model_on_the_validation_split():
    """Pool then calibrate: softmax(log(mean of the members' probabilities) / T), T fitted on the validation split."""
    from types import SimpleNamespace

    from cifar_lightning.tasks.ensemble import Member, compute

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3000, 10, generator=g) * 3  # two members' views of 1,000 val and 2,000 test images
    labels = torch.multinomial(logits.mean(0).softmax(1), 1, generator=g).squeeze(1)
    shown = (logits * 0.5).softmax(2)  # each member underconfident: the mean, more so
    members = [Member(Path(f"m{i}"), 0, 1.0, 1.0, shown[i, 1000:], shown[i, :1000], torch.empty(0)) for i in range(2)]
    split = SimpleNamespace(labels=labels[1000:], images=torch.zeros(2000, 3, 2, 2, dtype=torch.uint8))
    data = SimpleNamespace(
        splits={"test": split, "val": SimpleNamespace(labels=labels[:1000])}, class_names=list("abcdefghij"), root="d"
    )
    _, metrics, probabilities = compute(members, (data, data), "test", [0.9])
    pooled_val, pooled = (((shown[0] + shown[1]) / 2).log()[s] for s in (slice(0, 1000), slice(1000, None)))
    temperature = fit_temperature(pooled_val, labels[:1000])
    assert temperature < 0.9 and metrics["calibration"]["temperature"] == pytest.approx(temperature)
    expected = (pooled / temperature).softmax(1)
    assert torch.allclose(probabilities, expected, atol=1e-6)
    nll = float(-expected[torch.arange(2000), labels[1000:]].log().mean())
    assert metrics["ensemble"]["nll"] == pytest.approx(nll, rel=1e-4)
    assert metrics["calibration"]["after"]["ece"] < metrics["calibration"]["before"]["ece"]
