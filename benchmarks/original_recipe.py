"""One training epoch of the original plain-PyTorch recipe (per-image torchvision transforms in a DataLoader
with the default num_workers=0, as the original script had it) vs the pipeline's `experiment=seed_baseline`
(same CNN, Adam 1e-3, batch 64, same 45,000 training images; the original in fp32 as it was, the pipeline in its
default precision, bf16-mixed on hardware with native bf16): `--pairs` pairs, the order alternating, the
median ratio and its spread.

    python benchmarks/original_recipe.py [--pairs 3] [--workers 0] [OVERRIDES...]
    e.g. python benchmarks/original_recipe.py data.verify=false
"""

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from common import pipeline
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from cifar_lightning.blocks.models.cnn import CNN
from cifar_lightning.tasks.cli import run_composing


class PILImages(Dataset):
    """What torchvision.datasets.CIFAR10 does per item: an HWC uint8 array -> PIL image -> transforms."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.images = images.permute(0, 2, 3, 1).numpy()
        self.labels, self.transform = labels.tolist(), transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def original_epoch(images, labels, workers: int) -> float:
    transform = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
        ]
    )
    loader = DataLoader(PILImages(images, labels, transform), batch_size=64, shuffle=True, num_workers=workers)
    net = CNN(num_classes=10)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.train()
    start = time.perf_counter()
    for x, y in loader:
        loss = F.cross_entropy(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--workers", type=int, default=0, help="DataLoader workers of the original script (it had none)"
    )
    parser.add_argument("--pairs", type=int, default=3)
    args, overrides = parser.parse_known_args()
    originals, ours, precisions = [], [], set()
    with tempfile.TemporaryDirectory() as out:

        def run_original():
            _, datamodule, _, _, _ = pipeline(["experiment=seed_baseline", *overrides], out, warmup=0)
            train = datamodule.splits["train"]
            originals.append(original_epoch(train.images, train.labels, args.workers))

        def run_pipeline():
            _, datamodule, module, trainer, _ = pipeline(["experiment=seed_baseline", *overrides], out, warmup=0)
            start = time.perf_counter()
            trainer.fit(module, datamodule=datamodule)
            ours.append(time.perf_counter() - start)
            precisions.add(trainer.precision)

        for pair in range(args.pairs):  # alternate which goes first, so that neither always finds the machine warmer
            for run in (run_pipeline, run_original) if pair % 2 else (run_original, run_pipeline):
                run()
            print(
                f"pair {pair + 1}: original {originals[-1]:.1f} s, pipeline {ours[-1]:.1f} s per epoch, "
                f"speed-up {originals[-1] / ours[-1]:.2f}x",
                flush=True,
            )
    ratios = sorted(o / p for o, p in zip(originals, ours))
    print(
        f"speed-up of experiment=seed_baseline over the original recipe: median {statistics.median(ratios):.2f}x "
        f"(range {ratios[0]:.2f}-{ratios[-1]:.2f}, {args.pairs} pairs; original median "
        f"{statistics.median(originals):.1f} s, pipeline median {statistics.median(ours):.1f} s per epoch; "
        f"{torch.get_num_threads()} threads, workers={args.workers}; original in fp32, pipeline in "
        f"{', '.join(sorted(precisions))})"
    )


if __name__ == "__main__":
    run_composing(main)
