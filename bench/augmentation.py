"""Augmentation: KD without and with each preset, at a short and a long budget, side by side in one run.

    python bench/augmentation.py                          # the README's table
    python bench/augmentation.py --epochs 5 20 --train-samples 2000   # quicker

Data: the shared CIFAR-10 (JPEG, 32 px). The teacher, a ResNet-20, is trained
by the bench with the ``standard`` preset on all 50,000 training images
(``--teacher-epochs``, cached in bench/.cache/augmentation). Each student, a
ResNet-8, is distilled with KD (T=4, alpha=0.9, SGD 0.05, cosine) from
``--train-samples`` training images (a seeded subset), at each of ``--epochs``
(a short and a long budget), with: no augmentation (the teacher's logits cached
once), ``standard`` and ``strong`` with the teacher run on every augmented
batch, and ``standard`` with ``--views`` cached teacher views (FKD-style).
Top-1 is the final student's on the 10,000 test images (never the best epoch).
Writes bench/results/augmentation-cifar10.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.quality import CACHE, RESULTS, _cifar10, top1  # noqa: E402
from distill import data, losses, models, trainer  # noqa: E402
from distill.losses import MethodConfig  # noqa: E402


def cached_teacher(splits: data.Splits, epochs: int) -> tuple[torch.nn.Module, float]:
    """A ResNet-20 trained with the standard preset on every training image; (model, training seconds or 0 if cached)."""
    path = CACHE / "augmentation" / f"teacher-resnet20_cifar-standard-{epochs}.pt"
    teacher = models.build("resnet20_cifar", 10, 3)
    if path.exists():
        teacher.load_state_dict(torch.load(path, weights_only=True))
        return teacher.eval(), 0.0
    started = time.perf_counter()
    torch.manual_seed(0)
    trainer.train_from_labels(teacher, splits, trainer.TrainConfig(epochs=epochs, learning_rate=0.1, augmentation="standard"))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(teacher.state_dict(), path)
    return teacher.eval(), time.perf_counter() - started


def distil(teacher: torch.nn.Module, splits: data.Splits, train: data.ImageData, epochs: int, augmentation: str,
           views: int) -> tuple[float, float]:
    """(student top-1 on the test split, seconds)."""
    torch.manual_seed(0)
    student = models.build("resnet8_cifar", 10, 3)
    loss = losses.build_loss([MethodConfig("kd", params={"temperature": 4.0, "alpha": 0.9})], teacher, student, (3, 32, 32))
    config = trainer.TrainConfig(epochs=epochs, batch_size=128, learning_rate=0.05, augmentation=augmentation, teacher_views=views)
    started = time.perf_counter()
    trainer.distil(student, teacher, loss, train, splits.normalization, config)
    return top1(student, splits.val, splits.normalization), time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher-epochs", type=int, default=10)
    p.add_argument("--train-samples", type=int, default=5000)
    p.add_argument("--epochs", type=int, nargs="+", default=[10, 40], help="the budgets: a short and a long one")
    p.add_argument("--views", type=int, default=8, help="cached teacher views (FKD-style)")
    p.add_argument("--out", type=Path, default=RESULTS / "augmentation-cifar10.md")
    args = p.parse_args()

    train, test = _cifar10()
    splits = data.Splits(train, test)  # the normalisation: the training data's statistics
    teacher, teacher_seconds = cached_teacher(splits, args.teacher_epochs)
    teacher_top1 = top1(teacher, splits.val, splits.normalization)
    print(f"teacher resnet20_cifar: {teacher_top1:.2f}% ({teacher_seconds:.0f} s to train)", flush=True)
    subset = train.subset(args.train_samples, seed=0)
    runs = [("none", 0), ("standard", 0), ("standard", args.views), ("strong", 0)]
    rows = []
    for epochs in args.epochs:
        for augmentation, views in runs:
            accuracy, seconds = distil(teacher, splits, subset, epochs, augmentation, views)
            label = f"{augmentation}, {views} cached teacher views" if views else (
                augmentation if augmentation == "none" else f"{augmentation}, teacher every step")
            rows.append((epochs, label, accuracy, seconds))
            print(rows[-1], flush=True)

    lines = [
        f"# Augmentation: KD resnet20_cifar -> resnet8_cifar, CIFAR-10 (JPEG), {args.train_samples} training images",
        "",
        "`" + " ".join(["python", *sys.argv]) + "`",
        "",
        f"Teacher: ResNet-20 trained with `standard` on all {len(train)} training images for {args.teacher_epochs} epochs: "
        f"**{teacher_top1:.2f}%** on the {len(test)} test images. Students: KD (T=4, alpha=0.9), batch 128, SGD 0.05, "
        f"cosine; final top-1 on the test images. {os.cpu_count()} CPU cores.",
        "",
        "| epochs | augmentation | student top-1 | gap to teacher | time |",
        "|---:|---|---:|---:|---:|",
    ]
    lines += [f"| {e} | {label} | {acc:.2f} | {acc - teacher_top1:+.2f} | {sec:.0f} s |" for e, label, acc, sec in rows]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
