"""Is recipe B better than recipe A? Two groups of trained runs (each a recipe over seeds or folds) on the same images:

    python -m cifar_lightning.tasks.compare --a RUN_OR_SWEEP [...] --b RUN_OR_SWEEP [...] [--split test|val]
        [--data-root PATH] [--out DIR] [--device cpu|cuda] [--trusted-modules MODULE ...]

A run folder counts with its best checkpoint (else its last; a .ckpt file counts too); a sweep folder with every
finished job in it (a folder with summary.json), pruned trials left out: they stopped early. Each run predicts the
split of the data it was trained on (its .hydra/config.yaml, never downloaded); --data-root reads the same kind
of data from another folder (e.g. data-exact/), with the run's other data settings. Predictions are the
checkpoint's calibrated probabilities (softmax(logits / T)) with its own test-time augmentation.

Reports accuracy B - A (blocks/stats.py):
1. over runs: each group's mean ± std of its runs' accuracies and the 95% Welch t interval of the difference of
   the means (scipy's Welch test); omitted, with a note, when a group has one run;
2. over images, paired: McNemar's exact test (McNemar 1947; recommended by Dietterich, "Approximate Statistical Tests
   for Comparing Supervised Classification Learning Algorithms", Neural Computation 1998) between the groups'
   ensembles (mean of the members' probabilities, argmax), and the percentile bootstrap 95% interval over images of
   the difference of the groups' mean accuracies (2,000 resamples, seed 0).
The first says whether the recipe is better from seed to seed; the paired ones only whether these runs differ on
these images (seed-to-seed variation is not in them), so they can exclude 0 where the Welch interval does not.
Prints a table; --out DIR also writes DIR/compare.json and DIR/compare.md (DIR may not lie in a run or sweep
folder compared, nor in --data-root).

Refused in one line: a folder that is no run and no sweep, a sweep with no finished job, a run named twice in a
group, runs of different classes or evaluated on different images.
"""

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import torch

from cifar_lightning.blocks import ensemble
from cifar_lightning.blocks.console import quiet
from cifar_lightning.blocks.data import ImageDataModule, InMemoryImages
from cifar_lightning.blocks.errors import UserError
from cifar_lightning.blocks.paths import user_path
from cifar_lightning.blocks.stats import Interval, discordant, mcnemar_exact, mean_std, paired_bootstrap, welch_interval
from cifar_lightning.store.checkpoints import load_model
from cifar_lightning.store.locate import checkpoints_of
from cifar_lightning.store.runs import RunFolder, write_atomic
from cifar_lightning.store.trust import run_data_config
from cifar_lightning.tasks.cli import exit_on_user_error
from cifar_lightning.tasks.ensemble import describe

RESAMPLES, SEED = 2000, 0  # the paired bootstrap's


@dataclass
class Member:
    """One run of a group, evaluated."""

    checkpoint: Path
    probabilities: torch.Tensor  # float32 (images, classes), calibrated
    correct: torch.Tensor  # bool (images,)

    @property
    def accuracy(self) -> float:
        return int(self.correct.sum()) / len(self.correct)


def group(name: str, values: list[str]) -> list[Path]:
    """Every checkpoint group `name`'s arguments name, each once. Raises UserError as checkpoints_of, or for a
    checkpoint named twice."""
    checkpoints: list[Path] = []
    for value in values:
        found, left_out = checkpoints_of(value)
        if left_out:
            print(f"note: group {name}: {left_out}")
        for checkpoint in found:
            if any(checkpoint.resolve() == c.resolve() for c in checkpoints):
                raise UserError(f"group {name} names {checkpoint} twice: each run counts once")
            checkpoints.append(checkpoint)
    return checkpoints


def run_data(
    checkpoint: Path, split: str, data_root: Path | None, cache: dict[str, ImageDataModule]
) -> ImageDataModule:
    """The data `checkpoint`'s run was trained on (its root replaced by `data_root` if given), set up once per data
    config. Raises UserError (run_data_config, ImageDataModule) or when it has no `split`."""
    config = run_data_config(RunFolder.of_checkpoint(checkpoint).config)
    if data_root is not None:
        config["root"] = str(data_root)
    key = json.dumps(config, sort_keys=True, default=str)
    if key not in cache:
        cache[key] = ImageDataModule.for_evaluation(config)
        cache[key].setup("test")
    data = cache[key]
    if split not in data.splits:
        raise UserError(f"the data of {checkpoint} ({data.root}) has no {split} split: choose --split test or val")
    return data


def evaluate_groups(
    groups: dict[str, list[Path]], split: str, data_root: Path | None, device: torch.device, trusted: list[str]
) -> tuple[dict[str, list[Member]], list[str], torch.Tensor]:
    """Each run's calibrated probabilities on its split; returns the members of each group, the classes and the
    labels. Raises UserError (check_alike) before a run that differs from the first one predicts."""
    cache: dict[str, ImageDataModule] = {}
    first: tuple[Path, list[str], InMemoryImages] | None = None
    members: dict[str, list[Member]] = {name: [] for name in groups}
    for name, checkpoints in groups.items():
        for checkpoint in checkpoints:
            model = load_model(checkpoint, trusted).to(device)
            data = run_data(checkpoint, split, data_root, cache)
            this = (checkpoint, list(model.hparams["class_names"]), data.splits[split])
            check_alike(this, data.class_names, first or this, split)
            first = first or this
            images = data.splits[split]
            logits = model.predict_logits(images.images, tta=None, batch_size=data.eval_batch_size, calibrated=True)
            probabilities = logits.softmax(dim=1)
            members[name].append(Member(checkpoint, probabilities, probabilities.argmax(1) == images.labels))
    assert first is not None  # argparse requires one run per group at least
    return members, first[1], first[2].labels


def check_alike(
    run: tuple[Path, list[str], InMemoryImages],
    data_classes: list[str],
    first: tuple[Path, list[str], InMemoryImages],
    split: str,
) -> None:
    """A run (checkpoint, its classes, its evaluated images) can be compared with the `first` one: its classes are
    its data's (`data_classes`) and the first's, its images and labels the first's.

    Raises:
        UserError: one line naming both and what differs."""
    checkpoint, classes, images = run
    if classes != data_classes:
        raise UserError(
            f"{checkpoint}'s classes ({describe(classes)}) are not its data's ({describe(data_classes)}): give "
            f"--data-root a folder of the classes it was trained on"
        )
    if classes != first[1]:
        raise UserError(
            f"the runs' classes differ: {first[0]} has {describe(first[1])}, {checkpoint} has {describe(classes)}: "
            f"compare runs trained on the same classes"
        )
    if not (torch.equal(images.images, first[2].images) and torch.equal(images.labels, first[2].labels)):
        raise UserError(
            f"{checkpoint} is evaluated on other {split} images than {first[0]} (other data, data.val_size or "
            f"data.split_seed): compare runs on the same images (--data-root reads one folder for all)"
        )


def ensemble_correct(members: list[Member], labels: torch.Tensor) -> torch.Tensor:
    """Whether the group's ensemble (the mean of its members' probabilities, argmax) gets each image right."""
    return ensemble.average([m.probabilities for m in members]).argmax(1) == labels


def compare_groups(members: dict[str, list[Member]], labels: torch.Tensor) -> dict:
    """The comparison of groups A and B as plain values (accuracies as fractions; see the module's docstring)."""
    summary: dict = {"images": len(labels)}
    for name in ("a", "b"):
        mean, std = mean_std([m.accuracy for m in members[name]])
        summary[name] = {
            "runs": [{"checkpoint": str(m.checkpoint), "accuracy": m.accuracy} for m in members[name]],
            "mean": mean,
            "std": std,
            "ensemble_accuracy": float(ensemble_correct(members[name], labels).float().mean()),
        }
    accuracies = [[m.accuracy for m in members[name]] for name in ("a", "b")]
    summary["difference"] = summary["b"]["mean"] - summary["a"]["mean"]
    summary["welch"] = interval(welch_interval(accuracies[0], accuracies[1])) if min(map(len, accuracies)) > 1 else None
    only_a, only_b = discordant(*(ensemble_correct(members[name], labels).numpy() for name in ("a", "b")))
    summary["mcnemar"] = {"only_a_right": only_a, "only_b_right": only_b, "p_value": mcnemar_exact(only_a, only_b)}
    correct_a, correct_b = (torch.stack([m.correct for m in members[name]]).numpy() for name in ("a", "b"))
    bootstrap = paired_bootstrap(correct_a, correct_b, resamples=RESAMPLES, seed=SEED)
    summary["bootstrap"] = {**interval(bootstrap), "resamples": RESAMPLES, "seed": SEED}
    return summary


def interval(found: Interval) -> dict:
    return {"low": found.low, "high": found.high, "level": found.level, "df": found.df}


def points(value: float) -> str:
    """A difference of accuracies in percentage points, signed."""
    return f"{100 * value:+.2f}"


def span(found: dict) -> str:
    """An interval in percentage points, and whether it holds 0 (no difference)."""
    holds = "contains" if found["low"] <= 0 <= found["high"] else "excludes"
    return f"[{points(found['low'])}, {points(found['high'])}] ({holds} 0)"


def markdown(summary: dict, split: str, classes: list[str]) -> str:
    """The comparison as compare.md and the console show it."""
    lines = [
        f"# B vs A: accuracy on the {split} split ({summary['images']:,} images, {len(classes)} classes)",
        "",
        "| group | runs | accuracy, mean ± std (%) | ensemble accuracy (%) |",
        "|---|---|---|---|",
    ]
    for name in ("a", "b"):
        g = summary[name]
        spread = "" if g["std"] is None else f" ± {100 * g['std']:.2f}"
        lines.append(
            f"| {name.upper()} | {len(g['runs'])} | {100 * g['mean']:.2f}{spread} "
            f"| {100 * g['ensemble_accuracy']:.2f} |"
        )
    welch, boot, test = summary["welch"], summary["bootstrap"], summary["mcnemar"]
    lines += ["", f"**B - A: {points(summary['difference'])} points**", ""]
    if welch is None:
        lines.append("- over runs: no Welch interval (a group has one run: give two or more seeds per group)")
    else:
        df = "" if welch["df"] is None else f", df {welch['df']:.1f}"
        lines.append(f"- over runs, Welch t 95% interval: {span(welch)}{df}")
    lines += [
        f"- over images, paired bootstrap 95% interval ({boot['resamples']:,} resamples, seed {boot['seed']}): "
        f"{span(boot)}",
        f"- McNemar exact test of the ensembles: only A right on {test['only_a_right']:,} images, only B right on "
        f"{test['only_b_right']:,}: p = {test['p_value']:.3g}",
        "",
        "| group | run | accuracy (%) |",
        "|---|---|---|",
    ]
    lines += [
        f"| {n.upper()} | {r['checkpoint']} | {100 * r['accuracy']:.2f} |"
        for n in ("a", "b")
        for r in summary[n]["runs"]
    ]
    return "\n".join(lines) + "\n"


def out_folder(value: str, reads: list[Path]) -> Path:
    """The folder --out names, once it is clear that it lies in none of the folders the command reads (runs,
    sweeps, data). Raises UserError otherwise, or when it names a file."""
    path = user_path(value)
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {value}: {path} is a file: name a folder (compare.json and compare.md go into it)")
    for read in reads:
        if path.resolve().is_relative_to(read.resolve()):
            raise UserError(f"--out {value}: {path} lies in {read}, which this command reads: choose another folder")
    return path


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, as every other mistake
        raise UserError(f"{message} (python -m cifar_lightning.tasks.compare --help)")


def parser() -> Parser:
    p = Parser(prog="python -m cifar_lightning.tasks.compare", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--a", nargs="+", required=True, metavar="RUN_OR_SWEEP", help="group A: runs, sweeps, .ckpt files")
    p.add_argument("--b", nargs="+", required=True, metavar="RUN_OR_SWEEP", help="group B, compared with A")
    p.add_argument("--split", choices=("test", "val"), default="test", help="the split predicted (default test)")
    p.add_argument("--data-root", help="read the runs' kind of data from this folder instead of their own")
    p.add_argument("--out", metavar="DIR", help="also write DIR/compare.json and DIR/compare.md")
    p.add_argument("--device", default="cpu", help="where the models predict: cpu (default), cuda, cuda:1, ...")
    p.add_argument("--trusted-modules", nargs="*", default=[], help="modules of your own checkpoints may name")
    return p


def compare(argv: list[str] | None = None) -> dict:
    """The command: parses `argv`, compares, prints, writes --out's files; returns the comparison."""
    args = parser().parse_args(argv)
    groups = {"a": group("A", args.a), "b": group("B", args.b)}
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise UserError(f"--device {args.device} is not a device: use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: this machine has no CUDA GPU: use --device cpu")
    data_root = None if args.data_root is None else user_path(args.data_root)
    reads = [user_path(v) for v in (*args.a, *args.b) if user_path(v).is_dir()]
    reads += [RunFolder.of_checkpoint(c).path for c in (*groups["a"], *groups["b"])]
    out = None if args.out is None else out_folder(args.out, reads + ([data_root] if data_root else []))
    members, classes, labels = evaluate_groups(groups, args.split, data_root, device, args.trusted_modules)
    summary = {"split": args.split, "classes": classes, **compare_groups(members, labels)}
    text = markdown(summary, args.split, classes)
    print(text)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / "compare.json", json.dumps(summary, indent=2) + "\n")
        write_atomic(out / "compare.md", text)
        print(f"wrote {out}/compare.json, compare.md")
    return summary


def main() -> None:
    quiet()
    with exit_on_user_error():
        compare()


if __name__ == "__main__":
    main()
