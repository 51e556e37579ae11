"""Two variants of the pipeline measured alternating in one process, `--pairs` times: their training speed, the time
to their first timed step (where torch.compile pays for compiling) and, with --validate, the time of one epoch with
its validation, projected to each recipe's whole run. Prints every pair, the median ratio b/a and its range.

    python benchmarks/compare.py --a OVERRIDES --b OVERRIDES [--steps 150] [--warmup 10] [--pairs 3] [COMMON...]
    e.g. python benchmarks/compare.py --b module.compile=true --steps 300 data.verify=false
         python benchmarks/compare.py --a experiment=fast94_lookahead --b experiment=fast94 --steps 0 --validate \
             data.verify=false
    (--steps 0: one whole epoch; --a/--b take space-separated overrides in one quoted argument)
"""

import argparse
import math
import statistics
import tempfile
import time

from common import matmul_peak, pipeline

from cifar_lightning.blocks.callbacks import training_flops_per_image
from cifar_lightning.blocks.errors import UserError
from cifar_lightning.tasks.cli import compose_config, run_composing


def measure(overrides: list[str], out: str, args) -> dict:
    _, datamodule, module, trainer, timer = pipeline(overrides, out, args.steps, args.warmup, args.validate)
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    if timer.start is None:
        raise UserError(f"--warmup {args.warmup} is not below the {trainer.global_step} steps of the epoch")
    return {
        "images_per_second": timer.images_per_second,
        "to_first_timed_step": timer.start - start,
        "epoch_seconds": time.perf_counter() - start,
        "steps_per_epoch": datamodule.train_batches(trainer.world_size),
        "net": module.net,
        "image_size": module.hparams.image_size,
    }


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.3f}, range {min(values):.3f}-{max(values):.3f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", default="", help="overrides of variant a (default: none)")
    parser.add_argument("--b", default="", help="overrides of variant b")
    parser.add_argument("--steps", type=int, default=150, help="training steps per measurement; 0: a whole epoch")
    parser.add_argument("--warmup", type=int, default=10, help="untimed first steps (allocation, compilation)")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--validate", action="store_true", help="include the epoch's validation in its time")
    args, common = parser.parse_known_args()
    if args.pairs < 1 or args.steps < 0 or not 0 <= args.warmup < (args.steps or math.inf):
        parser.error("--pairs must be at least 1, --steps 0 or more, --warmup 0 or more and below --steps")
    variants = {"a": args.a.split() + common, "b": args.b.split() + common}
    results = {"a": [], "b": []}
    with tempfile.TemporaryDirectory() as out:
        for pair in range(args.pairs):
            order = "ba" if pair % 2 else "ab"  # alternate, so that neither always finds the machine warmer
            for name in order:
                results[name].append(measure(variants[name], out, args))
            a, b = results["a"][-1], results["b"][-1]
            rate_a, rate_b = a["images_per_second"], b["images_per_second"]
            print(
                f"pair {pair + 1} ({order[0]} first): a {rate_a:.0f} img/s, b {rate_b:.0f} img/s, "
                f"speed b/a {rate_b / rate_a:.3f}; "
                f"to the first timed step a {a['to_first_timed_step']:.1f} s, b {b['to_first_timed_step']:.1f} s; "
                f"epoch a {a['epoch_seconds']:.1f} s, b {b['epoch_seconds']:.1f} s",
                flush=True,
            )
    peak = matmul_peak()
    print(f"a: {' '.join(variants['a'])}\nb: {' '.join(variants['b'])}")
    for name in "ab":
        rates = [r["images_per_second"] for r in results[name]]
        flops = training_flops_per_image(results[name][0]["net"], results[name][0]["image_size"])
        print(
            f"{name}: {statistics.median(rates):.0f} images/s (median), {flops / 1e6:.1f} MFLOP per training image, "
            f"{statistics.median(rates) * flops / 1e9:.1f} GFLOP/s; first timed step after "
            f"{spread([r['to_first_timed_step'] for r in results[name]])} s"
        )
    print(f"fp32 2048^2 matmul here, now: {peak / 1e9:.1f} GFLOP/s")
    ratios = [rb["images_per_second"] / ra["images_per_second"] for ra, rb in zip(results["a"], results["b"])]
    print(f"training speed b/a: {spread(ratios)} ({args.pairs} pairs)")
    if args.validate and not args.steps:
        ratios = [rb["epoch_seconds"] / ra["epoch_seconds"] for ra, rb in zip(results["a"], results["b"])]
        print(f"one epoch with validation, time b/a: {spread(ratios)}")
        # a recipe's whole run: its own epochs (pipeline() made them 1) x one epoch of training + its validation
        epochs = {name: compose_config("train", variants[name]).epochs for name in "ab"}
        runs = {name: [epochs[name] * r["epoch_seconds"] for r in results[name]] for name in "ab"}
        for name in "ab":
            steps = round(epochs[name] * results[name][0]["steps_per_epoch"])
            print(f"{name}: whole run projected {statistics.median(runs[name]):.0f} s ({steps} steps)")
        print(f"whole run (epochs x that epoch), time b/a: {spread([b / a for a, b in zip(runs['a'], runs['b'])])}")


if __name__ == "__main__":
    run_composing(main)
