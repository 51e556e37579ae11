"""Training images/s of the Lightning pipeline vs a plain PyTorch loop: same model, data in memory, batch size,
normalisation, augmentation, loss, optimizer, schedule, lookahead and precision (autocast); alternating, `--pairs`
times; prints the median ratio, the time per epoch and the FLOP rate.

    python benchmarks/throughput.py [--steps 150] [--pairs 3] [OVERRIDES...]
    e.g. python benchmarks/throughput.py data.verify=false model=cnn batch_size=128
         python benchmarks/throughput.py --steps 0 --warmup 1 experiment=fast94_lookahead data.verify=false \
             data.val_size=0
    (--steps 0: one whole epoch)
"""

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from common import matmul_peak, pipeline, sync
from hydra.utils import instantiate

from cifar_lightning.blocks.callbacks import training_flops_per_image
from cifar_lightning.blocks.errors import UserError
from cifar_lightning.tasks.cli import run_composing


def plain_loop(module, cfg, images, labels, steps: int, warmup: int) -> float:
    """The pipeline's training steps written as a bare loop, with the module's own optimizer, schedule and
    augmentation, the recipe's lookahead and the trainer's precision (autocast as plain PyTorch writes it), so that
    it follows any change to the recipe. Returns images/s. Raises UserError for more steps than one pass over the
    images holds (the loop does not start a second epoch)."""
    net, batch_size, hparams = module.net, cfg.batch_size, module.hparams
    if steps * batch_size > len(labels):
        raise UserError(f"--steps {steps} x batch {batch_size} is more than the {len(labels)} training images")
    half = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(cfg.trainer.precision)
    scaler = torch.amp.GradScaler(enabled=half == torch.float16)  # fp16 needs its loss scaled; bf16 does not
    net.train()  # build() has initialised data-dependent nets already
    optimizer, scheduler, interval = module.optimizer_and_schedule(steps)
    lookahead = instantiate(cfg.callbacks.lookahead) if cfg.callbacks.get("lookahead") else None
    if lookahead:
        lookahead.start(net)
    order = torch.randperm(len(labels))
    start, seen = None, 0
    for step in range(steps):
        if step == warmup:
            sync()
            start = time.perf_counter()
        idx = order[step * batch_size : (step + 1) * batch_size]
        x = module.normalize(images[idx])
        x = module.augment(x, idx, 0) if module.augment else x
        if hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=half, enabled=half is not None):
            loss = F.cross_entropy(
                net(x), labels[idx], label_smoothing=hparams.label_smoothing, reduction=hparams.loss_reduction
            )
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if scheduler and interval == "step":  # one pass: an epoch's schedule does not move within it
            scheduler.step()
        if lookahead:
            lookahead.step(net, step + 1, steps)
        if step >= warmup:
            seen += len(idx)
    sync()
    return seen / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--pairs", type=int, default=3)
    args, overrides = parser.parse_known_args()

    loop_rates, pipeline_rates = [], []
    with tempfile.TemporaryDirectory() as out:

        def run_loop():
            cfg, datamodule, module, _, _ = pipeline(overrides, out, args.steps, args.warmup)
            train = datamodule.splits["train"]
            steps = args.steps or len(train.labels) // cfg.batch_size
            loop_rates.append(plain_loop(module, cfg, train.images, train.labels, steps, args.warmup))

        def run_pipeline():
            cfg, datamodule, module, trainer, timer = pipeline(overrides, out, args.steps, args.warmup)
            trainer.fit(module, datamodule=datamodule)
            pipeline_rates.append(timer.images_per_second)
            return cfg, datamodule, module, timer

        for pair in range(args.pairs):
            if pair % 2:  # alternate which goes first, so that neither always finds the machine warmer
                cfg, datamodule, module, timer = run_pipeline()
                run_loop()
            else:
                run_loop()
                cfg, datamodule, module, timer = run_pipeline()
            print(
                f"pair {pair + 1}: plain loop {loop_rates[-1]:.0f} img/s, pipeline {pipeline_rates[-1]:.0f} img/s, "
                f"ratio {pipeline_rates[-1] / loop_rates[-1]:.3f}",
                flush=True,
            )

    train = datamodule.splits["train"]
    steps = args.steps or len(train.labels) // cfg.batch_size
    ratios = [p / q for p, q in zip(pipeline_rates, loop_rates)]
    flops = training_flops_per_image(module.net, module.hparams.image_size)
    peak = matmul_peak()
    rate = statistics.median(pipeline_rates)
    print(f"model {cfg.model._target_}, batch {cfg.batch_size}, {steps - args.warmup} timed steps x {args.pairs}")
    pairs = ", ".join(f"{r:.3f}" for r in ratios)
    print(f"pipeline / plain loop: median ratio {statistics.median(ratios):.3f} (pairs: {pairs})")
    print(
        f"pipeline: {rate:.0f} images/s; {flops / 1e6:.1f} MFLOP per training image; "
        f"{rate * flops / 1e9:.1f} GFLOP/s achieved vs {peak / 1e9:.1f} GFLOP/s fp32 matmul peak "
        f"({100 * rate * flops / peak:.1f}%); {len(train.labels) / rate:.0f} s per epoch of {len(train.labels)} images"
    )


if __name__ == "__main__":
    run_composing(main)
