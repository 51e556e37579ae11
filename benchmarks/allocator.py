"""Training images/s of the plain step loop (benchmarks/throughput.py's) with glibc's allocator as it comes vs with
freed memory kept (cifar_lightning.memory.keep_freed_memory, which every entry point calls). Each measurement runs
in a fresh process, since an allocator setting cannot be undone within one; alternating, `--pairs` times; prints
each pair and the median ratio kept / as it comes.

    python benchmarks/allocator.py [--steps 20] [--warmup 3] [--pairs 3] [OVERRIDES...]
    e.g. python benchmarks/allocator.py experiment=fast94 data.verify=false           (batch 2,000)
         python benchmarks/allocator.py experiment=fast94 batch_size=1024 data.verify=false
"""

import argparse
import statistics
import subprocess
import sys
import tempfile

from common import pipeline
from throughput import plain_loop

from cifar_lightning.cli import compose_config, run_composing


def measure(steps: int, warmup: int, overrides: list[str]) -> None:
    """In a child process: prints the plain loop's training images/s."""
    with tempfile.TemporaryDirectory() as out:
        cfg, datamodule, module, _, _ = pipeline(overrides, out, steps, warmup)
        train = datamodule.splits["train"]
        print(plain_loop(module, cfg, train.images, train.labels, steps, warmup))


def child_rate(keep: bool, args: argparse.Namespace, overrides: list[str]) -> float:
    setting = "kept" if keep else "default"
    command = [sys.executable, __file__, "--child", setting, f"--steps={args.steps}", f"--warmup={args.warmup}"]
    result = subprocess.run([*command, *overrides], capture_output=True, text=True)
    printed = result.stdout.strip().splitlines()
    if result.returncode == 0 and printed:
        try:
            return float(printed[-1])
        except ValueError:
            pass
    last = (result.stderr.strip().splitlines() or [""])[-1]
    if result.returncode and last.startswith("error:"):  # the child's own one-line refusal
        sys.exit(last)
    sys.exit(
        f"error: the measurement with {setting} memory failed (exit {result.returncode})"
        + (f": {last}" if last else "")
    )


def main(args: argparse.Namespace, overrides: list[str]) -> None:
    cfg = compose_config("train", overrides)  # a bad override fails here, in one line, before any child starts
    kept, default = [], []
    for pair in range(args.pairs):
        order = (True, False) if pair % 2 else (False, True)  # alternate which goes first
        for keep in order:
            (kept if keep else default).append(child_rate(keep, args, overrides))
        print(
            f"pair {pair + 1}: as it comes {default[-1]:.0f} img/s, kept {kept[-1]:.0f} img/s, "
            f"ratio {kept[-1] / default[-1]:.3f}",
            flush=True,
        )
    ratios = [k / d for k, d in zip(kept, default)]
    print(f"model {cfg.model._target_}, batch {cfg.batch_size}, {args.steps - args.warmup} timed steps x {args.pairs}")
    print(
        f"kept / as it comes: median ratio {statistics.median(ratios):.3f} "
        f"({min(ratios):.3f}-{max(ratios):.3f}; pairs: {', '.join(f'{r:.3f}' for r in ratios)})"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--child", choices=["kept", "default"], help=argparse.SUPPRESS)
    args, overrides = parser.parse_known_args()
    if args.pairs < 1 or not 0 <= args.warmup < args.steps:
        parser.error("--pairs must be at least 1, --warmup 0 or more and below --steps")
    if args.child:
        run_composing(lambda: measure(args.steps, args.warmup, overrides), keep_freed_memory=args.child == "kept")
    else:
        run_composing(lambda: main(args, overrides))
