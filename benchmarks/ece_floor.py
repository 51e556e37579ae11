"""The ECE that sampling alone gives an evaluation: what a perfectly calibrated model with the same confidences would
measure on as many images. Each of `--draws` times, every image's label is drawn from the model's own calibrated
probabilities (so that the model is calibrated by construction) and the ECE of those labels is computed as
evaluate.py computes it (15 bins). Prints the evaluation's own ECE beside that floor's mean, median, 90th percentile
and the share of draws above a level: an ECE target below the floor is met only by luck.

    python benchmarks/ece_floor.py [--draws 1000] [--level 0.01] ckpt=[RUN1,RUN2,...] [evaluate.py's options]
    e.g. python benchmarks/ece_floor.py ckpt=[outputs/i34/fast94_s0,outputs/i34/fast94_s1,outputs/i34/fast94_s2] \
             split=test data=cifar10 data.root=data-exact data.verify=false coverage=[]
    (ckpt= as evaluate.py's ensembles take it: a list of runs or a sweep; [RUN] alone is that run)
"""

import argparse
import statistics

import torch

from cifar_lightning.blocks.ensemble import as_logits
from cifar_lightning.blocks.metrics import calibration
from cifar_lightning.blocks.module import plain
from cifar_lightning.store.locate import group_checkpoints
from cifar_lightning.tasks.cli import compose_config, run_composing
from cifar_lightning.tasks.ensemble import compute, predict_members


def ece_floor(probabilities: torch.Tensor, draws: int, seed: int = 0) -> list[float]:
    """The ECE (a share) of `draws` label sets drawn from `probabilities` (float (N, classes), rows summing to 1)."""
    generator = torch.Generator().manual_seed(seed)
    logits = as_logits(probabilities)
    drawn = (torch.multinomial(probabilities, 1, generator=generator).squeeze(1) for _ in range(draws))
    return [calibration(logits, labels, 1.0)["ece"] for labels in drawn]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--level", type=float, default=0.01)
    args, overrides = parser.parse_known_args()
    cfg = compose_config("evaluate", overrides)
    checkpoints, _ = group_checkpoints(plain(cfg.ckpt))
    members, data, own = predict_members(cfg, checkpoints, [], cfg.split)
    _, metrics, probabilities = compute(members, (data, own), cfg.split, [])
    floor = sorted(ece_floor(probabilities, args.draws))
    above = sum(e > args.level for e in floor) / len(floor)
    ece = 100 * metrics["ensemble"]["ece"]
    print(f"{len(members)} member(s), {len(probabilities)} {cfg.split} images: ECE {ece:.2f}%")
    mean, median, p90 = (
        100 * v for v in (statistics.mean(floor), statistics.median(floor), floor[len(floor) * 9 // 10])
    )
    print(
        f"a calibrated model with these confidences, {args.draws} draws: ECE mean {mean:.2f}%, median {median:.2f}%, "
        f"90th percentile {p90:.2f}%; above {100 * args.level:g}% in {100 * above:.0f}% of draws"
    )


if __name__ == "__main__":
    run_composing(main)
