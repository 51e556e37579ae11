"""Images of classes the model never learned: how well a score separates the images it knows (in-distribution) from
others (out-of-distribution, OOD), the table behind `evaluate.py ood=heldout|generated`.

Scores (higher = more in-distribution), each computed in float64 so that confident images do not tie at 1.0 in
float32:
- MSP: the maximum softmax probability of the logits divided by the checkpoint's temperature (Hendrycks and Gimpel,
  ICLR 2017);
- MaxLogit: the largest logit (Hendrycks et al., ICML 2022; Vaze et al., ICLR 2022);
- Energy: T * logsumexp(logits / T) with T = 1, the negative free energy (Liu et al., NeurIPS 2020).

Separation, with the in-distribution images as the POSITIVE class throughout (an image is accepted as known when its
score is at least a threshold):
- AUROC: the probability that a random in-distribution image scores above a random OOD one, ties counting one half
  (the Mann-Whitney statistic, from average ranks); 0.5 is chance, 1 perfect, 0 perfectly reversed.
- AUPR: average precision, sum over thresholds of (recall step) x precision, the thresholds being the distinct
  scores: images of equal score are accepted together (as scikit-learn's average_precision_score).
- FPR95: the share of OOD images accepted at the highest threshold that accepts at least 95% of the in-distribution
  images (the k-th highest in-distribution score, k = ceil(0.95 n)); images scoring exactly the threshold are
  accepted, in-distribution or not.
"""

from collections.abc import Iterable, Iterator
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (after matplotlib.use, so no window ever opens)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from cifar_lightning.blocks.corruptions import CORRUPTIONS, corrupt  # noqa: E402
from cifar_lightning.blocks.data import ImageDataModule  # noqa: E402
from cifar_lightning.blocks.errors import UserError  # noqa: E402
from cifar_lightning.blocks.module import ImageClassifier  # noqa: E402
from cifar_lightning.blocks.robustness import choose  # noqa: E402

SCORE_NAMES = {"msp": "MSP", "max_logit": "MaxLogit", "energy": "Energy"}
GENERATED_IMAGES = 1000  # images of the split behind each generated set (all of them if fewer)
SEVERITY = 5  # of the corruptions, as covariate shift
SEED = 0
TPR = 0.95


# ------------------------------------------------------------------------------------------ scores
def msp(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """max softmax(logits / temperature), float64 (N,) in (0, 1]."""
    return (logits.double() / temperature).softmax(dim=1).amax(dim=1)


def max_logit(logits: torch.Tensor) -> torch.Tensor:
    """The largest logit of each image, float64 (N,)."""
    return logits.double().amax(dim=1)


def energy(logits: torch.Tensor, t: float = 1.0) -> torch.Tensor:
    """T * logsumexp(logits / T), float64 (N,): the negative free energy, higher for in-distribution images."""
    return t * torch.logsumexp(logits.double() / t, dim=1)


def scores(logits: torch.Tensor, temperature: float) -> dict[str, np.ndarray]:
    """The three scores of logits (N, classes) (uncalibrated; MSP divides by `temperature`), keyed as SCORE_NAMES."""
    return {
        "msp": msp(logits, temperature).numpy(),
        "max_logit": max_logit(logits).numpy(),
        "energy": energy(logits).numpy(),
    }


# -------------------------------------------------------------------------------------- separation
def _check(inside: np.ndarray, outside: np.ndarray) -> None:
    if len(inside) == 0 or len(outside) == 0:
        raise ValueError("separation needs in-distribution and out-of-distribution scores")


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """P(in > out) + P(in = out) / 2 over all pairs, from average ranks. Raises ValueError on an empty side."""
    _check(inside, outside)
    values = np.concatenate([inside, outside]).astype(np.float64)
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    first = np.r_[True, ordered[1:] != ordered[:-1]]  # where each run of equal scores starts
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values))
    ranks[order] = ((starts + 1 + ends) / 2)[np.cumsum(first) - 1]  # the mean of ranks starts+1 .. ends
    n, m = len(inside), len(outside)
    return float((ranks[:n].sum() - n * (n + 1) / 2) / (n * m))


def _accepted(inside: np.ndarray, outside: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """In- and out-of-distribution images accepted at each distinct score taken as threshold, highest first."""
    values = np.concatenate([inside, outside]).astype(np.float64)
    positive = np.r_[np.ones(len(inside)), np.zeros(len(outside))]
    order = np.argsort(-values, kind="stable")
    ordered = values[order]
    last = np.r_[ordered[1:] != ordered[:-1], True]  # the last image of each run of equal scores
    return np.cumsum(positive[order])[last], np.cumsum(1 - positive[order])[last]


def aupr(inside: np.ndarray, outside: np.ndarray) -> float:
    """Average precision, in-distribution positive (see the module). Raises ValueError on an empty side."""
    _check(inside, outside)
    tp, fp = _accepted(inside, outside)
    recall = tp / len(inside)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * tp / (tp + fp)))


def fpr_at_tpr(inside: np.ndarray, outside: np.ndarray, tpr: float = TPR) -> float:
    """Share of OOD scores >= the k-th highest in-distribution score, k = ceil(tpr n). Raises ValueError on an
    empty side."""
    _check(inside, outside)
    k = -(-round(tpr * 10_000) * len(inside) // 10_000)  # ceil in integers: 0.95 x 20 is 19, not 19.000000000000004
    threshold = np.sort(inside)[::-1][max(k, 1) - 1]
    return float(np.mean(outside >= threshold))


def roc(inside: np.ndarray, outside: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) at each distinct threshold, from (0, 0) to (1, 1), for the figure."""
    tp, fp = _accepted(inside, outside)
    return np.r_[0.0, fp / len(outside)], np.r_[0.0, tp / len(inside)]


def separation(inside: np.ndarray, outside: np.ndarray) -> dict[str, float]:
    return {"auroc": auroc(inside, outside), "aupr": aupr(inside, outside), "fpr95": fpr_at_tpr(inside, outside)}


# -------------------------------------------------------------------------------------------- sets
OodSet = tuple[str, torch.Tensor, dict]  # name, uint8 images (N, 3, H, W), what they are (for metrics.json)


def held_out(data: ImageDataModule) -> OodSet:
    """The test images of the classes of `data`'s source that its `classes` leave out (the open-set protocol of
    Neal et al., ECCV 2018: e.g. CIFAR-10 6 known vs 4 unknown classes).

    Raises:
        UserError: the data holds every class of its source (nothing is held out), or no test image of one left out."""
    everything = data.load()
    unseen = [c for c in everything.class_names if c not in data.class_names]
    if not unseen:
        raise UserError(
            f"ood=heldout: the checkpoint was trained on every class of its data ({len(data.class_names)}), so none "
            "is held out: train on some with data.classes=[...], or use ood=generated"
        )
    wanted = torch.tensor([everything.class_names.index(c) for c in unseen])
    chosen = torch.zeros(0, dtype=torch.bool)
    if everything.test_images is not None and everything.test_labels is not None:
        chosen = torch.isin(everything.test_labels, wanted)
    if not chosen.any():
        raise UserError(f"ood=heldout: the data in {data.root} has no test images of the held-out classes {unseen}")
    assert everything.test_images is not None  # chosen is only non-empty with test images
    return "held_out_classes", everything.test_images[chosen], {"kind": "held-out classes", "classes": unseen}


def permute_pixels(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each uint8 image (N, C, H, W) with its pixel positions shuffled (a permutation of its own, the same for
    every channel): its colours stay, its shapes go."""
    n, c, h, w = images.shape
    order = torch.rand(n, h * w, generator=generator).argsort(dim=1)
    return images.flatten(2).gather(2, order[:, None, :].expand(n, c, h * w)).view(n, c, h, w)


def generated(images: torch.Tensor, count: int = GENERATED_IMAGES, seed: int = SEED) -> Iterator[OodSet]:
    """Sets made here from `count` of the uint8 `images` (drawn by `seed`), one at a time: uniform noise,
    pixel-permuted copies, and each corruption at SEVERITY (covariate shift: the classes are there, distorted)."""
    chosen = images[choose(len(images), count, seed)]
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randint(0, 256, chosen.shape, generator=generator, dtype=torch.uint8)
    yield "uniform_noise", noise, {"kind": "uniform noise"}
    yield "permuted_pixels", permute_pixels(chosen, generator), {"kind": "pixel-permuted images"}
    for name in CORRUPTIONS:
        yield name, corrupt(chosen, name, SEVERITY, seed), {"kind": "corruption", "severity": SEVERITY}


def set_logits(
    model: ImageClassifier, sets: Iterable[OodSet], tta: int, fraction: float, batch_size: int
) -> dict[str, tuple[torch.Tensor, dict]]:
    """Each set's logits (float32 (N, classes), uncalibrated) with `model` at TTA level `tta` (and `fraction`)."""
    out = {}
    for name, images, about in tqdm(sets, desc="out-of-distribution sets", unit="set", leave=False):
        out[name] = model.predict_logits(images, tta, batch_size, tta_fraction=fraction), about
    return out


# ------------------------------------------------------------------------------------------ report
def report(protocol: str, inside: torch.Tensor, sets: dict[str, tuple[torch.Tensor, dict]], temperature: float) -> dict:
    """metrics.json's `ood`: for each set, AUROC, AUPR and FPR95 of each score against the in-distribution
    logits `inside` (float (N, classes), uncalibrated)."""
    known = scores(inside, temperature)
    table = {}
    for name, (logits, about) in sets.items():
        unknown = scores(logits, temperature)
        table[name] = {"images": len(logits), **about, **{s: separation(known[s], unknown[s]) for s in SCORE_NAMES}}
    return {
        "protocol": protocol,
        "positive": "in-distribution",
        "temperature": temperature,
        "energy_t": 1.0,
        "in_distribution_images": len(inside),
        "sets": table,
    }


def figure(inside: torch.Tensor, sets: dict[str, tuple[torch.Tensor, dict]], temperature: float, path: Path) -> Path:
    """ROC curves (in-distribution positive) of each set, one panel per score; returns `path`."""
    known = scores(inside, temperature)
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.2))
    colours = plt.get_cmap("tab20")
    for ax, (score, title) in zip(axes, SCORE_NAMES.items()):
        for i, (name, (logits, _)) in enumerate(sets.items()):
            unknown = scores(logits, temperature)[score]
            fpr, tpr = roc(known[score], unknown)
            label = f"{name} ({auroc(known[score], unknown):.3f})"
            ax.plot(fpr, tpr, color=colours(i % 20), lw=1.2, label=label)  # straight across ties: its area is the AUROC
        ax.plot([0, 1], [0, 1], color="k", ls=":", lw=1)
        ax.axhline(TPR, color="tab:red", ls=":", lw=1)
        ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="OOD images accepted (FPR)", title=f"{title}: ROC (AUROC)")
        ax.legend(loc="lower right", fontsize=6 if len(sets) > 6 else 8)
    axes[0].set_ylabel("in-distribution images accepted (TPR)")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def _row(name: str, entry: dict) -> str:
    cells = [f"{entry[s][metric]:.3f}" for metric in ("auroc", "aupr", "fpr95") for s in SCORE_NAMES]
    return f"| {name} | {entry['images']:,} | " + " | ".join(cells) + " |"


def markdown(ood: dict) -> str:
    """report.md's section on `report`'s table."""
    heads = " | ".join(f"{metric} {title}" for metric in ("AUROC", "AUPR", "FPR95") for title in SCORE_NAMES.values())
    held = [e["classes"] for e in ood["sets"].values() if "classes" in e]
    about = f" (held-out classes: {', '.join(held[0])})" if held else ""
    return "\n".join(
        [
            "## Out-of-distribution detection",
            "",
            f"ood={ood['protocol']}{about}: {ood['in_distribution_images']:,} in-distribution images (positive) "
            f"against each set; MSP at temperature {ood['temperature']:.4f}, Energy at T = 1 (figure: ood.png).",
            "",
            f"| set | images | {heads} |",
            "|---|---|" + "---|" * 3 * len(SCORE_NAMES),
            *(_row(name, entry) for name, entry in ood["sets"].items()),
            "",
        ]
    )


def console_lines(ood: dict) -> str:
    """The console's summary of `report`: a line per set, AUROC and FPR95 of each score."""
    lines = [f"out-of-distribution (ood={ood['protocol']}, {ood['in_distribution_images']:,} in-distribution images):"]
    for name, entry in ood["sets"].items():
        cells = ", ".join(
            f"{title} AUROC {entry[s]['auroc']:.3f} FPR95 {entry[s]['fpr95']:.2%}" for s, title in SCORE_NAMES.items()
        )
        lines.append(f"  {name} ({entry['images']:,} images): {cells}")
    return "\n".join(lines)
