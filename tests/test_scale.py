"""DDP on two CPU processes, an Optuna study and ONNX export, each on tiny data."""

import numpy as np
import onnxruntime
import optuna
import pytest
import torch
import yaml
from conftest import FAST, HELPERS_ENV, run_script

from cifar_lightning.store.checkpoints import load_model

pytestmark = pytest.mark.slow
TINY = [o for o in FAST if not o.startswith(("batch_size=", "data.val_size="))]


def test_ddp_cpu_shards_batches_syncs_metrics_and_writes_once_and_stops_a_fractional_epoch(tmp_path):
    run = tmp_path / "run"
    result = run_script(
        "train.py",
        "trainer=ddp_cpu",
        "data=synthetic",
        *TINY,
        "epochs=1.5",
        "batch_size=50",
        "data.val_size=200",
        "+callbacks.record._target_=helpers.RecordIndices",
        f"+callbacks.record.dir={tmp_path}",
        f"hydra.run.dir={run}",
        env=HELPERS_ENV,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert output.count("are not fitted under DDP") == 1  # logged by rank 0 only
    ranks = [torch.load(tmp_path / f"indices_rank{r}.pt") for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 900  # 1,800 training images, half each (batches of 50)
    assert not set(ranks[0].tolist()) & set(ranks[1].tolist())
    assert set(ranks[0].tolist()) | set(ranks[1].tolist()) == set(range(1800))
    # one set of outputs, from rank 0; the validation accuracy is over all 200 images of both ranks
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    # 1.5 epochs of each process's 18 batches (900 images, batch 50), not of the unsharded 36
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 27
    summary = yaml.safe_load((run / "summary.json").read_text())
    evaluated = run_script("evaluate.py", f"ckpt={run}", "split=val")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    accuracy = yaml.safe_load((run / "eval" / "val" / "metrics.json").read_text())["accuracy"]
    assert accuracy == pytest.approx(summary["best_val_acc"], abs=1e-6)


def test_optuna_study_runs_and_records_a_failed_trial(tmp_path):
    result = run_script(
        "train.py",
        "-m",
        "hparams_search=optuna",
        "data=synthetic",
        *TINY,
        "data.val_size=200",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.sampler.n_startup_trials=3",
        "batch_size=choice(32,4000)",  # a sweep on the command line replaces that of the config; 4,000 fails
        "hydra.sweeper.sampler.seed=4",
        f"hydra.sweep.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p for p in tmp_path.iterdir() if p.is_dir() and p.name.isdigit())
    assert len(jobs) == 3
    finished = [j for j in jobs if (j / "summary.json").is_file()]
    failed = [j for j in jobs if not (j / "summary.json").is_file()]
    assert finished and failed, "sampler seed 4 draws both batch sizes"
    assert "batch_size=4000" in (failed[0] / ".hydra" / "overrides.yaml").read_text()
    best = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert best["best_params"]["batch_size"] == 32 and 0 <= best["best_value"] <= 1
    # the study, kept in the sweep folder (storage: null), recorded the failed trial as FAIL and went on
    study = optuna.load_study(study_name="cifar_lightning", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    states = {t.user_attrs["job"]: t.state for t in study.trials}
    assert states == {int(j.name): optuna.trial.TrialState.COMPLETE for j in finished} | {
        int(j.name): optuna.trial.TrialState.FAIL for j in failed
    }


def test_onnx_export_matches_pytorch(tmp_path, trained):
    run = tmp_path / "run"
    trained([*FAST, "data=synthetic"], run)
    result = run_script("export.py", f"ckpt={run}", "format=onnx")
    assert torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]["temperature"] != 1
    assert result.returncode == 0, result.stderr[-3000:]
    assert "top-1 agreement" in result.stdout and (run / "model.onnx").stat().st_size > 10_000
    model = load_model(run / "checkpoints" / "best.ckpt")
    session = onnxruntime.InferenceSession(str(run / "model.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 7):
        images = np.random.default_rng(batch).integers(0, 255, (batch, 3, 32, 32), dtype=np.uint8)
        got = session.run(["logits"], {"images": images})[0]
        with torch.no_grad():  # the graph takes raw uint8 images: normalisation is inside it
            expected = (model(model.normalize(torch.from_numpy(images))) / model.temperature).numpy()
        assert got.shape == (batch, 10) and np.abs(got - expected).max() < 1e-4
    (run / "model.onnx").write_bytes(b"an earlier export")
    refused = run_script("export.py", f"ckpt={run}", "format=onnx", "tolerance=0")  # no export is that exact
    assert refused.returncode == 1 and refused.stderr.strip().splitlines()[-1].endswith("; nothing written")
    assert (run / "model.onnx").read_bytes() == b"an earlier export" and not list(run.glob(".*.tmp"))
    bad = run_script("export.py", f"ckpt={run}", "format=tflite")
    assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1].startswith("error: format='tflite'")
