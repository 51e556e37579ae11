"""The benchmark scripts on tiny data: they run, alternate and report what the README quotes from them."""

import re

import pytest
import torch
from conftest import ROOT, run_script

from cifar_lightning import precision

TINY = ["data=synthetic", "batch_size=100", "data.eval_batch_size=200", "callbacks.progress_bar=null"]


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
    assert re.search(r"fp32 2048\^2 matmul here, now: \d+\.\d GFLOP/s", out)


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["--a", "experiment=nope"], 1, "error: In 'train': Could not find 'experiment/nope'"),
        (["--b", "trainer.nope=1"], 1, "error: Could not override 'trainer.nope'"),
        (["--pairs", "0"], 2, "--pairs must be at least 1"),
        (["--steps", "5", "--warmup", "5"], 2, "--warmup 0 or more and below --steps"),
    ],
)
def test_compare_refuses_bad_input_in_one_line(args, code, message):
    result = run_script("benchmarks/compare.py", *args, *TINY)
    assert result.returncode == code and "Traceback" not in result.stderr
    assert message in result.stderr.strip().splitlines()[-1]


def test_throughput_compares_pipeline_and_plain_loop_alternating():
    result = run_script("benchmarks/throughput.py", "--steps", "8", "--warmup", "2", "--pairs", "2", *TINY)
    assert result.returncode == 0, result.stderr[-2000:]
    pairs = re.findall(r"^pair (\d): plain loop \d+ img/s, pipeline \d+ img/s", result.stdout, re.MULTILINE)
    assert pairs == ["1", "2"]
    assert re.search(r"pipeline / plain loop: median ratio \d\.\d{3} \(pairs: \d\.\d{3}, \d\.\d{3}\)", result.stdout)
    assert re.search(r"GFLOP/s achieved vs \d+\.\d GFLOP/s fp32 matmul peak", result.stdout)


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


def test_original_recipe_times_the_original_in_fp32_against_the_pipeline_in_its_precision():
    result = run_script("benchmarks/original_recipe.py", "--pairs", "1", *TINY)
    assert result.returncode == 0, result.stderr[-2000:]
    expected = precision.fastest("auto")  # the pipeline's default here
    assert re.search(r"^pair 1: original \d+\.\d s, pipeline \d+\.\d s per epoch", result.stdout, re.MULTILINE)
    assert f"workers=0; original in fp32, pipeline in {expected})" in result.stdout
