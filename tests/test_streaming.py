"""Streamed splits: an image folder decoded by worker processes, WebDataset shards, and training on them."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import grpc
import pytest
import torch
import webdataset
from PIL import Image

from distill import data, losses, methods, models, trainer
from distill.streaming import ImageFiles, WebDatasetShards
from protos.distillery.v1 import distillery_pb2 as pb
from service.client import Client
from tests.conftest import TINY_DATA, rpc_error, tiny_spec

GENERATED = {"num_classes": 4, "image_size": 16, "channels": 3}


def _write_folder(root: Path, split: data.ImageData) -> None:
    for i, (image, label) in enumerate(zip(split.images, split.labels)):
        folder = root / split.classes[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i:05d}.png")  # lossless: pixels compare


def _write_shards(folder: Path, split: data.ImageData, shards: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"shard-{s}.tar" for s in range(shards)]
    per_shard = -(-len(split) // shards)
    for s, path in enumerate(paths):
        with webdataset.TarWriter(str(path)) as sink:
            for i in range(s * per_shard, min((s + 1) * per_shard, len(split))):
                png = io.BytesIO()
                Image.fromarray(split.images[i].permute(1, 2, 0).squeeze(-1).numpy()).save(png, format="PNG")
                sink.write({"__key__": f"{i:06d}", "png": png.getvalue(), "cls": str(int(split.labels[i]))})
    return paths


@pytest.fixture(scope="module")
def split() -> data.ImageData:
    return data.generate_shapes(90, seed=3, **GENERATED)


def test_a_streamed_folder_reads_the_pixels_the_in_memory_one_holds(tmp_path: Path, split: data.ImageData) -> None:
    _write_folder(tmp_path, split)
    files = ImageFiles.scan(tmp_path, image_size=16, channels=3)
    files.workers, files.in_process_up_to = 2, 0  # loader processes, however small the pass
    in_memory = data.in_memory(files)
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(0))
    batches = list(files.read(order.split(32)))
    assert [len(b.labels) for b in batches] == [32, 32, 26]
    for batch, index in zip(batches, order.split(32)):
        assert torch.equal(batch.index, index)
        assert torch.equal(batch.images, in_memory.images[index]) and torch.equal(batch.labels, in_memory.labels[index])
    assert torch.equal(files.take(torch.tensor([5, 1])), in_memory.images[[5, 1]])
    assert files.subset(10, seed=4).paths == [files.paths[i] for i in in_memory_order(len(files), 10, 4)]


def in_memory_order(n: int, limit: int, seed: int) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit].tolist()


def test_training_on_a_streamed_folder_gives_the_in_memory_student(tmp_path: Path, split: data.ImageData) -> None:
    _write_folder(tmp_path, split)
    files = ImageFiles.scan(tmp_path, image_size=16, channels=3)
    files.workers = 2
    in_memory = data.in_memory(files)
    normalization = data.Normalization.of(in_memory)
    teacher = models.build("lenet5", 4, 3).eval()
    config = trainer.TrainConfig(epochs=2, batch_size=32)
    students = []
    for train in (in_memory, files):
        torch.manual_seed(0)
        student = models.build("lenet5_half", 4, 3)
        loss = losses.WeightedLoss([(1.0, methods.KnowledgeDistillation())])
        result = trainer.distil(student, teacher, loss, train, normalization, config)
        assert result.visits is not None and (result.visits == 2).all()
        students.append(student.state_dict())
    for name, weights in students[0].items():
        assert torch.equal(weights, students[1][name]), name


def test_shards_scan_stream_and_read_in_order(tmp_path: Path, split: data.ImageData) -> None:
    shards = WebDatasetShards.scan(_write_shards(tmp_path, split, shards=3), image_size=16, channels=3)
    shards.workers, shards.in_process_up_to = 2, 0  # loader processes, however short the epoch
    assert len(shards) == 90 and torch.equal(shards.labels, split.labels) and shards.classes == ["0", "1", "2", "3"]
    in_order = list(shards.batches(32))
    assert torch.equal(torch.cat([b.images for b in in_order]), split.images)
    assert torch.equal(shards.take(torch.tensor([70, 2])), split.images[[70, 2]])

    def epoch(seed: int, number: int) -> list[data.Batch]:
        return list(shards.stream(batch_size=32, seed=seed, epoch=number))

    first = epoch(0, 0)
    assert [len(b.labels) for b in first] == [32, 32, 26]  # ceil(90 / 32) steps, however many workers read
    seen = torch.cat([b.images for b in first]).flatten(1)
    assert sorted(map(bytes, seen.numpy())) == sorted(map(bytes, split.images.flatten(1).numpy()))  # each sample once
    assert all(torch.equal(a.images, b.images) for a, b in zip(first, epoch(0, 0)))  # seeded
    assert not torch.equal(first[0].images, epoch(0, 1)[0].images)  # reshuffled each epoch
    assert torch.equal(list(shards.stream(32, 0, 0, skip_batches=2))[0].images, first[2].images)  # a resume skips
    capped = shards.subset(40, seed=0)
    assert sum(len(b.labels) for b in capped.stream(32, 0, 0)) == 40 and torch.equal(capped.labels, split.labels[:40])


def test_training_on_shards(tmp_path: Path, split: data.ImageData) -> None:
    shards = WebDatasetShards.scan(_write_shards(tmp_path, split, shards=2), image_size=16, channels=3)
    student = models.build("lenet5_half", 4, 3)
    loss = losses.WeightedLoss([(1.0, methods.KnowledgeDistillation())])
    teacher = models.build("lenet5", 4, 3).eval()
    result = trainer.distil(student, teacher, loss, shards, data.Normalization.of(shards), trainer.TrainConfig(epochs=2, batch_size=32))
    assert result.steps == 6 and result.visits is None and result.samples_seen == 180


class _WritesAFile:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (self.marker, "pickle ran"))  # type: ignore[return-value]


def _tar_with(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def test_a_shard_never_unpickles_and_bad_shards_are_clear_errors(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    hostile = _tar_with(
        tmp_path / "hostile.tar",
        {"a.png": png.getvalue(), "a.cls": b"1", "a.pyd": pickle.dumps(_WritesAFile(marker)), "a.pickle": b"x"},
    )
    shards = WebDatasetShards.scan([hostile], image_size=8, channels=3)
    assert [b.labels.tolist() for b in shards.batches(4)] == [[1]] and [len(b.labels) for b in shards.stream(4, 0, 0)] == [1]
    assert not marker.exists()

    cases = {
        "not a readable tar shard": tmp_path / "junk.tar",
        "lacks an image": _tar_with(tmp_path / "nolabel.tar", {"b.cls": b"0"}),
        "not an integer class label": _tar_with(tmp_path / "badlabel.tar", {"c.png": png.getvalue(), "c.cls": b"cat"}),
        "a class label is a short integer": _tar_with(tmp_path / "big.tar", {"d.png": png.getvalue(), "d.cls": b"1" * 100}),
    }
    (tmp_path / "junk.tar").write_bytes(b"\x00not a tar" * 3)
    for message, path in cases.items():
        with pytest.raises(ValueError, match=message):
            WebDatasetShards.scan([path], image_size=8, channels=3)


def test_a_kd_job_on_webdataset_shards_runs_end_to_end(client: Client, teacher_model: pb.Model, data_root: Path) -> None:
    train, val = data.generated_splits(**TINY_DATA)
    train_shards = _write_shards(data_root / "shards" / "train", train, shards=2)
    val_shards = _write_shards(data_root / "shards" / "val", val, shards=1)
    spec = tiny_spec(teacher_model.id)
    spec.dataset.webdataset.CopyFrom(
        pb.WebDatasetShards(
            train_shards=[str(p.relative_to(data_root)) for p in train_shards],
            val_shards=[str(val_shards[0])],
            image_size=28,
            channels=1,
            classes=list(train.classes),
        )
    )
    spec.dataset.loader_workers = 2

    refused = pb.JobSpec()
    refused.CopyFrom(spec)
    refused.distributed.processes_per_node = 1
    err = rpc_error(client.create_job, refused)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "WebDataset shards train in one process" in err.details()
    refused.ClearField("distributed")
    refused.dataset.webdataset.val_shards[:] = ["/etc/passwd"]
    err = rpc_error(client.create_job, refused)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "val_shards[0]" in err.details()

    job = client.wait(client.create_job(spec).id)
    assert job.state == pb.JOB_STATE_SUCCEEDED, job.error.message
    report = client.report(job.id)
    teacher, student = report.variants[:2]
    assert teacher.accuracy.samples == student.accuracy.samples == TINY_DATA["val_size"]
    assert teacher.accuracy.top1 > 90 and student.accuracy.top1 > 80
    assert report.training.train_samples == TINY_DATA["train_size"]


def test_a_folder_is_decoded_into_memory_when_it_fits_and_streamed_when_not(
    tmp_path: Path, split: data.ImageData, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.specs import DatasetPlan

    for name in ("train", "val"):
        _write_folder(tmp_path / name, split)
    plan = DatasetPlan(kind="image_folder", train_dir=tmp_path / "train", val_dir=tmp_path / "val", image_size=16,
                       max_train_samples=50, loader_workers=1)
    loaded = plan.load()
    assert isinstance(loaded.train, data.ImageData) and len(loaded.train) == 50  # capped before decoding
    streamed = DatasetPlan(**{**plan.__dict__, "loading": "streamed"}).load()
    assert isinstance(streamed.train, ImageFiles) and streamed.train.workers == 1
    assert streamed.train.paths == ImageFiles.scan(tmp_path / "train", 16, 3).subset(50, plan.seed).paths
    monkeypatch.setattr(data, "IN_MEMORY_BYTES", 1000)  # too big to hold now
    assert isinstance(plan.load().train, ImageFiles)
    assert isinstance(DatasetPlan(**{**plan.__dict__, "loading": "in_memory"}).load().train, data.ImageData)
