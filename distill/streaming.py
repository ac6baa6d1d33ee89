"""Datasets read from disk batch by batch: an ImageFolder of any size, and WebDataset tar shards.

``data.ImageData`` decodes a split once into one tensor; that stops at what
fits in RAM (about 60,000 images at 224 px on 24 GB). These two decode each
batch in DataLoader worker processes, with prefetch and pinned memory, and
hand uint8 batches to the training loop, which normalises them on its device
as it does the in-memory ones. Of the dataset, only the lists of file names
and labels are held (bench/streaming.py measures the rest).

Both give the loop the same thing: ``read`` (ImageFiles, by index: a seeded
order, resumable mid-epoch, shardable across ranks) or ``stream`` (shards,
in an order seeded per epoch), each yielding ``Batch`` es; ``batches``
(every sample once, in stored order) and ``take`` (a few, decoded here) serve
evaluation and small samples.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import webdataset
from PIL import Image
from torch.utils.data import DataLoader, Dataset, default_collate

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# Members a WebDataset sample may hold its image in; nothing else is decoded (no pickle, no .pyd).
SHARD_IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
SHARD_LABEL_KEY = "cls"


class Batch(NamedTuple):
    images: torch.Tensor  # uint8, N x C x H x W, on the CPU (pinned when read by workers for a GPU)
    labels: torch.Tensor  # int64, N
    index: torch.Tensor | None  # the samples' indices in their split; None for a stream (shards have no random access)


def decode_image(source: str | Path | bytes, image_size: int, channels: int) -> torch.Tensor:
    """One image file -> uint8 C x H x W at image_size x image_size.

    Pillow's bilinear resize without its reducing gap: the pixels a deployed
    model is fed by ``exporters.predict``, so evaluation sees what deployment does.
    """
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
        image = image.convert("L" if channels == 1 else "RGB")
        if image.size != (image_size, image_size):
            image = image.resize((image_size, image_size), Image.Resampling.BILINEAR, reducing_gap=None)
        pixels = np.asarray(image, dtype=np.uint8).reshape(image_size, image_size, channels)
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1)


def default_workers() -> int:
    """Decoding processes: one per core the job may use, at most 8 (each holds some 0.3 GB)."""
    return max(1, min(8, len(os.sched_getaffinity(0))))


# Loader processes are spawned, not forked. A forked one keeps the pages of its parent's heap as they were at the
# fork; as the training process churns through batches those pages become the child's own, and each loader ended up
# holding a copy of the trainer's heap (measured: the worker + loaders' PSS grew from 2.7 to 3.9 GB between an epoch
# of 2,000 and of 20,000 images at 224 px). A spawned one holds only what decoding needs.
LOADER_CONTEXT = "spawn"
# Passes of at most this many images are decoded in the calling process: starting a spawned loader takes about 2 s
# (importing torch), what decoding some 700 images at 224 px takes.
IN_PROCESS_UP_TO = 1024


def _collate(samples: list[tuple[torch.Tensor, int, int]]) -> Batch:
    # default_collate stacks straight into shared memory in a loader process; a plain torch.stack there is copied
    # into shared memory again to cross to the trainer, and the loader's heap kept the freed copies (each loader
    # grew by some 370 MB over an epoch at 224 px).
    images, labels, index = default_collate(samples)
    return Batch(images, labels, index if samples[0][2] >= 0 else None)


def _rebatched(batches: Iterable[Batch], batch_size: int, total: int) -> Iterator[Batch]:
    """The first ``total`` samples of ``batches``, cut into batches of ``batch_size`` (the last may be short)."""
    images: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    held = 0
    for batch in batches:
        images.append(batch.images)
        labels.append(batch.labels)
        held += len(batch.labels)
        while held >= batch_size or (held and held >= total):
            size = min(batch_size, total)
            joined_images, joined_labels = torch.cat(images), torch.cat(labels)
            yield Batch(joined_images[:size], joined_labels[:size], None)
            images, labels = [joined_images[size:]], [joined_labels[size:]]
            held, total = held - size, total - size
            if total <= 0:
                return
    if held and total > 0:
        yield Batch(torch.cat(images)[:total], torch.cat(labels)[:total], None)


def _pinned(batch: Batch) -> Batch:
    return Batch(batch.images.pin_memory(), batch.labels.pin_memory(), batch.index)


# ---------------------------------------------------------------- ImageFolder


class ImageFiles(Dataset):
    """``directory/<class>/<image>``, listed once and decoded batch by batch."""

    def __init__(self, paths: Sequence[str], labels: torch.Tensor, classes: list[str], image_size: int, channels: int) -> None:
        if len(paths) != len(labels):
            raise ValueError("paths and labels differ in length")
        self.paths, self.labels, self.classes = list(paths), labels, classes
        self.image_size, self.channels = image_size, channels
        self.workers = default_workers()
        self.in_process_up_to = IN_PROCESS_UP_TO

    @staticmethod
    def scan(directory: Path, image_size: int, channels: int, classes: list[str] | None = None) -> ImageFiles:
        """List ``directory``'s images (decoding none of them); ``classes`` pins the class order (val uses train's)."""
        if not directory.is_dir():
            raise FileNotFoundError(f"image folder {directory} does not exist")
        found = sorted(p.name for p in directory.iterdir() if p.is_dir())
        classes = classes or found
        unknown = set(found) - set(classes)
        if unknown:
            raise ValueError(f"{directory} has classes the training split lacks: {sorted(unknown)}")
        paths, labels = [], []
        for index, name in enumerate(classes):
            class_dir = directory / name
            if not class_dir.is_dir():
                continue
            for path in sorted(class_dir.iterdir()):
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    paths.append(str(path))
                    labels.append(index)
        if not paths:
            raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {directory}")
        return ImageFiles(paths, torch.tensor(labels), classes, image_size, channels)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        return decode_image(self.paths[index], self.image_size, self.channels), int(self.labels[index]), index

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.channels, self.image_size, self.image_size

    def select(self, rows: torch.Tensor) -> ImageFiles:
        """These samples, in this order."""
        kept = ImageFiles([self.paths[i] for i in rows.tolist()], self.labels[rows], self.classes, self.image_size, self.channels)
        kept.workers, kept.in_process_up_to = self.workers, self.in_process_up_to
        return kept

    def without_classes(self, classes: tuple[int, ...]) -> ImageFiles:
        if not classes:
            return self
        keep = ~torch.isin(self.labels, torch.tensor(classes))
        if not keep.any():
            raise ValueError("excluding those classes leaves no training data")
        return self.select(keep.nonzero().flatten())

    def subset(self, limit: int, seed: int) -> ImageFiles:
        """The first ``limit`` samples of a seeded shuffle (all when limit <= 0), as ImageData.subset picks them."""
        if limit <= 0 or limit >= len(self):
            return self
        return self.select(torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:limit])

    def take(self, index: torch.Tensor) -> torch.Tensor:
        """These samples' images, decoded in this process (for a few: samples, calibration)."""
        return torch.stack([decode_image(self.paths[i], self.image_size, self.channels) for i in index.tolist()])

    def read(self, batch_indices: Iterable[torch.Tensor], pin_memory: bool = False) -> Iterator[Batch]:
        """One batch per index tensor, decoded ahead in worker processes that live as long as the pass.

        Processes that outlived their pass held some 300 MB each for the rest of the job (the splits of one
        job make several passes: statistics, convention, epochs, evaluation); a pass pays their start instead.
        """
        plan = [b.tolist() for b in batch_indices]
        if sum(map(len, plan)) <= self.in_process_up_to:
            return (Batch(self.take(torch.tensor(b)), self.labels[b], torch.tensor(b)) for b in plan)
        loader = DataLoader(
            self,
            batch_sampler=plan,
            num_workers=min(self.workers, len(plan)),
            pin_memory=pin_memory,
            prefetch_factor=4,  # batches in flight per process
            multiprocessing_context=LOADER_CONTEXT,
            collate_fn=_collate,
        )
        return iter(loader)

    def batches(self, batch_size: int, pin_memory: bool = False) -> Iterator[Batch]:
        """Every sample once, in stored order."""
        return self.read(torch.arange(len(self)).split(batch_size), pin_memory)


# ------------------------------------------------------------------ WebDataset


def _scan_shard(path: Path) -> list[int]:
    """A shard's labels, one a sample, in order, read without decoding an image.

    The tar's headers are walked (image members are skipped by seeking); only
    the small ``.cls`` members are read. A sample needs an image and a label.
    """
    samples: dict[str, dict[str, bytes | None]] = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if not member.isfile() or "." not in Path(member.name).name:
                    continue
                key, extension = _split_key(member.name)
                sample = samples.setdefault(key, {})
                if extension == SHARD_LABEL_KEY:
                    if member.size > 32:
                        raise ValueError(f"{path}: {member.name} is {member.size} bytes; a class label is a short integer")
                    handle = tar.extractfile(member)
                    sample["cls"] = handle.read() if handle else b""
                elif extension in SHARD_IMAGE_KEYS:
                    sample["image"] = None
    except tarfile.TarError as e:
        raise ValueError(f"{path} is not a readable tar shard: {e}") from e
    labels = []
    for key, sample in samples.items():
        if "image" not in sample or "cls" not in sample:
            raise ValueError(
                f"{path}: sample {key!r} lacks an image ({', '.join(SHARD_IMAGE_KEYS)}) or a label (.cls)"
            )
        labels.append(_label(sample["cls"], f"{path}: {key}.cls"))
    return labels


def _split_key(name: str) -> tuple[str, str]:
    """WebDataset's convention: the key is the path up to the first dot of the file name, the rest the extension."""
    directory, _, file_name = name.rpartition("/")
    stem, _, extension = file_name.partition(".")
    return f"{directory}/{stem}" if directory else stem, extension  # case kept: webdataset matches it as written


def _label(raw: bytes | None, where: str) -> int:
    try:
        return int((raw or b"").decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise ValueError(f"{where} is not an integer class label") from None


class WebDatasetShards:
    """WebDataset tar shards (``key.jpg`` + ``key.cls`` per sample), read as a stream by the webdataset package.

    Shards are streams, not random access: training reads them in an order
    shuffled per epoch (the shards, then samples through a buffer), and
    evaluation reads them in stored order, which the labels (read once when the
    shards are scanned) follow.
    """

    def __init__(self, shards: list[Path], labels: torch.Tensor, classes: list[str], image_size: int, channels: int,
                 limit: int = 0) -> None:
        self.shards, self.labels, self.classes = shards, labels, classes
        self.image_size, self.channels = image_size, channels
        self.limit = limit or len(labels)  # the first ``limit`` samples in stored order
        self.labels = labels[: self.limit]
        self.workers = default_workers()
        self.in_process_up_to = IN_PROCESS_UP_TO

    @staticmethod
    def scan(shards: list[Path], image_size: int, channels: int, classes: list[str] | None = None) -> WebDatasetShards:
        if not shards:
            raise ValueError("no WebDataset shards given")
        labels: list[int] = []
        for shard in shards:
            if not shard.is_file():
                raise FileNotFoundError(f"WebDataset shard {shard} does not exist")
            labels += _scan_shard(shard)
        if not labels:
            raise ValueError(f"the shards ({', '.join(map(str, shards))}) hold no samples")
        label_tensor = torch.tensor(labels)
        if label_tensor.min() < 0:
            raise ValueError("WebDataset class labels must be 0 or more")
        if classes is None:
            classes = [str(c) for c in range(int(label_tensor.max()) + 1)]
        elif int(label_tensor.max()) >= len(classes):
            raise ValueError(f"a shard has label {int(label_tensor.max())}; the training split has {len(classes)} classes")
        return WebDatasetShards(shards, label_tensor, classes, image_size, channels)

    def __len__(self) -> int:
        return self.limit

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.channels, self.image_size, self.image_size

    def subset(self, limit: int, seed: int) -> WebDatasetShards:
        """The first ``limit`` samples in stored order (shards have no random access; write them shuffled)."""
        del seed
        if limit <= 0 or limit >= len(self):
            return self
        kept = WebDatasetShards(self.shards, self.labels, self.classes, self.image_size, self.channels, limit)
        kept.workers, kept.in_process_up_to = self.workers, self.in_process_up_to
        return kept

    def _pipeline(self, shuffle_seed: int | None) -> webdataset.WebDataset:
        urls = [str(p) for p in self.shards]
        shuffled = shuffle_seed is not None
        buffer = max(64, (256 << 20) // (self.channels * self.image_size**2))  # about 256 MB of decoded images a worker
        return (
            webdataset.WebDataset(
                urls,
                shardshuffle=len(urls) if shuffled else False,
                seed=shuffle_seed if shuffled else 0,
                nodesplitter=None,
                empty_check=False,
            )
            .shuffle(buffer if shuffled else 0, seed=shuffle_seed)
            .to_tuple(";".join(SHARD_IMAGE_KEYS), SHARD_LABEL_KEY)  # raw bytes: no decoder of webdataset's runs
            .map(self._decode)
        )

    def _decode(self, sample: tuple[bytes, bytes]) -> tuple[torch.Tensor, int, int]:
        image, label = sample
        return decode_image(image, self.image_size, self.channels), _label(label, "a .cls member"), -1

    def stream(self, batch_size: int, seed: int, epoch: int, skip_batches: int = 0, pin_memory: bool = False) -> Iterator[Batch]:
        """One epoch of ceil(len / batch_size) batches, in an order that depends on (seed, epoch) only.

        Each worker reads its own shards and ends on a partial batch, so the
        workers' batches are cut again here into ``batch_size`` ones: an epoch
        has the same steps however many workers read it. With ``len`` capped
        (``subset``), an epoch is the first ``len`` samples of the shuffled stream.
        """
        # More workers than shards would idle; a short epoch is read here (see IN_PROCESS_UP_TO).
        workers = min(self.workers, len(self.shards)) if len(self) > self.in_process_up_to else 0
        pipeline = self._pipeline(shuffle_seed=seed * 100_003 + epoch).batched(batch_size, collation_fn=_collate, partial=True)
        loader = DataLoader(pipeline, batch_size=None, num_workers=workers, prefetch_factor=4 if workers else None,
                            multiprocessing_context=LOADER_CONTEXT if workers else None)
        read = 0
        for step, batch in enumerate(_rebatched(loader, batch_size, len(self))):
            read += len(batch.labels)
            if step >= skip_batches:
                yield _pinned(batch) if pin_memory else batch
        if read < len(self):  # an epoch's steps are counted from the scan: a short one would shift every later epoch
            raise ValueError(f"the shards gave {read} samples, {len(self)} when scanned: were they changed?")

    def batches(self, batch_size: int, pin_memory: bool = False) -> Iterator[Batch]:
        """Every sample once, in stored order (one process: several would interleave shards)."""
        pipeline = self._pipeline(shuffle_seed=None).batched(batch_size, collation_fn=_collate, partial=True)
        for batch in _rebatched(pipeline, batch_size, len(self)):
            yield _pinned(batch) if pin_memory else batch

    def take(self, index: torch.Tensor) -> torch.Tensor:
        """These samples' images: a read from the start, in stored order, up to the last one asked for."""
        wanted = int(index.max()) + 1 if len(index) else 0
        if wanted > len(self):
            raise IndexError(f"sample {wanted - 1} of a split of {len(self)}")
        read, seen = [], 0
        for batch in self.batches(256):
            read.append(batch.images)
            seen += len(batch.images)
            if seen >= wanted:
                break
        return torch.cat(read)[index]
