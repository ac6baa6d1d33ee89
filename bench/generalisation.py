"""Generalisation: teachers made the way users make them, distilled with the product's defaults.

The bench trains its own teachers, of different architectures, formats and
input conventions (with and without BatchNorm; state_dict, TorchScript and
.pt2; normalisation inside the model and outside it), and hands each to a real
server (``distillery serve`` on a free port) twice, with the specs the README
shows: KD with labelled data (``examples/mnist-kd.yaml``'s recipe, no
mean/std: the server finds the teacher's convention), and data-free with
``auto`` (``examples/mnist-datafree.yaml``'s recipe, a BatchNorm student for a BatchNorm
teacher as the README advises; the dataset is there
only to score the final student). Nothing is tuned per teacher. Top-1 is the
final model's on the test split, as the job's report gives it.

    python bench/generalisation.py                               # every teacher whose data is present
    python bench/generalisation.py --only mnist --data-free-iterations 300

Teachers are cached in bench/.cache/generalisation. Data: MNIST and the
CIFAR-10 JPEG tarball from ../shared/datasets; Fashion-MNIST from
``--fashion-root`` (torchvision's layout, FashionMNIST/raw) when it is there,
and its rows say "no data" when not: nothing is downloaded. Writes
bench/results/generalisation.md.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from google.protobuf import json_format
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.quality import CACHE, DATASETS, RESULTS, _cifar10  # noqa: E402
from distill import data, evaluate, loading, models, trainer  # noqa: E402
from protos.distillery.v1 import distillery_pb2 as pb  # noqa: E402
from service.client import Client  # noqa: E402
from service.server import spawn_server, stop_server  # noqa: E402

HERE = CACHE / "generalisation"
IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


class Normalize(nn.Module):
    """The first op of a model that takes [0, 1] images, as deployable models are often shipped."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def small_cnn(channels: int, classes: int, batchnorm: bool) -> nn.Sequential:
    """Three 3x3 conv blocks and a linear head: the kind of classifier people train for themselves."""
    norm = (lambda c: nn.BatchNorm2d(c)) if batchnorm else (lambda c: nn.Identity())
    return nn.Sequential(
        nn.Conv2d(channels, 32, 3, padding=1), norm(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), norm(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1), norm(128), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(128, classes),
    )


@dataclass(frozen=True)
class Convention:
    """How the teacher wants its inputs: ``inside`` models take [0, 1] and normalise themselves."""

    name: str
    inside: bool
    stats: Callable[[data.ImageData], data.Normalization]

    def feed(self, train: data.ImageData) -> data.Normalization:
        """What the training loop applies to uint8 images before the model sees them."""
        return data.Normalization([0.0] * train.input_shape[0], [1.0] * train.input_shape[0]) if self.inside else self.stats(train)


DATA_STATS = Convention("outside: the data's mean/std", False, data.Normalization.of)
UNIT_RANGE = Convention("outside: [-1, 1]", False, lambda d: data.Normalization([0.5] * d.input_shape[0], [0.5] * d.input_shape[0]))
INSIDE_DATA = Convention("inside: Normalize(data mean/std)", True, data.Normalization.of)
INSIDE_IMAGENET = Convention("inside: Normalize(ImageNet)", True, lambda d: data.Normalization(*IMAGENET))


@dataclass(frozen=True)
class TeacherCase:
    name: str
    dataset: str  # MNIST | FashionMNIST | CIFAR10
    architecture: str  # a registry name (state_dict files need one), or "small_cnn"
    batchnorm: bool
    convention: Convention
    fmt: str  # state_dict | torchscript | pt2
    student: str
    epochs: int


CASES = [
    TeacherCase("mnist-lenet5", "MNIST", "lenet5", False, DATA_STATS, "state_dict", "lenet5_half", 3),
    TeacherCase("mnist-cnn-bn-inside", "MNIST", "small_cnn", True, INSIDE_DATA, "torchscript", "lenet5_half", 2),
    TeacherCase("mnist-cnn-bn-pm1", "MNIST", "small_cnn", True, UNIT_RANGE, "pt2", "lenet5_half", 2),
    TeacherCase("fashion-cnn-bn-inside", "FashionMNIST", "small_cnn", True, INSIDE_DATA, "torchscript", "lenet5_half", 4),
    TeacherCase("fashion-cnn-plain", "FashionMNIST", "small_cnn", False, DATA_STATS, "pt2", "lenet5_half", 4),
    TeacherCase("cifar10-resnet20", "CIFAR10", "resnet20_cifar", True, DATA_STATS, "state_dict", "resnet8_cifar", 10),
    TeacherCase("cifar10-cnn-plain-imagenet", "CIFAR10", "small_cnn", False, INSIDE_IMAGENET, "torchscript", "resnet8_cifar", 10),
]
FORMATS = {"state_dict": pb.MODEL_FORMAT_STATE_DICT, "torchscript": pb.MODEL_FORMAT_TORCHSCRIPT, "pt2": pb.MODEL_FORMAT_EXPORTED_PROGRAM}


def load_splits(dataset: str, fashion_root: Path) -> data.Splits | None:
    if dataset == "MNIST":
        return data.Splits(*data.load_torchvision("MNIST", DATASETS))
    if dataset == "FashionMNIST":
        if not (fashion_root / "FashionMNIST" / "raw").is_dir():
            return None
        return data.Splits(*data.load_torchvision("FashionMNIST", fashion_root))
    return data.Splits(*_cifar10())


def train_teacher(case: TeacherCase, splits: data.Splits) -> tuple[Path, float]:
    """Train (or take from the cache) and save the teacher in its case's format; returns the file and its test top-1."""
    suffix = {"state_dict": ".pt", "torchscript": ".ts.pt", "pt2": ".pt2"}[case.fmt]
    path = HERE / f"{case.name}{suffix}"
    shape, classes = splits.train.input_shape, len(splits.train.classes)
    torch.manual_seed(0)
    if case.architecture == "small_cnn":
        body = small_cnn(shape[0], classes, case.batchnorm)
    else:
        body = models.build(case.architecture, classes, shape[0])
    model = nn.Sequential(Normalize(*_stats(case.convention, splits.train)), body) if case.convention.inside else body
    feed = case.convention.feed(splits.train)
    if not path.exists():
        started = time.perf_counter()
        trainer.train_from_labels(model, data.Splits(splits.train, splits.val, feed),
                                  trainer.TrainConfig(epochs=case.epochs, learning_rate=0.05, seed=0))
        model.eval()
        HERE.mkdir(parents=True, exist_ok=True)
        if case.fmt == "state_dict":
            torch.save(model.state_dict(), path)
        elif case.fmt == "torchscript":
            torch.jit.script(model).save(str(path))
        else:
            example = torch.zeros(2, *shape)
            torch.export.save(torch.export.export(model, (example,)), path)
        print(f"  trained {case.name} in {time.perf_counter() - started:.0f} s -> {path}", flush=True)
    elif case.fmt == "state_dict":
        model.load_state_dict(torch.load(path, weights_only=True))
    else:
        # As the server loads it: an exported program's module refuses eval(), and runs at its static batch size.
        model = loading.load_module(path, loading.TORCHSCRIPT if case.fmt == "torchscript" else loading.EXPORTED_PROGRAM)
    logits = trainer.predict_logits(model.eval(), splits.val, feed)
    return path, evaluate.accuracy(logits, splits.val.labels).top1


def _stats(convention: Convention, train: data.ImageData) -> tuple[list[float], list[float]]:
    stats = convention.stats(train)
    return stats.mean, stats.std


def dataset_spec(case: TeacherCase, cifar_root: Path) -> pb.DatasetSpec:
    if case.dataset == "CIFAR10":
        return pb.DatasetSpec(image_folder=pb.ImageFolderDataset(
            train_dir=str(cifar_root / "train"), val_dir=str(cifar_root / "test"), image_size=32, channels=3))
    return pb.DatasetSpec(torchvision=pb.TorchvisionDataset(name=case.dataset, root="."))


def kd_spec(teacher_id: str, case: TeacherCase, dataset: pb.DatasetSpec) -> pb.JobSpec:
    """examples/mnist-kd.yaml's recipe, without mean/std."""
    return pb.JobSpec(
        teacher_model_id=teacher_id,
        display_name=f"generalisation kd {case.name}",
        student=pb.StudentSpec(architecture=case.student),
        dataset=dataset,
        losses=[pb.LossTerm(kd=pb.KnowledgeDistillation(temperature=4.0, alpha=0.9))],
        training=pb.TrainingSpec(epochs=10, batch_size=128, optimizer=pb.OPTIMIZER_SGD, learning_rate=0.05,
                                 lr_schedule=pb.LR_SCHEDULE_COSINE),
        device=pb.DEVICE_CPU,
    )


def data_free_student(case: TeacherCase) -> str:
    """The README's advice, not a per-teacher choice: a BatchNorm teacher's generated images need a BatchNorm student."""
    return "cnn_bn_16" if case.batchnorm else case.student


def data_free_spec(teacher_id: str, case: TeacherCase, dataset: pb.DatasetSpec, shape: tuple[int, ...], iterations: int) -> pb.JobSpec:
    """examples/mnist-datafree.yaml's recipe: auto, 6 fresh + 20 replayed student steps; the dataset scores only."""
    c, h, w = shape
    return pb.JobSpec(
        teacher_model_id=teacher_id,
        display_name=f"generalisation data-free {case.name}",
        student=pb.StudentSpec(architecture=data_free_student(case)),
        dataset=dataset,
        data_free=pb.DataFreeSpec(input_shape=pb.InputShape(channels=c, height=h, width=w), iterations=iterations,
                                  student_steps=6, replay_steps=20),
        device=pb.DEVICE_CPU,
    )


def run_job(client: Client, spec: pb.JobSpec) -> tuple[str, float, float, str, float]:
    """(state, teacher top-1, student top-1, method, seconds); a failed job's message stands in for the method."""
    started = time.perf_counter()
    job = client.create_job(spec, request_id=f"{spec.display_name}-{time.time_ns()}")
    job = client.wait(job.id)
    seconds = time.perf_counter() - started
    state = pb.JobState.Name(job.state).removeprefix("JOB_STATE_")
    judged = job.error.code == 9  # FAILED_PRECONDITION: the student was judged unfit, and the report is there
    if job.state != pb.JOB_STATE_SUCCEEDED and not judged:
        return state, math.nan, math.nan, job.error.message, seconds
    if judged:  # GetReport serves succeeded jobs; a failed one's report is among its artifacts
        with tempfile.TemporaryDirectory() as tmp:
            report = json_format.Parse(client.download(job.id, "report.json", Path(tmp)).read_text(), pb.Report())
    else:
        report = client.report(job.id)
    teacher, student = report.variants[0], report.variants[1]
    method = report.data_free.method if report.HasField("data_free") else "kd"
    if report.HasField("input_convention"):
        method += f" ({report.input_convention.chosen})"
    if job.state != pb.JOB_STATE_SUCCEEDED:
        method += f"; failed: {job.error.message}"
    return state, teacher.accuracy.top1, student.accuracy.top1, method, seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="*", help="only teachers whose name contains one of these")
    p.add_argument("--fashion-root", type=Path, default=DATASETS, help="torchvision root holding FashionMNIST/raw")
    p.add_argument("--data-free-iterations", type=int, default=700, help="the README's MNIST recipe: 700")
    p.add_argument("--skip-data-free", action="store_true")
    p.add_argument("--skip-kd", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS / "generalisation.md")
    args = p.parse_args()
    cases = [c for c in CASES if not args.only or any(o in c.name for o in args.only)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="distillery-generalisation-") as tmp:
        cifar_root = CACHE / "cifar10"
        roots = [DATASETS, args.fashion_root, cifar_root]
        server, address = spawn_server(Path(tmp) / "data", [f"--data-root={r.resolve()}" for r in roots if r.exists()])
        try:
            with Client(address, timeout=600) as client:
                for case in cases:
                    splits = load_splits(case.dataset, args.fashion_root)
                    if splits is None:
                        rows.append(f"| {case.name} | {case.dataset} | | | | | no data (FashionMNIST/raw under --fashion-root) | | |")
                        continue
                    path, own_top1 = train_teacher(case, splits)
                    model = client.upload(path, name=case.name, architecture=case.architecture if case.fmt == "state_dict" else "",
                                          model_format=FORMATS[case.fmt])
                    dataset = dataset_spec(case, cifar_root)
                    specs = [] if args.skip_kd else [("kd", kd_spec(model.id, case, dataset))]
                    if not args.skip_data_free:
                        specs.append(("data-free", data_free_spec(model.id, case, dataset, splits.train.input_shape, args.data_free_iterations)))
                    for kind, spec in specs:
                        state, teacher, student, method, seconds = run_job(client, spec)
                        rows.append(
                            f"| {case.name} | {case.dataset}, {case.architecture}{' + BN' if case.batchnorm else ''}, "
                            f"{case.fmt}, {case.convention.name} | {kind} -> {spec.student.architecture} | {teacher:.2f} | {student:.2f} | "
                            f"{student - teacher:+.2f} | {method} | {state} | {seconds:.0f} s |"
                        )
                        print(rows[-1], f"(teacher's own test top-1 {own_top1:.2f})", flush=True)
        finally:
            stop_server(server)
    kd = "skipped" if args.skip_kd else "examples/mnist-kd.yaml's recipe (10 epochs, no mean/std)"
    data_free = "skipped" if args.skip_data_free else (
        f"`auto`, {args.data_free_iterations} iterations, 6 fresh + 20 replayed student steps, batch from the teacher")
    table = "\n".join([
        "# Generalisation: teachers of other architectures, formats and conventions, with the product's defaults",
        "",
        f"KD: {kd}. Data-free: {data_free}. Top-1 on the test split, final models, from each job's report. "
        f"{torch.get_num_threads()} CPU threads.",
        "",
        "| teacher | data, architecture, format, input convention | job | teacher top-1 | student top-1 | gap | method (convention found) | state | time |",
        "|---|---|---|---:|---:|---:|---|---|---:|",
        *rows,
        "",
    ])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)
    print(table)


if __name__ == "__main__":
    main()
