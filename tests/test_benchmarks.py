"""The benchmark scripts on tiny data: they run, alternate and report what the README quotes from them."""

import math
import re

import pytest
import torch
from conftest import NARROW, ROOT, run_script

from cifar_lightning.blocks import precision

TINY = ["data=synthetic", "batch_size=100", "data.eval_batch_size=200", "callbacks.progress_bar=null", NARROW]
# A measured number as printed: its value depends on the machine and its load, so a test checks only that it is one
MEASURED = r"(\S+?)"


def printed_pairs(out: str, body: str, pairs: int) -> list[tuple[str, ...]]:
    """The groups of each `pair N: <body>` line, checking that they are numbered 1 to `pairs` in order."""
    found = re.findall(rf"^pair (\d): {body}$", out, re.MULTILINE)
    assert [pair[0] for pair in found] == [str(n) for n in range(1, pairs + 1)]
    return [pair[1:] for pair in found]


def measured(text: str) -> float:
    """A printed speed, time or ratio as a number; any size passes, a negative, nan or inf one does not (rounded
    for print, a tiny one is 0)."""
    value = float(text)
    assert math.isfinite(value) and value >= 0, text
    return value


def test_compare_alternates_and_projects_each_recipe_to_its_whole_run():
    result = run_script(
        "benchmarks/compare.py",
        *("--a", "epochs=2", "--b", "epochs=5 module.tta=1"),
        *("--steps", "0", "--warmup", "2", "--pairs", "2", "--validate"),
        *TINY,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "pair 1 (a first)" in out and "pair 2 (b first)" in out  # the order alternates
    assert "a: epochs=2 data=synthetic" in out and "b: epochs=5 module.tta=1 data=synthetic" in out
    steps = dict(re.findall(r"^(\w): whole run projected \d+ s \((\d+) steps\)", out, re.MULTILINE))
    assert steps == {"a": str(2 * 18), "b": str(5 * 18)}  # 1,800 training images, batches of 100
    for line in ("training speed b/a: median", "one epoch with validation, time b/a: median", "time b/a: median"):
        assert line in out
    peak = re.search(rf"fp32 2048\^2 matmul here, now: {MEASURED} GFLOP/s", out)
    assert peak
    measured(peak[1])


@pytest.mark.parametrize(
    "script, args, code, message",
    [
        ("compare", ["--a", "experiment=nope"], 1, "error: In 'train': Could not find 'experiment/nope'"),
        ("compare", ["--b", "trainer.nope=1"], 1, "error: trainer.nope: trainer has no key 'nope'"),
        ("compare", ["--pairs", "0"], 2, "--pairs must be at least 1"),
        ("compare", ["--steps", "5", "--warmup", "5"], 2, "--warmup 0 or more and below --steps"),
        (
            "throughput",
            ["module.label_smoothing=2"],
            1,
            "error: module.label_smoothing=2 must be at least 0 and below 1",
        ),
    ],
)
def test_benchmarks_refuse_bad_input_in_one_line(script, args, code, message):
    result = run_script(f"benchmarks/{script}.py", *args, *TINY)
    assert result.returncode == code and "Traceback" not in result.stderr
    assert message in result.stderr.strip().splitlines()[-1]


def test_throughput_compares_pipeline_and_plain_loop_alternating():
    result = run_script("benchmarks/throughput.py", "--steps", "8", "--warmup", "2", "--pairs", "2", *TINY)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    pairs = printed_pairs(out, rf"plain loop {MEASURED} img/s, pipeline {MEASURED} img/s, ratio {MEASURED}", 2)
    for loop, pipeline, ratio in pairs:
        measured(loop)  # rates of any size
        measured(pipeline)
        assert measured(ratio) > 0
    median = re.search(rf"^pipeline / plain loop: median ratio {MEASURED} \(pairs: (.+)\)$", out, re.MULTILINE)
    assert median and measured(median[1]) > 0
    assert median[2] == ", ".join(pair[2] for pair in pairs)  # the pairs' own ratios, in their order
    peak = re.search(rf"GFLOP/s achieved vs {MEASURED} GFLOP/s fp32 matmul peak", out)
    assert peak
    measured(peak[1])


@pytest.mark.parametrize("chosen, dtype", [("32-true", None), ("bf16-mixed", torch.bfloat16)])
def test_the_plain_loop_trains_in_the_pipelines_precision(chosen, dtype, tmp_path, monkeypatch):
    """Else the 'Lightning overhead' ratio would compare bf16 steps with fp32 ones."""
    monkeypatch.syspath_prepend(ROOT / "benchmarks")
    import throughput
    from common import pipeline

    cfg, datamodule, module, _, _ = pipeline([*TINY, f"trainer.precision={chosen}"], tmp_path, steps=3, warmup=1)
    seen = []
    module.net.register_forward_hook(
        lambda *_: seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
    )
    train = datamodule.splits["train"]
    throughput.plain_loop(module, cfg, train.images, train.labels, steps=3, warmup=1)
    assert seen == [dtype] * 3


@pytest.mark.parametrize("scheduler, moves", [("step", False), ("onecycle", True)])
def test_the_plain_loop_moves_the_learning_rate_only_by_a_per_step_schedule(scheduler, moves, tmp_path, monkeypatch):
    """One pass over the data: an epoch's schedule (step: StepLR, halving every 10 epochs) keeps its lr over 12
    steps; a per-step one moves it."""
    monkeypatch.syspath_prepend(ROOT / "benchmarks")
    import throughput
    from common import pipeline

    cfg, datamodule, module, _, _ = pipeline([*TINY, f"scheduler={scheduler}"], tmp_path, steps=12, warmup=1)
    built = []
    real = module.optimizer_and_schedule

    def recording(steps):
        optimizer, schedule, interval = real(steps)
        built.append((optimizer, optimizer.param_groups[0]["lr"]))
        return optimizer, schedule, interval

    monkeypatch.setattr(module, "optimizer_and_schedule", recording)
    train = datamodule.splits["train"]
    throughput.plain_loop(module, cfg, train.images, train.labels, steps=12, warmup=1)
    ((optimizer, first_lr),) = built
    assert (optimizer.param_groups[0]["lr"] != first_lr) == moves


def test_original_recipe_times_the_original_in_fp32_against_the_pipeline_in_its_precision():
    # the original script's own net is the full-width CNN: the pipeline's side trains the same one
    result = run_script("benchmarks/original_recipe.py", "--pairs", "1", *(o for o in TINY if o != NARROW))
    assert result.returncode == 0, result.stderr[-2000:]
    expected = precision.fastest("auto")  # the pipeline's default here
    pair = re.search(rf"^pair 1: original {MEASURED} s, pipeline {MEASURED} s per epoch", result.stdout, re.MULTILINE)
    assert pair
    for seconds in pair.groups():
        measured(seconds)  # times of any size
    assert f"workers=0; original in fp32, pipeline in {expected})" in result.stdout


def test_the_plain_loop_refuses_more_steps_than_the_data_holds():
    result = run_script("benchmarks/throughput.py", "--steps", "40", "--warmup", "1", "--pairs", "1", *TINY)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert (
        result.stderr.strip().splitlines()[-1] == "error: --steps 40 x batch 100 is more than the 1800 training images"
    )


def test_ece_floor_draws_labels_from_the_models_own_probabilities():
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from ece_floor import ece_floor

    certain = torch.eye(10)[torch.arange(50) % 10]
    assert ece_floor(certain, draws=3) == [0.0, 0.0, 0.0]  # every drawn label is the predicted class
    # every image 90% sure of class 0: one bin, whose ECE is |share of labels drawn 0 - 0.9|
    sure = torch.full((1000, 10), 0.1 / 9).index_fill_(1, torch.tensor([0]), 0.9)
    generator = torch.Generator().manual_seed(0)
    direct = [abs(float((torch.multinomial(sure, 1, generator=generator).squeeze(1) == 0).double().mean()) - 0.9)
              for _ in range(4)]  # fmt: skip
    assert ece_floor(sure, draws=4) == pytest.approx(direct, abs=2e-5)  # float32 probabilities: 0.9 to 1e-5
    assert all(d > 0 for d in direct)


def test_ece_floor_runs_on_an_evaluation(synthetic_run):
    result = run_script("benchmarks/ece_floor.py", "--draws", "5", f"ckpt=[{synthetic_run}]", "coverage=[]")
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(rf"^1 member\(s\), \d+ test images: ECE {MEASURED}%$", result.stdout, re.MULTILINE)
    line = re.search(rf"5 draws: ECE mean {MEASURED}%, median {MEASURED}%, 90th percentile {MEASURED}%", result.stdout)
    assert line and all(measured(v) <= 100 for v in line.groups())
