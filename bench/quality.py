"""Quality benchmark: every offline method against the student trained alone.

For a case (teacher, student, data), the teacher is trained once and cached;
then each method trains the student on the same epoch budget over several
seeds, and the final model (never the best epoch) is scored on the test split.

    python bench/quality.py --case mnist                # LeNet-5 -> LeNet-5-half, 3 seeds
    python bench/quality.py --case cifar10 --train-samples 5000 --seeds 1
    python bench/quality.py --case mnist-omit3          # Hinton's omitted-class experiment
    python bench/quality.py --case mnist-datafree --seeds 1 --iterations 2000
    python bench/quality.py --case cifar10-datafree --train-samples 5000 --seeds 1 --iterations 150

Writes bench/results/quality-<case>.md and prints the table. Data come from
../shared/datasets (MNIST in torchvision's layout, the CIFAR-10 JPEG tarball).
"""

from __future__ import annotations

import argparse
import math
import statistics
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from distill import allocator, data, datafree, engine, evaluate, losses, models, trainer
from distill.losses import MethodConfig

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
RESULTS = HERE / "results"
DATASETS = HERE.parent.parent / "shared" / "datasets"


@dataclass(frozen=True)
class Case:
    teacher: str
    student: str
    teacher_epochs: int
    teacher_lr: float


CASES = {
    "mnist": Case("lenet5", "lenet5_half", teacher_epochs=12, teacher_lr=0.05),
    "cifar10": Case("resnet20_cifar", "resnet8_cifar", teacher_epochs=15, teacher_lr=0.1),
    # The same teacher into a student of half its width at every stage (8-16-32 channels against 16-32-64): where
    # RepDistiller's table has FSP collapse (wrn-40-2 -> wrn-40-1), do the flow methods stay stable?
    "cifar10-narrow": Case("resnet20_cifar", "cnn_bn_8", teacher_epochs=15, teacher_lr=0.1),
}

# What each row trains on. Staged methods spend part of the same epoch budget on their first stage.
METHODS: dict[str, list[MethodConfig]] = {
    "student alone (cross_entropy)": [MethodConfig("cross_entropy")],
    "kd": [MethodConfig("kd", params={"temperature": 4.0, "alpha": 0.9})],
    "dkd": [MethodConfig("dkd")],  # the paper's defaults: alpha 1, beta 8, T 4
    "fitnet (+kd)": [MethodConfig("fitnet", params={"hint_epochs": 2}), MethodConfig("kd")],
    "attention (+kd)": [MethodConfig("attention", params={"beta": 1000.0}), MethodConfig("kd")],
    "attention (+cross_entropy)": [MethodConfig("attention", params={"beta": 1000.0}), MethodConfig("cross_entropy")],
    "fsp (+kd)": [MethodConfig("fsp", params={"flow_epochs": 2}), MethodConfig("kd")],
    "fsp (+cross_entropy)": [MethodConfig("fsp", params={"flow_epochs": 2}), MethodConfig("cross_entropy")],
    "fsp adversarial (+kd)": [MethodConfig("fsp", params={"flow_epochs": 2, "adversarial_weight": 1}), MethodConfig("kd")],
    "dense_flow (+kd)": [MethodConfig("dense_flow", params={"flow_epochs": 2}), MethodConfig("kd")],
    "dense_flow adversarial (+kd)": [MethodConfig("dense_flow", params={"flow_epochs": 2, "adversarial_weight": 1}),
                                     MethodConfig("kd")],
    "ktsvd (+kd)": [MethodConfig("ktsvd", params={"flow_epochs": 2}), MethodConfig("kd")],
    "self_distill": [MethodConfig("self_distill")],
    # A KD generalist for the row's epochs, then each specialist for 5 epochs over its group's images and as many
    # others; the shipped model runs 1 + specialists networks.
    "specialists (kd generalist)": [MethodConfig("specialists")],
}


# Ensembles of independently distilled students, their probabilities averaged: rows that cost what the specialists
# row costs (4 networks a call; 4 x half the epochs is the same training budget), to tell what the specialists'
# grouping adds from what any four networks add.
AVERAGED = {"kd, 4 students averaged (half the epochs each)": 4}


class AveragedStudents(torch.nn.Module):
    def __init__(self, students: list[torch.nn.Module]) -> None:
        super().__init__()
        self.students = torch.nn.ModuleList(students)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([s(x).softmax(1) for s in self.students]).mean(0).log()


def load_case_data(case: str, train_samples: int, test_samples: int) -> data.Splits:
    if case.startswith("mnist"):
        train, test = data.load_torchvision("MNIST", DATASETS)
    else:
        train, test = _cifar10()
    return data.Splits(train.subset(train_samples, seed=0), test.subset(test_samples, seed=1))


def _cifar10() -> tuple[data.ImageData, data.ImageData]:
    """Decode the JPEG ImageFolder tarball once; cache the tensors."""
    cached = CACHE / "cifar10.pt"
    if cached.exists():
        blob = torch.load(cached, weights_only=True)
        return tuple(data.ImageData(blob[f"{s}_images"], blob[f"{s}_labels"], blob["classes"]) for s in ("train", "test"))
    root = CACHE / "cifar10"  # the tarball holds train/<class>/*.jpg and test/<class>/*.jpg
    if not (root / "train").is_dir():
        with tarfile.open(DATASETS / "cifar10-jpeg.tar.gz") as tar:
            tar.extractall(root, filter="data")
    train = data.load_image_folder(root / "train", image_size=32, channels=3)
    test = data.load_image_folder(root / "test", image_size=32, channels=3, classes=train.classes)
    torch.save(
        {"train_images": train.images, "train_labels": train.labels, "test_images": test.images,
         "test_labels": test.labels, "classes": train.classes},
        cached,
    )
    return train, test


def top1(model: torch.nn.Module, split: data.ImageData, normalization: data.Normalization) -> float:
    return evaluate.accuracy(trainer.predict_logits(model, split, normalization), split.labels).top1


def cached_teacher(case_name: str, case: Case, splits: data.Splits, train_samples: int) -> torch.nn.Module:
    data_name = case_name.removesuffix("-narrow")  # a case on the same data shares its teacher
    path = CACHE / f"teacher-{data_name}-{case.teacher}-{train_samples or 'all'}.pt"
    teacher = models.build(case.teacher, len(splits.train.classes), splits.train.input_shape[0])
    if path.exists():
        teacher.load_state_dict(torch.load(path, weights_only=True))
    else:
        started = time.perf_counter()
        trainer.train_from_labels(
            teacher, splits, trainer.TrainConfig(epochs=case.teacher_epochs, learning_rate=case.teacher_lr, seed=0)
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(teacher.state_dict(), path)
        print(f"trained teacher {case.teacher} in {time.perf_counter() - started:.0f} s -> {path}", flush=True)
    return teacher.eval()


def train_student(case: Case, teacher: torch.nn.Module, splits: data.Splits, configs: list[MethodConfig], epochs: int, seed: int,
                  train: data.ImageData | None = None) -> tuple[torch.nn.Module, float]:
    torch.manual_seed(seed)
    train = train or splits.train
    student = models.build(case.student, len(splits.train.classes), splits.train.input_shape[0])
    if any(c.method == "specialists" for c in configs):  # the engine's call: the student becomes an ensemble
        started = time.perf_counter()
        outcome = engine.run(engine.Job(teacher, student, data.Splits(train, splits.val, splits.normalization),
                                        tuple(configs), trainer.TrainConfig(epochs=epochs, seed=seed),
                                        normalization=splits.normalization, evaluate=False))
        print(f"    specialists: {[[splits.train.classes[c] for c in s.classes] for s in outcome.training.specialists]}, "
              f"generalist alone {top1(outcome.student.generalist, splits.val, splits.normalization):.2f}%", flush=True)
        return outcome.student, time.perf_counter() - started
    loss = losses.build_loss(configs, teacher, student, splits.train.input_shape)
    started = time.perf_counter()
    trainer.distil(
        student, teacher, loss, train, splits.normalization,
        trainer.TrainConfig(epochs=epochs - loss.pretrain_epochs, seed=seed),
    )
    return student, time.perf_counter() - started


def prepare_case(case_name: str, args: argparse.Namespace) -> tuple[Case, data.Splits, torch.nn.Module, float]:
    """The case's data, its (cached) teacher and the teacher's test top-1."""
    case = CASES[case_name]
    splits = load_case_data(case_name, args.train_samples, args.test_samples)
    teacher = cached_teacher(case_name, case, splits, args.train_samples)
    teacher_top1 = top1(teacher, splits.val, splits.normalization)
    print(f"teacher {case.teacher}: {teacher_top1:.2f}% on {len(splits.val)} test images", flush=True)
    return case, splits, teacher, teacher_top1


def wanted(row: str, filters: list[str] | None) -> bool:
    """A row named exactly by a filter, or containing one (``kd`` is the kd row alone; ``+kd`` the rows with kd added)."""
    if not filters:
        return True
    exact = [f for f in filters if f in METHODS]
    return row in exact or any(f in row for f in filters if f not in exact)


def run_methods(case_name: str, args: argparse.Namespace) -> str:
    case, splits, teacher, teacher_top1 = prepare_case(case_name, args)

    rows: dict[str, tuple[list[float], list[float]]] = {}
    for name, configs in {**METHODS, **{row: METHODS["kd"] for row in AVERAGED}}.items():
        if not wanted(name, args.methods):
            continue
        scores, times = [], []
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            if name in AVERAGED:
                members = [train_student(case, teacher, splits, configs, args.epochs // 2, 1000 * seed + i)
                           for i in range(AVERAGED[name])]
                student, seconds = AveragedStudents([m for m, _ in members]).eval(), sum(t for _, t in members)
            else:
                student, seconds = train_student(case, teacher, splits, configs, args.epochs, seed)
            scores.append(top1(student, splits.val, splits.normalization))
            times.append(seconds)
            print(f"  {name:<30} seed {seed}: {scores[-1]:.2f}%  ({seconds:.0f} s)", flush=True)
        rows[name] = (scores, times)

    baseline = statistics.fmean(rows.get("student alone (cross_entropy)", ([float("nan")], []))[0])
    lines = [
        f"# Quality: {case.teacher} -> {case.student} ({case_name})",
        "",
        f"Teacher {case.teacher}: **{teacher_top1:.2f}%** top-1 on {len(splits.val)} test images. "
        f"Students: {args.epochs} epochs each (staged methods spend 2 of them on their first stage), "
        f"batch 128, SGD 0.05 with a cosine schedule, {len(splits.train)} training images, "
        f"{args.seeds} seed(s); final-epoch accuracy, never the best epoch.",
        "",
        "| method | student top-1 % (mean) | spread (min-max) | gap to teacher | gain over student alone | wall time per run |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, (scores, times) in rows.items():
        mean = statistics.fmean(scores)
        lines.append(
            f"| {name} | {mean:.2f} | {min(scores):.2f}-{max(scores):.2f} | {mean - teacher_top1:+.2f} "
            f"| {'' if math.isnan(baseline) else f'{mean - baseline:+.2f}'} | {statistics.fmean(times):.0f} s |"  # blank: not run
        )
    return "\n".join(lines) + "\n"


# Data-free rows: the same teacher, no data; the test split scores the final student once.
DATA_FREE: dict[str, dict[str, float | str]] = {
    "dfad (default: + class balance, replay)": {"method": "dfad"},
    "dfad, 20 replayed steps": {"method": "dfad", "replay_steps": 20},
    "dfad, 6 fresh + 20 replayed steps (the MNIST recipe)": {"method": "dfad", "student_steps": 6, "replay_steps": 20},
    "dfad without replay (5 fresh steps)": {"method": "dfad", "student_steps": 5, "replay_steps": 0},
    "dfad, pure (balance_weight 0)": {"method": "dfad", "balance_weight": 0.0},
    "bn_prior (BatchNorm teachers)": {"method": "bn_prior"},
    "bn_prior, 20 replayed steps": {"method": "bn_prior", "replay_steps": 20},
}


def run_data_free(case_name: str, args: argparse.Namespace) -> str:
    defaults = datafree.DataFreeConfig()
    case, splits, teacher, teacher_top1 = prepare_case(case_name, args)
    shape, classes = splits.train.input_shape, len(splits.train.classes)
    has_bn = bool(datafree.batchnorm_layers(teacher))

    lines = [
        f"# Data-free quality: {case.teacher} -> {case.student} ({case_name}, no training data)",
        "",
        f"Teacher {case.teacher}: **{teacher_top1:.2f}%** top-1 on {len(splits.val)} test images. Each student: "
        f"{args.iterations} generator iterations, each followed by {defaults.student_steps} student steps on "
        f"fresh images and {defaults.replay_steps} on replayed ones (unless the row says otherwise), batch "
        f"{defaults.batch_size or 'from the teacher (256 for 10 classes)'}, generator width "
        f"{args.generator_width}, on {args.device}, {args.seeds} seed(s). The test split scores the final "
        "student once; nothing was selected by it.",
        "",
        "| method | student top-1 % (mean) | spread | gap to teacher | agreement on generated % | rarest class share % | s / iteration | wall time |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, overrides in DATA_FREE.items():
        if not wanted(name, args.methods) or (overrides["method"] == "bn_prior" and not has_bn):
            continue
        scores, seconds, agreement, rarest = [], [], [], []
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            torch.manual_seed(seed)
            student = models.build(case.student, classes, shape[0])
            config = datafree.DataFreeConfig(
                iterations=args.iterations, generator_width=args.generator_width, seed=seed, device=args.device,
                **overrides,
            )
            result = datafree.distil_data_free(student, teacher.to(args.device), shape, config)
            check = datafree.check_generator(result.generator, teacher, student)
            student.cpu()
            teacher.cpu()
            scores.append(top1(student, splits.val, splits.normalization))
            seconds.append(result.wall_seconds)
            agreement.append(check.agreement)
            rarest.append(100 * min(check.class_histogram) / check.samples)
            print(f"  {name:<34} seed {seed}: {scores[-1]:.2f}%  ({seconds[-1]:.0f} s, "
                  f"histogram {check.class_histogram})", flush=True)
        mean = statistics.fmean(scores)
        lines.append(
            f"| {name} | {mean:.2f} | {min(scores):.2f}-{max(scores):.2f} | {mean - teacher_top1:+.2f} "
            f"| {statistics.fmean(agreement):.2f} | {statistics.fmean(rarest):.1f} "
            f"| {statistics.fmean(seconds) / args.iterations:.2f} | {statistics.fmean(seconds):.0f} s |"
        )
    return "\n".join(lines) + "\n"


def run_omitted_class(args: argparse.Namespace, omitted: int = 3) -> str:
    """Hinton et al. 2015, section 3: distil with every `omitted` digit removed from the transfer set.

    The student never sees a 3, so the bias of class 3 is too low; raising it
    by a constant recovers most 3s. The constant is chosen on 5,000 held-out
    training images (which include 3s), not on the test set.
    """
    case = CASES["mnist"]
    splits = load_case_data("mnist", 0, 0)
    teacher = cached_teacher("mnist", case, splits, 0)
    held_out = splits.train.subset(5000, seed=7)
    order = torch.randperm(len(splits.train), generator=torch.Generator().manual_seed(7))
    transfer = data.ImageData(splits.train.images[order[5000:]], splits.train.labels[order[5000:]], splits.train.classes)
    transfer = transfer.without_classes((omitted,))
    kd = [MethodConfig("kd", params={"temperature": 8.0, "alpha": 1.0})]
    student, seconds = train_student(case, teacher, splits, kd, args.epochs, seed=0, train=transfer)

    def scores(model: torch.nn.Module, split: data.ImageData) -> tuple[float, float]:
        logits = trainer.predict_logits(model, split, splits.normalization)
        is_omitted = split.labels == omitted
        correct = logits.argmax(1) == split.labels
        return 100 * correct.float().mean().item(), 100 * correct[is_omitted].float().mean().item()

    before_all, before_3 = scores(student, splits.val)
    bias = student.classifier[-1].bias
    best_shift, best_acc = 0.0, -1.0
    original = bias.detach().clone()
    for shift in [x / 2 for x in range(0, 41)]:
        with torch.no_grad():
            bias.copy_(original)
            bias[omitted] += shift
        acc = scores(student, held_out)[0]
        if acc > best_acc:
            best_shift, best_acc = shift, acc
    with torch.no_grad():
        bias.copy_(original)
        bias[omitted] += best_shift
    after_all, after_3 = scores(student, splits.val)
    teacher_all, teacher_3 = scores(teacher, splits.val)
    return "\n".join([
        f"# Omitted class: MNIST without any {omitted} in the transfer set ({case.teacher} -> {case.student})",
        "",
        f"KD with T=8, alpha=1 (soft targets only), {args.epochs} epochs, {len(transfer)} transfer images "
        f"({seconds:.0f} s). Bias shift for class {omitted} chosen on 5,000 held-out training images: +{best_shift:g}.",
        "",
        f"| model | test top-1 % | test {omitted}s correct % |",
        "|---|---:|---:|",
        f"| teacher | {teacher_all:.2f} | {teacher_3:.2f} |",
        f"| student, as distilled | {before_all:.2f} | {before_3:.2f} |",
        f"| student, bias of {omitted} raised by {best_shift:g} | {after_all:.2f} | {after_3:.2f} |",
        "",
        "Hinton et al. report 98.6% of the test 3s correct after the bias shift (a 2x1200-unit net, T=20).",
        "",
    ])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", choices=[*CASES, "mnist-omit3", "mnist-datafree", "cifar10-datafree"], default="mnist")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0, help="seeds run from here (to add runs to an earlier table)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--train-samples", type=int, default=0, help="cap the training split (0: all)")
    p.add_argument("--test-samples", type=int, default=0, help="cap the test split (0: all)")
    p.add_argument("--methods", nargs="*", help="only these rows: a row's exact name, or a part of the names wanted")
    p.add_argument("--out", type=Path, help="where to write the table (default bench/results/quality-CASE.md)")
    p.add_argument("--iterations", type=int, default=2000, help="data-free: generator iterations")
    p.add_argument("--generator-width", type=int, default=16, help="data-free: the generator's last-block channels")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="data-free: where to train")
    args = p.parse_args()
    allocator.keep_freed_memory()  # as the worker does
    started = time.perf_counter()
    if args.case == "mnist-omit3":
        table = run_omitted_class(args)
    elif args.case.endswith("-datafree"):
        table = run_data_free(args.case.removesuffix("-datafree"), args)
    else:
        table = run_methods(args.case, args)
    table += f"\nWhole benchmark: {time.perf_counter() - started:.0f} s on {torch.get_num_threads()} CPU threads.\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = args.out or RESULTS / f"quality-{args.case}.md"
    out.write_text(table)
    print(table)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
