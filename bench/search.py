"""A search against the default hyper-parameters, side by side: at the final run's budget and at equal total time.

    python bench/search.py                                  # MNIST and CIFAR-10, the README's rows
    python bench/search.py --cases mnist --trials 4 --epochs 5   # quicker

Cases: MNIST (the quality bench's LeNet-5 teacher, trained on all 60,000
images and cached, into LeNet-5-half) and CIFAR-10 (the augmentation bench's
ResNet-20 teacher into ResNet-8), each on ``--train-samples`` training images
(the first of a seeded shuffle). Rows, each scored once on the test split:

1. the defaults (KD T=4, alpha 0.9, SGD 0.05, cosine) for ``--epochs``;
2. the defaults for as many epochs as the search costs in all (its trials'
   epochs, on 80% of the images, plus its final run): equal total time;
3. a search as the service runs it, for each of ``--trial-epochs`` (short
   trials, and trials as long as the final run): ``--trials`` trials over
   kd.temperature (1-20, log), kd.alpha (0.5-1) and the learning rate
   (0.005-0.2, log), each trained on 80% of the training images and scored
   on the other 20% after every epoch (a trial below the median of the
   earlier ones there is pruned); then the chosen values train the student
   on all of them for ``--epochs``.

Writes bench/results/search.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import augmentation  # noqa: E402
from bench.quality import CASES, RESULTS, cached_teacher, load_case_data, top1  # noqa: E402
from distill import data, engine, search  # noqa: E402
from distill.losses import MethodConfig  # noqa: E402
from distill.trainer import TrainConfig  # noqa: E402

SPACE = (
    search.Parameter("kd.temperature", 1.0, 20.0, log=True),
    search.Parameter("kd.alpha", 0.5, 1.0),
    search.Parameter("training.learning_rate", 0.005, 0.2, log=True),
)
STUDENTS = {"mnist": "lenet5_half", "cifar10": "resnet8_cifar"}


def teacher_for(case: str, full: data.Splits) -> torch.nn.Module:
    if case == "cifar10":  # the augmentation bench's teacher, trained with augmentation (83%)
        return augmentation.cached_teacher(full, 10)[0]
    return cached_teacher("mnist", CASES["mnist"], full, 0)


def job(teacher: torch.nn.Module, student: str, splits: data.Splits, epochs: int) -> engine.Job:
    training = TrainConfig(epochs=epochs, batch_size=128, learning_rate=0.05)
    return engine.Job(teacher=teacher, student=student, data=splits, training=training, normalization=splits.normalization,
                      methods=(MethodConfig("kd", params={"temperature": 4.0, "alpha": 0.9}),), evaluate=False)


def run_case(case: str, args: argparse.Namespace) -> list[str]:
    full = load_case_data(case, 0, 0)  # the teachers were trained under all training images' statistics
    splits = data.Splits(full.train.subset(args.train_samples, 0), full.val, full.normalization)
    teacher = teacher_for(case, full).eval()
    teacher_top1 = top1(teacher, splits.val, splits.normalization)
    rows = []
    equal_time = args.epochs + round(0.8 * args.trials * args.trial_epochs[0])  # unpruned
    for label, epochs in ((f"defaults, {args.epochs} epochs (the final run's budget)", args.epochs),
                          (f"defaults, {equal_time} epochs (the search's total time)", equal_time)):
        started = time.perf_counter()
        outcome = engine.run(job(teacher, STUDENTS[case], splits, epochs))
        rows.append((label, top1(outcome.student, splits.val, splits.normalization), time.perf_counter() - started, ""))
        print(case, rows[-1], flush=True)
    final = job(teacher, STUDENTS[case], splits, args.epochs)
    for trial_epochs in args.trial_epochs:
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as folder:
            config = search.SearchConfig(SPACE, trials=args.trials, held_out_fraction=0.2, trial_epochs=trial_epochs)
            result = search.run(final, config, Path(folder))
        outcome = engine.run(search.with_values(final, result.best))  # what the service ships
        chosen = ", ".join(f"{k.partition('.')[2]} {v:.3g}" for k, v in result.best.params.items())
        pruned = sum(t.state == "pruned" for t in result.trials)
        rows.append((f"search, {args.trials} trials x {trial_epochs} epochs ({pruned} pruned), then {args.epochs} "
                     "epochs with the chosen values", top1(outcome.student, splits.val, splits.normalization),
                     time.perf_counter() - started,
                     f"trial {result.best.number}: {chosen} (held-out {result.best.held_out_top1:.2f})"))
        print(case, rows[-1], flush=True)
    lines = [
        f"## {case}: KD {'lenet5 -> lenet5_half' if case == 'mnist' else 'resnet20_cifar -> resnet8_cifar'}, "
        f"{len(splits.train)} training images, teacher {teacher_top1:.2f}% on {len(splits.val)} test images",
        "",
        "| run | student top-1 (test) | time | chosen |",
        "|---|---:|---:|---|",
    ]
    lines += [f"| {label} | {acc:.2f} | {sec:.0f} s | {note} |" for label, acc, sec, note in rows]
    return lines + [""]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=["mnist", "cifar10"], choices=sorted(STUDENTS))
    p.add_argument("--train-samples", type=int, default=5000)
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--trial-epochs", type=int, nargs="+", default=[3, 20], help="a search row for each")
    p.add_argument("--epochs", type=int, default=20, help="the final run's, and the defaults' first row")
    p.add_argument("--out", type=Path, default=RESULTS / "search.md")
    args = p.parse_args()
    lines = ["# Search vs the defaults", "", "`" + " ".join(["python", *sys.argv]) + "`", "",
             f"Each row scored once on the test split; the search never saw it. {os.cpu_count()} CPU cores.", ""]
    for case in args.cases:
        lines += run_case(case, args)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
