"""A timm mobile student from scratch and from a pretrained start, same teacher, same KD, side by side.

    python bench/students.py                               # the README's rows
    python bench/students.py --epochs 5 --kd-samples 2000 --pretrain-epochs 3   # quicker

Data: the shared CIFAR-10 (JPEG, 32 px). Teacher: the augmentation bench's
ResNet-20 (bench/augmentation.py trains and caches it). The KD job trains on
``--kd-samples`` training images (the first of a seeded shuffle, as
``max_train_samples`` picks them). The pretrained start comes from another
task on other images: the student is trained with labels (cross-entropy,
``standard`` augmentation) on the training images the KD job does not use,
of classes 0-4 only (a 5-way task, ``--pretrain-epochs``), and saved as
safetensors (cached in bench/.cache/students). The KD job then loads it the
way the service does (``loading.start_from``: every tensor but the 5-class
head, which is re-initialised for 10). Both students get the same seed, KD
(T=4, alpha=0.9), SGD 0.05, cosine, ``--epochs``, and the augmentation the
service would pick for that many epochs; top-1 is the final student's on the
10,000 test images. Latency: teacher and student exported to ONNX and timed
in onnxruntime in the same run (batch 1, interleaved). Writes
bench/results/students-cifar10.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import safetensors.torch
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.augmentation import cached_teacher  # noqa: E402
from bench.quality import CACHE, RESULTS, _cifar10, top1  # noqa: E402
from distill import augment, benchmark, data, loading, losses, models, trainer  # noqa: E402
from distill.losses import MethodConfig  # noqa: E402
from exporters import onnx_export  # noqa: E402
from exporters.runtimes import onnxruntime as ort_runtime  # noqa: E402

PRETRAIN_CLASSES = 5


def split_for_pretraining(train: data.ImageData, kd_samples: int) -> tuple[data.ImageData, data.ImageData]:
    """(the KD job's images, the other images of classes 0-4): disjoint, by the seeded shuffle ``subset`` uses."""
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    kd, rest = order[:kd_samples], order[kd_samples:]
    other = data.ImageData(train.images[rest], train.labels[rest], train.classes)
    other = other.without_classes(tuple(range(PRETRAIN_CLASSES, len(train.classes))))
    return data.ImageData(train.images[kd], train.labels[kd], train.classes), other


def pretrained_weights(architecture: str, images: data.ImageData, normalization: data.Normalization, epochs: int) -> tuple[Path, float]:
    path = CACHE / "students" / f"{architecture}-cifar10-classes0-4-{len(images)}-{epochs}ep.safetensors"
    if path.exists():
        return path, 0.0
    torch.manual_seed(1)
    model = models.build(architecture, PRETRAIN_CLASSES, 3, 32)
    started = time.perf_counter()
    config = trainer.TrainConfig(epochs=epochs, batch_size=128, learning_rate=0.05, augmentation="standard")
    trainer.train_from_labels(model, data.Splits(images, images, normalization), config)
    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(model.state_dict(), str(path))
    return path, time.perf_counter() - started


def distil(architecture: str, start: Path | None, teacher: torch.nn.Module, kd: data.ImageData, splits: data.Splits,
           epochs: int) -> tuple[torch.nn.Module, float, float, str]:
    """(student, top-1 on the test images, seconds, what was loaded)."""
    torch.manual_seed(0)
    student = models.build(architecture, 10, 3, 32)
    loaded = "random init"
    if start is not None:
        result = loading.start_from(student, safetensors.torch.load_file(str(start)))
        loaded = f"{result.tensors_loaded} tensors loaded, re-initialised: {', '.join(result.reinitialised)}"
    loss = losses.build_loss([MethodConfig("kd", params={"temperature": 4.0, "alpha": 0.9})], teacher, student, (3, 32, 32))
    preset = augment.preset_for(epochs)
    views = augment.DEFAULT_TEACHER_VIEWS if preset == "standard" else 0
    config = trainer.TrainConfig(epochs=epochs, batch_size=128, learning_rate=0.05, augmentation=preset, teacher_views=views)
    started = time.perf_counter()
    trainer.distil(student, teacher, loss, kd, splits.normalization, config)
    return student.eval(), top1(student, splits.val, splits.normalization), time.perf_counter() - started, loaded


def latency_ms(models_by_name: dict[str, torch.nn.Module]) -> dict[str, float]:
    """Median batch-1 latency of each model's ONNX file in onnxruntime, timed interleaved in one run."""
    runners = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, model in models_by_name.items():
            path = Path(folder) / f"{name}.onnx"
            onnx_export.export_onnx(model.cpu().eval(), torch.zeros(2, 3, 32, 32), path)
            session = ort_runtime.session(path)
            runners[name] = benchmark.Runner(open=lambda s=session: ort_runtime.runner(s), prepare=lambda b: b.numpy())
        plan = benchmark.TimingPlan(batch_sizes=(1,), warmup_runs=20, min_runs=200, min_seconds=3.0)
        stats = benchmark.measure_runners(runners, lambda n: torch.rand(n, 3, 32, 32), plan)
    return {name: s[0].p50_ms for name, s in stats.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--student", default="mobilenetv4_conv_small")
    p.add_argument("--kd-samples", type=int, default=10_000)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--pretrain-epochs", type=int, default=15)
    p.add_argument("--teacher-epochs", type=int, default=10, help="the augmentation bench's teacher")
    p.add_argument("--out", type=Path, default=RESULTS / "students-cifar10.md")
    args = p.parse_args()

    train, test = _cifar10()
    splits = data.Splits(train, test)  # the normalisation: the training data's statistics
    teacher, _ = cached_teacher(splits, args.teacher_epochs)
    teacher_top1 = top1(teacher, test, splits.normalization)
    kd, other = split_for_pretraining(train, args.kd_samples)
    start, pretrain_seconds = pretrained_weights(args.student, other, splits.normalization, args.pretrain_epochs)
    print(f"teacher {teacher_top1:.2f}%; pretrained on {len(other)} images in {pretrain_seconds:.0f} s", flush=True)

    rows = []
    for label, init in (("from scratch", None), ("pretrained start", start)):
        student, accuracy, seconds, loaded = distil(args.student, init, teacher, kd, splits, args.epochs)
        rows.append((label, accuracy, seconds, loaded))
        print(rows[-1], flush=True)
    latency = latency_ms({"teacher": teacher, "student": student})
    parameters = {"teacher": benchmark.count_parameters(teacher), "student": benchmark.count_parameters(student)}

    preset = augment.preset_for(args.epochs)
    lines = [
        f"# A timm student, from scratch and from a pretrained start: KD resnet20_cifar -> {args.student}, CIFAR-10",
        "",
        "`" + " ".join(["python", *sys.argv]) + "`",
        "",
        f"Teacher: the augmentation bench's ResNet-20, **{teacher_top1:.2f}%** on the {len(test)} test images, "
        f"{parameters['teacher']:,} parameters. Student: timm `{args.student}` ({parameters['student']:,} parameters at "
        f"10 classes, 32 px). KD on {len(kd)} training images for {args.epochs} epochs (T=4, alpha=0.9, batch 128, "
        f"SGD 0.05, cosine, augmentation `{preset}` as the service picks it). Pretrained start: supervised on the "
        f"{len(other)} other training images of classes 0-4 (a 5-way task the KD job never sees; "
        f"{args.pretrain_epochs} epochs), loaded from safetensors with its head re-initialised. "
        f"Top-1 is the final student's on the test images. {os.cpu_count()} CPU cores.",
        "",
        "| student start | top-1 | gap to teacher | KD time | what was loaded |",
        "|---|---:|---:|---:|---|",
    ]
    lines += [f"| {label} | {acc:.2f} | {acc - teacher_top1:+.2f} | {sec:.0f} s | {loaded} |" for label, acc, sec, loaded in rows]
    lines += [
        "",
        f"Latency in onnxruntime, batch 1, p50 (the two timed interleaved): teacher {latency['teacher']:.3f} ms, "
        f"student {latency['student']:.3f} ms ({latency['teacher'] / latency['student']:.2f}x). "
        "The start does not change the architecture, so both students time the same.",
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
