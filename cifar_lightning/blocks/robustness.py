"""Accuracy of a model under the CIFAR-10-C corruptions: the table behind `evaluate.py corruptions=all`."""

import torch
from tqdm import tqdm

from cifar_lightning.blocks.corruptions import corrupt
from cifar_lightning.blocks.module import ImageClassifier

FROST = "frost blends a synthesised ice texture (the original's photographs cannot be downloaded here)"


def choose(count: int, wanted: int, seed: int) -> torch.Tensor:
    """`wanted` of `count` positions (all of them if there are fewer), drawn by `seed`, in order."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(count, generator=generator)[:wanted].sort().values


def accuracy(model: ImageClassifier, images: torch.Tensor, labels: torch.Tensor, tta: int, batch_size: int) -> float:
    """Top-1 accuracy (0..1) of `model` with test-time augmentation `tta` on uint8 images (N, C, H, W)."""
    return float((model.predict_logits(images, tta, batch_size).argmax(1) == labels).float().mean())


def corruption_report(
    model: ImageClassifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    names: list[str],
    severities: list[int],
    seed: int,
    tta: int,
    batch_size: int,
) -> tuple[dict, dict[str, list[torch.Tensor]]]:
    """Accuracy per corruption and severity on these uint8 images, their mean (mCA), its ratio to the clean
    accuracy on the same images, and the means per severity and per corruption; and the first image's corrupted
    versions, {name: [one per severity]}, to show what was applied."""
    clean = accuracy(model, images, labels, tta, batch_size)
    table: dict[str, list[float]] = {}
    examples: dict[str, list[torch.Tensor]] = {}
    with tqdm(total=len(names) * len(severities), desc=f"corruptions ({len(images):,} images)", unit="set") as bar:
        for name in names:
            table[name], examples[name] = [], []
            for severity in severities:
                bar.set_postfix_str(f"{name} {severity}")
                corrupted = corrupt(images, name, severity, seed)
                table[name].append(accuracy(model, corrupted, labels, tta, batch_size))
                examples[name].append(corrupted[0])
                bar.update()
    mean = sum(map(sum, table.values())) / (len(names) * len(severities))
    return {
        "images": len(images),
        "seed": seed,
        "tta": tta,
        "severities": list(severities),
        "clean_accuracy": clean,
        "mean_corruption_accuracy": mean,
        "relative_accuracy": mean / clean if clean else 0.0,
        "per_severity": [sum(row[i] for row in table.values()) / len(names) for i in range(len(severities))],
        "per_corruption": {name: sum(row) / len(row) for name, row in table.items()},
        "accuracy": table,
        **({"frost": FROST} if "frost" in names else {}),
    }, examples


def markdown(r: dict) -> str:
    """report.md's section on the table of `corruption_report`."""
    severities = r["severities"]
    return "\n".join(
        [
            "## Corruptions",
            "",
            f"Mean corruption accuracy (mCA) **{r['mean_corruption_accuracy']:.2%}**, "
            f"{r['relative_accuracy']:.3f} x the clean accuracy ({r['clean_accuracy']:.2%}) on the same "
            f"{r['images']:,} images (TTA level {r['tta']}). The corrupted images are generated here after "
            f"CIFAR-10-C's published parameters: they approximate that set, they do not reproduce it"
            + (f"; {r['frost']}." if "frost" in r else "."),
            "",
            "| corruption | " + " | ".join(f"severity {s}" for s in severities) + " | mean |",
            "|---" * (len(severities) + 2) + "|",
            *(
                f"| {name.replace('_', ' ')} | "
                + " | ".join(f"{a:.2%}" for a in row)
                + f" | {r['per_corruption'][name]:.2%} |"
                for name, row in r["accuracy"].items()
            ),
            "| **mean** | "
            + " | ".join(f"{a:.2%}" for a in r["per_severity"])
            + f" | **{r['mean_corruption_accuracy']:.2%}** |",
            "",
        ]
    )


def console_line(r: dict) -> str:
    """The table of `corruption_report` in one line: its mean and how it compares with the clean accuracy."""
    return (
        f"mean corruption accuracy {r['mean_corruption_accuracy']:.2%} ({r['relative_accuracy']:.3f} x clean "
        f"{r['clean_accuracy']:.2%}) on {r['images']:,} images"
    )
