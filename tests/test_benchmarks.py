"""The benchmark scripts on tiny data: they run, alternate and report what the README quotes from them."""

import re

import pytest
from conftest import run_script

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
