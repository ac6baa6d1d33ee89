"""Train a teacher on a local torchvision dataset and save its state_dict.

The user's side of the product, for benchmarks and the README's walk-through:

    python bench/train_teacher.py --dataset MNIST --root ../shared/datasets \
        --architecture lenet5 --epochs 12 --out bench/.cache/lenet5-mnist.pt

The normalisation is the train split's own mean and std, which is also what a
Distillery job uses when its spec gives none.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from distill import data, evaluate, models, trainer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="MNIST", choices=data.TORCHVISION_DATASETS)
    p.add_argument("--root", type=Path, default=Path("../shared/datasets"))
    p.add_argument("--architecture", default="lenet5")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()

    train, test = data.load_torchvision(args.dataset, args.root)
    splits = data.Splits(train, test)
    model = models.build(args.architecture, len(train.classes), train.input_shape[0])
    started = time.perf_counter()
    trainer.train_from_labels(
        model, splits, trainer.TrainConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr, seed=args.seed)
    )
    result = evaluate.accuracy(trainer.predict_logits(model, test, splits.normalization), test.labels)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out)
    print(
        f"{args.architecture} on {args.dataset}: test top-1 {result.top1:.2f}% after {args.epochs} epochs "
        f"({time.perf_counter() - started:.0f} s); saved {args.out}"
    )


if __name__ == "__main__":
    main()
