"""Training images/s of the Lightning pipeline vs a plain PyTorch loop: same model, data in memory, batch size,
normalisation and augmentation; alternating, `--pairs` times; prints the median ratio and the FLOP rate.

    python benchmarks/throughput.py [--steps 150] [--pairs 3] [OVERRIDES...]
    e.g. python benchmarks/throughput.py data.verify=false model=cnn batch_size=128
"""
import argparse
import tempfile
import time

import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from common import matmul_peak, median, pipeline, sync, training_flops_per_image


def plain_loop(module, images, labels, batch_size: int, steps: int, warmup: int, optimizer) -> float:
    """The same work as one training step of the pipeline, written as a bare loop. Returns images/s."""
    net, smoothing = module.net, module.hparams.label_smoothing
    net.train()
    order = torch.randperm(len(labels))
    start, seen = None, 0
    for step in range(steps):
        if step == warmup:
            sync()
            start = time.perf_counter()
        idx = order[step * batch_size:(step + 1) * batch_size]
        x = module.normalize(images[idx])
        x = module.augment(x, idx, 0) if module.augment else x
        if module.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(net(x), labels[idx], label_smoothing=smoothing)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
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
        for pair in range(args.pairs):
            cfg, datamodule, module, trainer, timer = pipeline(overrides, out, args.steps, args.warmup)
            train = datamodule.splits["train"]
            optimizer = instantiate(cfg.optimizer)(module.net.parameters())  # the pipeline's optimizer config
            loop_rates.append(plain_loop(module, train.images, train.labels, cfg.batch_size, args.steps,
                                         args.warmup, optimizer))
            cfg, datamodule, module, trainer, timer = pipeline(overrides, out, args.steps, args.warmup)
            trainer.fit(module, datamodule=datamodule)
            pipeline_rates.append(timer.images_per_second)
            print(f"pair {pair + 1}: plain loop {loop_rates[-1]:.0f} img/s, pipeline {pipeline_rates[-1]:.0f} img/s, "
                  f"ratio {pipeline_rates[-1] / loop_rates[-1]:.3f}", flush=True)

    ratios = [p / q for p, q in zip(pipeline_rates, loop_rates)]
    flops = training_flops_per_image(module.net.cpu())
    peak = matmul_peak()
    rate = median(pipeline_rates)
    print(f"model {cfg.model._target_}, batch {cfg.batch_size}, {args.steps - args.warmup} timed steps x {args.pairs}")
    print(f"pipeline / plain loop: median ratio {median(ratios):.3f} (pairs: {', '.join(f'{r:.3f}' for r in ratios)})")
    print(f"pipeline: {rate:.0f} images/s; {flops / 1e6:.1f} MFLOP per training image; "
          f"{rate * flops / 1e9:.1f} GFLOP/s achieved vs {peak / 1e9:.1f} GFLOP/s fp32 matmul peak "
          f"({100 * rate * flops / peak:.1f}%)")


if __name__ == "__main__":
    main()
