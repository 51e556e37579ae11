"""One training epoch of the original plain-PyTorch recipe (per-image torchvision transforms in a DataLoader)
vs the pipeline's `experiment=seed_baseline` (same CNN, Adam 1e-3, batch 64, same 45,000 training images).

    python benchmarks/original_recipe.py [--workers 2] [OVERRIDES...]
    e.g. python benchmarks/original_recipe.py data.verify=false
"""
import argparse
import tempfile
import time

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from common import pipeline
from cifar_lightning.models.cnn import CNN


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
    transform = transforms.Compose([
        transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))])
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
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the original script")
    args, overrides = parser.parse_known_args()
    with tempfile.TemporaryDirectory() as out:
        cfg, datamodule, module, trainer, timer = pipeline(["experiment=seed_baseline", *overrides], out, warmup=0)
        train = datamodule.splits["train"]
        original = original_epoch(train.images, train.labels, args.workers)
        print(f"original recipe: {original:.1f} s/epoch ({len(train) / original:.0f} images/s)", flush=True)
        start = time.perf_counter()
        trainer.fit(module, datamodule=datamodule)
        ours = time.perf_counter() - start
    print(f"pipeline experiment=seed_baseline: {ours:.1f} s/epoch ({len(train) / ours:.0f} images/s)")
    print(f"speed-up: {original / ours:.2f}x (batch 64, {len(train)} images, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
