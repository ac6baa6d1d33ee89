"""Streaming at 224 px: the worker's memory and the loader's speed against training's, side by side.

    python bench/streaming.py                      # 20,000 train + 2,000 val images, 224 px
    python bench/streaming.py --train 4000 --compare 1000   # quicker

Builds (once, cached in bench/.cache/cifar10-224-20000) a 224 px JPEG ImageFolder
from the shared CIFAR-10 (each image upscaled, quality 90) and WebDataset
shards of the same files, and a 224 px teacher: the generalisation bench's
CIFAR-10 CNN (TorchScript) behind an antialiased downscale to 32 px. Then,
through a real server (``distillery serve`` on a free port):

1. the loader alone: images/s of ``ImageFiles.read`` and ``WebDatasetShards.stream``
   with the job's workers;
2. a KD job on ``--compare`` images twice, in memory and streamed (training
   images/s side by side: what streaming costs);
3. a KD job on all ``--train`` images from the folder, streamed, and one from
   the shards.

While each job runs, the proportional set size (PSS: shared pages split
between the processes that share them, so forked loader workers are not
counted twice) of every process under the server is summed every 0.2 s; the
peak is reported. Writes bench/results/streaming-224.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from multiprocessing import Pool
from pathlib import Path

import torch
import webdataset
from PIL import Image
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.quality import CACHE, RESULTS, _cifar10  # noqa: E402
from distill.streaming import ImageFiles, WebDatasetShards  # noqa: E402
from protos.distillery.v1 import distillery_pb2 as pb  # noqa: E402
from service.client import Client  # noqa: E402
from service.server import spawn_server, stop_server  # noqa: E402

SOURCE = CACHE / "cifar10"  # the shared tarball, extracted by bench/quality.py
TEACHER_32 = CACHE / "generalisation" / "cifar10-cnn-plain-imagenet.ts.pt"  # bench/generalisation.py trains it
SHARD_SAMPLES = 2000


class Downscaled(nn.Module):
    """A 32 px teacher that takes 224 px images: what a user's high-resolution teacher looks like to the service."""

    def __init__(self, teacher: nn.Module, size: int) -> None:
        super().__init__()
        self.teacher, self.size = teacher, size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        small = nn.functional.interpolate(x, size=[self.size, self.size], mode="bilinear", antialias=True, align_corners=False)
        return self.teacher(small)


def _upscale(job: tuple[str, str, int]) -> None:
    source, target, size = job
    with Image.open(source) as image:
        image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR).save(target, quality=90)


def build_folder(root: Path, split: str, count: int, size: int) -> Path:
    """``count`` images of the split (the first of each class in turn), upscaled to ``size``; cached."""
    out = root / split
    if (out / ".complete").exists() and (out / ".complete").read_text() == str(count):
        return out
    classes = sorted(p.name for p in (SOURCE / split).iterdir() if p.is_dir())
    per_class = {c: sorted((SOURCE / split / c).iterdir()) for c in classes}
    chosen = [per_class[c][i] for i in range(max(map(len, per_class.values()))) for c in classes if i < len(per_class[c])][:count]
    jobs = []
    for path in chosen:
        (out / path.parent.name).mkdir(parents=True, exist_ok=True)
        jobs.append((str(path), str(out / path.parent.name / path.name), size))
    with Pool(os.cpu_count()) as pool:
        pool.map(_upscale, jobs, chunksize=64)
    (out / ".complete").write_text(str(count))
    return out


def build_shards(folder: Path, out: Path) -> list[Path]:
    """The folder's files (bytes as they are) in shards of SHARD_SAMPLES, in a seeded shuffled order."""
    files = ImageFiles.scan(folder, 224, 3)
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(0)).tolist()
    paths = [out / f"{folder.name}-{i:03d}.tar" for i in range(-(-len(order) // SHARD_SAMPLES))]
    if (out / f".{folder.name}-complete").exists():
        return paths
    out.mkdir(parents=True, exist_ok=True)
    for number, path in enumerate(paths):
        with webdataset.TarWriter(str(path)) as sink:
            for i in order[number * SHARD_SAMPLES : (number + 1) * SHARD_SAMPLES]:
                sink.write({"__key__": f"{i:07d}", "jpg": Path(files.paths[i]).read_bytes(), "cls": str(int(files.labels[i]))})
    (out / f".{folder.name}-complete").write_text("")
    return paths


def teacher_224(size: int) -> Path:
    path = CACHE / "streaming" / f"teacher-{size}.ts.pt"
    if not path.exists():
        if not TEACHER_32.exists():
            raise SystemExit(f"{TEACHER_32} is missing: run bench/generalisation.py --only cifar10 --skip-data-free first")
        path.parent.mkdir(parents=True, exist_ok=True)
        teacher = torch.jit.load(str(TEACHER_32)).eval()
        torch.jit.save(torch.jit.script(Downscaled(teacher, 32).eval()), str(path))
    return path


def loader_rate(split: ImageFiles | WebDatasetShards, workers: int, samples: int, batch_size: int) -> float:
    """Images/s of reading and decoding alone, with ``workers`` processes."""
    split.workers = workers
    sample = split.subset(samples, 0)
    started = time.perf_counter()
    if isinstance(sample, ImageFiles):
        read = sum(len(b.labels) for b in sample.read(torch.randperm(len(sample)).split(batch_size)))
    else:
        read = sum(len(b.labels) for b in sample.stream(batch_size, 0, 0))
    return read / (time.perf_counter() - started)


class PeakMemory:
    """Per job stage, the peak of the summed PSS of the job's processes, sampled every 0.2 s: every process under
    ``pid`` (the server) but those that were there before (an earlier job's worker may still be exiting)."""

    def __init__(self, pid: int, stage: Callable[[], str]) -> None:
        self.pid, self.stage = pid, stage
        self.before = set(_descendants(pid))
        self.peaks: dict[str, tuple[int, int]] = {}  # stage -> (bytes, processes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            stage = self.stage()
            descendants = [p for p in _descendants(self.pid) if p not in self.before]
            total = sum(_pss(p) for p in descendants)
            if total > self.peaks.get(stage, (0, 0))[0]:
                self.peaks[stage] = (total, len(descendants))


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry))
    found, frontier = [], [pid]
    while frontier:
        kids = children.get(frontier.pop(), [])
        found += kids
        frontier += kids
    return found


def _pss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def kd_spec(teacher_id: str, dataset: pb.DatasetSpec, name: str, student: str, batch_size: int) -> pb.JobSpec:
    return pb.JobSpec(
        teacher_model_id=teacher_id,
        display_name=name,
        student=pb.StudentSpec(architecture=student),
        dataset=dataset,
        losses=[pb.LossTerm(kd=pb.KnowledgeDistillation(temperature=4.0, alpha=0.9))],
        training=pb.TrainingSpec(epochs=1, batch_size=batch_size),
        export=pb.ExportSpec(int8=False, fp16=False),
        benchmark=pb.BenchmarkSpec(batch_sizes=[1], warmup_runs=2, min_runs=5, min_seconds=0.1),
        device=pb.DEVICE_CPU,
    )


def run(client: Client, server_pid: int, spec: pb.JobSpec) -> dict[str, float | str]:
    started = time.perf_counter()
    created: dict[str, str] = {}  # the job's id, once it exists
    with PeakMemory(server_pid, lambda: client.get_job(created["id"]).stage if created else "queued") as memory:
        created["id"] = client.create_job(spec, request_id=f"{spec.display_name}-{time.time_ns()}").id
        job = client.wait(created["id"])
        seconds = time.perf_counter() - started
    if job.state != pb.JOB_STATE_SUCCEEDED:
        raise SystemExit(f"{spec.display_name}: {pb.JobState.Name(job.state)}: {job.error.message}")
    report = client.report(job.id)
    t = report.training
    return {
        "job": spec.display_name,
        "images": t.train_samples,
        "peak_gib": max(memory.peaks.values())[0] / 2**30,
        "train_peak_gib": memory.peaks.get("distil", (0, 0))[0] / 2**30,
        "processes": memory.peaks.get("distil", (0, 0))[1],
        "stages": {k: round(v[0] / 2**30, 2) for k, v in memory.peaks.items()},
        "train_rate": t.samples_seen / t.wall_seconds,
        "teacher": report.variants[0].accuracy.top1,
        "student": report.variants[1].accuracy.top1,
        "seconds": seconds,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", type=int, default=20_000)
    p.add_argument("--val", type=int, default=2_000)
    p.add_argument("--compare", type=int, default=2_000, help="images of the in-memory vs streamed comparison")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--student", default="shufflenet_v2_x0_5")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS / "streaming-224.md")
    args = p.parse_args()

    _cifar10()  # extracts the shared tarball into bench/.cache/cifar10 when needed
    root = CACHE / f"cifar10-{args.size}-{args.train}"
    train_dir, val_dir = build_folder(root, "train", args.train, args.size), build_folder(root, "test", args.val, args.size)
    train_shards, val_shards = build_shards(train_dir, root / "shards"), build_shards(val_dir, root / "shards")
    loader = {
        "image folder": loader_rate(ImageFiles.scan(train_dir, args.size, 3), args.workers, 1024, args.batch_size),
        "WebDataset shards": loader_rate(WebDatasetShards.scan(train_shards, args.size, 3), args.workers, 1024, args.batch_size),
    }

    def folder(loading: int, limit: int) -> pb.DatasetSpec:
        return pb.DatasetSpec(
            image_folder=pb.ImageFolderDataset(train_dir=str(train_dir), val_dir=str(val_dir), image_size=args.size, channels=3, loading=loading),
            max_train_samples=limit, loader_workers=args.workers,
        )

    shards = pb.DatasetSpec(
        webdataset=pb.WebDatasetShards(train_shards=list(map(str, train_shards)), val_shards=list(map(str, val_shards)),
                                       image_size=args.size, channels=3),
        loader_workers=args.workers,
    )
    jobs = [
        (f"in memory, {args.compare} images", folder(pb.DATA_LOADING_IN_MEMORY, args.compare)),
        (f"streamed folder, {args.compare} images", folder(pb.DATA_LOADING_STREAMED, args.compare)),
        (f"streamed folder, {args.train} images", folder(pb.DATA_LOADING_AUTO, 0)),
        (f"WebDataset shards, {args.train} images", shards),
    ]
    rows = []
    with tempfile.TemporaryDirectory(prefix="distillery-streaming-") as tmp:
        server, address = spawn_server(Path(tmp) / "data", [f"--data-root={root.resolve()}"])
        try:
            with Client(address, timeout=600) as client:
                teacher = client.upload(teacher_224(args.size), name=f"cifar10 cnn at {args.size} px")
                for name, dataset in jobs:
                    rows.append(run(client, server.pid, kd_spec(teacher.id, dataset, name, args.student, args.batch_size)))
                    print(rows[-1], flush=True)
        finally:
            stop_server(server)

    lines = [
        f"# Streaming at {args.size} px ({os.cpu_count()} CPU cores, {args.workers} loader workers, batch {args.batch_size}, "
        f"student {args.student}, 1 epoch)",
        "",
        "`" + " ".join(["python", *sys.argv]) + "`",
        "",
        "| job | train images | peak memory while training, worker + loaders (PSS) | processes | peak, whole job (stage) "
        "| training images/s | teacher top-1 | job time |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['job']} | {r['images']} | {r['train_peak_gib']:.2f} GiB | {r['processes']} | {r['peak_gib']:.2f} GiB "
        f"({max(r['stages'], key=r['stages'].get)}) | {r['train_rate']:.0f} | {r['teacher']:.2f} | {r['seconds']:.0f} s |"
        for r in rows
    ]
    lines += ["", "Loader alone (1,024 images, read and decoded, nothing trained):", ""]
    lines += [f"- {name}: {rate:.0f} images/s" for name, rate in loader.items()]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
