"""The GPU path in one run, one table: run by bench/gpu_check.sh (see there).

Four checks, each on CUDA (on CPU with ``--dry-run``, at toy sizes, to check
the plumbing):

1. demo: the README's demo job through a real server (LeNet-5 teacher trained
   here, KD into LeNet-5-half, 10 epochs on the built-in shapes), device CUDA.
2. kd-224: KD at 224 px with the ``standard`` preset from a streamed image
   folder (generated shapes written as JPEG), ResNet-18 teacher into
   MobileNetV3-small, one epoch, in this process: the loader's images/s alone,
   the training step's images/s, the peak GPU memory and the peak resident
   memory of this process and its loader processes.
3. data-free: a short ``bn_prior`` job through the server (a BatchNorm CNN
   teacher trained here, 200 iterations, the test split scoring only).
4. distributed: the demo job with ``distributed {processes_per_node: 1}``:
   the torchrun path on one GPU.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distill import data, losses, models, trainer  # noqa: E402
from distill.losses import MethodConfig  # noqa: E402
from distill.streaming import ImageFiles  # noqa: E402
from protos.distillery.v1 import distillery_pb2 as pb  # noqa: E402
from service.client import Client  # noqa: E402
from service.demo import GENERATED, STUDENT, TEACHER  # noqa: E402
from service.server import spawn_server, stop_server  # noqa: E402


@dataclass
class Sizes:
    demo_epochs: int
    images_224: int
    batch_224: int
    data_free_iterations: int


FULL = Sizes(demo_epochs=10, images_224=8192, batch_224=128, data_free_iterations=200)
DRY = Sizes(demo_epochs=1, images_224=96, batch_224=32, data_free_iterations=6)


def train_teacher(architecture: str, path: Path, device: str, epochs: int) -> None:
    train, val = data.generated_splits(**GENERATED)
    torch.manual_seed(0)
    model = models.build(architecture, GENERATED["num_classes"], GENERATED["channels"])
    trainer.train_from_labels(model, data.Splits(train, val), trainer.TrainConfig(epochs=epochs, batch_size=64, device=device))
    torch.save(model.cpu().state_dict(), path)


def server_job(client: Client, spec: pb.JobSpec) -> tuple[str, float]:
    started = time.perf_counter()
    job = client.wait(client.create_job(spec, request_id=f"{spec.display_name}-{time.time_ns()}").id)
    seconds = time.perf_counter() - started
    if job.state != pb.JOB_STATE_SUCCEEDED:
        return f"{pb.JobState.Name(job.state)}: {job.error.message}", seconds
    report = client.report(job.id)
    student, t = report.variants[1], report.training
    return (f"SUCCEEDED on {t.device}; teacher {report.variants[0].accuracy.top1:.1f}%, student "
            f"{student.accuracy.top1:.1f}%; {t.steps} steps in {t.wall_seconds:.1f} s"), seconds


def demo_spec(teacher_id: str, device: int, epochs: int, name: str) -> pb.JobSpec:
    return pb.JobSpec(
        teacher_model_id=teacher_id,
        display_name=name,
        student=pb.StudentSpec(architecture=STUDENT),
        dataset=pb.DatasetSpec(generated=pb.GeneratedDataset(**GENERATED)),
        losses=[pb.LossTerm(kd=pb.KnowledgeDistillation(temperature=4.0, alpha=0.9))],
        training=pb.TrainingSpec(epochs=epochs, batch_size=64),
        benchmark=pb.BenchmarkSpec(batch_sizes=[1, 64], min_seconds=0.2),
        device=device,
    )


def write_folder(root: Path, count: int, size: int = 224) -> Path:
    """Generated shapes, drawn at 64 px and upscaled to ``size``, as JPEG files in class folders."""
    for start in range(0, count, 256):
        chunk = data.generate_shapes(min(256, count - start), image_size=64, channels=3, seed=start)
        for i, (image, label) in enumerate(zip(chunk.images, chunk.labels)):
            folder = root / chunk.classes[label].replace(" ", "_")
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.permute(1, 2, 0).numpy()).resize((size, size)).save(folder / f"{start + i:06d}.jpg", quality=90)
    return root


def peak_rss_gib() -> float:
    """This process's peak resident memory plus its finished children's (the loader processes)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + children) / 2**20  # KiB -> GiB


def kd_224(folder: Path, device: str, sizes: Sizes) -> tuple[str, float]:
    files = ImageFiles.scan(folder, 224, 3)
    batches = torch.randperm(len(files)).split(sizes.batch_224)
    started = time.perf_counter()
    loaded = sum(len(b.labels) for b in files.read(batches, pin_memory=device.startswith("cuda")))
    loader_rate = loaded / (time.perf_counter() - started)

    teacher = models.build("resnet18", len(files.classes), 3).to(device).eval()
    student = models.build("mobilenet_v3_small", len(files.classes), 3)
    loss = losses.build_loss([MethodConfig("kd")], teacher, student, (3, 224, 224))
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    config = trainer.TrainConfig(epochs=1, batch_size=sizes.batch_224, augmentation="standard", device=device)
    result = trainer.distil(student, teacher, loss, files, data.Normalization.of(files), config)
    step_rate = int(result.visits.sum()) / result.wall_seconds
    gpu = f"; peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if device.startswith("cuda") else ""
    return (f"{len(files)} images, {files.workers} loader processes: loader {loader_rate:.0f} images/s alone, "
            f"training {step_rate:.0f} images/s{gpu}; peak RSS {peak_rss_gib():.2f} GiB"), result.wall_seconds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="on CPU, at toy sizes: check the plumbing")
    args = p.parse_args()
    cuda = torch.cuda.is_available() and not args.dry_run
    if not cuda and not args.dry_run:
        print("no CUDA device: run with --dry-run to check the plumbing on CPU", file=sys.stderr)
        return 2
    device, sizes = ("cuda", FULL) if cuda else ("cpu", DRY)
    device_enum = pb.DEVICE_CUDA if cuda else pb.DEVICE_CPU
    name = torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores)"
    rows: list[tuple[str, str, float]] = []
    with tempfile.TemporaryDirectory(prefix="distillery-gpu-check-") as tmp:
        tmp_dir = Path(tmp)
        server, address = spawn_server(tmp_dir / "data")
        try:
            with Client(address, timeout=600) as client:
                train_teacher(TEACHER, tmp_dir / "lenet5.pt", device, epochs=max(1, sizes.demo_epochs - 2))
                lenet = client.upload(tmp_dir / "lenet5.pt", name="lenet5", architecture=TEACHER)
                rows.append(("demo", *server_job(client, demo_spec(lenet.id, device_enum, sizes.demo_epochs, "gpu-check demo"))))

                started = time.perf_counter()
                result, _ = kd_224(write_folder(tmp_dir / "shapes-224", sizes.images_224), device, sizes)
                rows.append(("kd-224, standard augmentation", result, time.perf_counter() - started))

                train_teacher("cnn_bn_32", tmp_dir / "cnn_bn.pt", device, epochs=max(1, sizes.demo_epochs - 2))
                bn_teacher = client.upload(tmp_dir / "cnn_bn.pt", name="cnn_bn_32", architecture="cnn_bn_32")
                spec = demo_spec(bn_teacher.id, device_enum, sizes.demo_epochs, "gpu-check data-free")
                spec.student.architecture = "cnn_bn_16"
                spec.ClearField("losses")
                spec.ClearField("training")
                c, s = GENERATED["channels"], GENERATED["image_size"]
                spec.data_free.CopyFrom(pb.DataFreeSpec(input_shape=pb.InputShape(channels=c, height=s, width=s),
                                                        iterations=sizes.data_free_iterations))
                rows.append(("data-free (auto)", *server_job(client, spec)))

                spec = demo_spec(lenet.id, device_enum, max(1, sizes.demo_epochs // 3), "gpu-check distributed")
                spec.distributed.processes_per_node = 1
                rows.append(("distributed, 1 process", *server_job(client, spec)))
        finally:
            stop_server(server)

    print(f"\n## GPU check: {name}, torch {torch.__version__}{' (dry run: CPU, toy sizes)' if args.dry_run else ''}\n")
    print("| check | result | time |")
    print("|---|---|---:|")
    for check, result, seconds in rows:
        print(f"| {check} | {result} | {seconds:.0f} s |")
    # A data-free student judged near chance is the product's guard at work (the whole path ran); at the dry run's
    # few iterations it is the expected verdict.
    ran = all(r[1].startswith(("SUCCEEDED", f"{sizes.images_224} images")) or "near chance" in r[1] for r in rows)
    return 0 if ran else 1


if __name__ == "__main__":
    sys.exit(main())
