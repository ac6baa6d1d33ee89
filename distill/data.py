"""Datasets as preloaded tensors, and the choice between them and streaming.

A split that fits is decoded once into a uint8 ``N x C x H x W`` tensor;
batches are cut from it and normalised on the training device. No per-sample
Python runs in the training step (a DataLoader of PIL transforms costs more
than the model for 28-32 px nets). One that does not fit streams
(``distill.streaming``): same batches, decoded by worker processes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision

from distill.streaming import Batch, ImageFiles, WebDatasetShards


@dataclass
class ImageData:
    """A labelled image split, uint8 in memory."""

    images: torch.Tensor  # uint8, N x C x H x W
    labels: torch.Tensor  # int64, N
    classes: list[str]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 NCHW, got {self.images.dtype} {tuple(self.images.shape)}")
        if len(self.images) != len(self.labels):
            raise ValueError("images and labels differ in length")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    def without_classes(self, classes: tuple[int, ...]) -> ImageData:
        """The samples of every other class (class indices and names unchanged)."""
        if not classes:
            return self
        keep = ~torch.isin(self.labels, torch.tensor(classes))
        if not keep.any():
            raise ValueError("excluding those classes leaves no training data")
        return self.select(keep.nonzero().flatten())

    def subset(self, limit: int, seed: int) -> ImageData:
        """The first ``limit`` samples of a seeded shuffle (all when limit <= 0)."""
        if limit <= 0 or limit >= len(self):
            return self
        return self.select(torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:limit])

    def select(self, rows: torch.Tensor) -> ImageData:
        """These samples, in this order."""
        return ImageData(self.images[rows], self.labels[rows], self.classes)

    def take(self, index: torch.Tensor) -> torch.Tensor:
        return self.images[index]

    def read(self, batch_indices: Iterable[torch.Tensor], pin_memory: bool = False) -> Iterator[Batch]:
        del pin_memory  # slices of a tensor in memory: nothing to overlap
        for index in batch_indices:
            yield Batch(self.images[index], self.labels[index], index)

    def batches(self, batch_size: int, pin_memory: bool = False) -> Iterator[Batch]:
        """Every sample once, in stored order."""
        return self.read(torch.arange(len(self)).split(batch_size), pin_memory)


# A split: in memory, or streamed from files or shards. All three give labels, classes, input_shape, subset,
# take (a few images, decoded here) and batches (every sample once, in order); ImageData and ImageFiles also
# ``read`` by index, shards ``stream`` an epoch.
Split = ImageData | ImageFiles | WebDatasetShards

# Per-channel statistics are estimated on this many images of a streamed split (a seeded sample).
STATISTICS_SAMPLES = 2048
# Float32 inputs an inference batch may take: 512 images up to 32 px, 111 at 224 px. A batch of 512 at 224 px
# held several GB of activations in the evaluate and export stages (onnxruntime's arena keeps them).
INFERENCE_BATCH_BYTES = 64 << 20


def inference_batch_size(input_shape: tuple[int, ...]) -> int:
    """Images an inference batch (evaluation, teacher logits, runtimes) takes: 512 at most, 8 at least."""
    return max(8, min(512, INFERENCE_BATCH_BYTES // (4 * math.prod(input_shape))))


@dataclass
class Normalization:
    """Per-channel mean and std applied to images scaled to [0, 1]."""

    mean: list[float]
    std: list[float]

    @staticmethod
    def of(data: Split) -> Normalization:
        """The split's per-channel statistics: of every image in memory, of a seeded sample of a streamed split.

        Accumulated batch by batch (sums in float64), so a float copy of the split is never made.
        """
        sample = data if isinstance(data, ImageData) else data.subset(STATISTICS_SAMPLES, 0)
        total = torch.zeros(3, sample.input_shape[0], dtype=torch.float64)  # count, sum, sum of squares
        for batch in sample.batches(inference_batch_size(sample.input_shape)):
            x = batch.images.to(torch.float64).div_(255).transpose(0, 1).flatten(1)  # channels x pixels
            total += torch.stack([torch.full((x.shape[0],), float(x.shape[1]), dtype=torch.float64), x.sum(1), x.square().sum(1)])
        count, first, second = total
        mean = first / count
        variance = (second - count * mean.square()) / (count - 1).clamp_min(1)  # unbiased, as Tensor.std
        return Normalization(mean=mean.tolist(), std=variance.clamp_min(0).sqrt().clamp_min(1e-3).tolist())

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 batch (on any device) -> normalised float32 batch."""
        mean = torch.tensor(self.mean, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, -1, 1, 1)
        return (images.float().div_(255) - mean) / std


def resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear, antialiased like Pillow's BILINEAR, so a deployed model sees what it was evaluated on."""
    if tuple(images.shape[-2:]) == size:
        return images
    return torch.nn.functional.interpolate(images.float(), size=size, mode="bilinear", antialias=True, align_corners=False)


@dataclass
class Splits:
    """Train and validation splits and the normalisation the teacher expects.

    Without an explicit normalisation, the train split's per-channel statistics
    are used (what a teacher trained on this data most likely saw).
    """

    train: Split
    val: Split
    normalization: Normalization | None = None

    def __post_init__(self) -> None:
        if self.train.input_shape != self.val.input_shape:
            raise ValueError(f"train and val shapes differ: {self.train.input_shape} vs {self.val.input_shape}")
        if self.train.classes != self.val.classes:
            raise ValueError("train and val splits name different classes")
        if self.normalization is None:
            self.normalization = Normalization.of(self.train)


# ------------------------------------------------------- torchvision datasets

TORCHVISION_DATASETS = ("MNIST", "FashionMNIST", "CIFAR10", "CIFAR100", "SVHN")


def load_torchvision(name: str, root: Path, download: bool = False) -> tuple[ImageData, ImageData]:
    """Train and test split of a torchvision dataset read from ``root``."""
    if name not in TORCHVISION_DATASETS:
        raise ValueError(f"unknown torchvision dataset {name!r}; known: {', '.join(TORCHVISION_DATASETS)}")
    cls = getattr(torchvision.datasets, name)
    splits = []
    for train in (True, False):
        try:
            if name == "SVHN":
                ds = cls(str(root), split="train" if train else "test", download=download)
                images, labels, classes = torch.from_numpy(ds.data), torch.from_numpy(ds.labels), [str(i) for i in range(10)]
            else:
                ds = cls(str(root), train=train, download=download)
                images, classes = ds.data, list(ds.classes)
                labels = torch.as_tensor(ds.targets)
                if not isinstance(images, torch.Tensor):  # CIFAR: N x H x W x C numpy
                    images = torch.from_numpy(images).permute(0, 3, 1, 2)
                elif images.ndim == 3:  # MNIST family: N x H x W
                    images = images.unsqueeze(1)
        except RuntimeError as e:  # torchvision's "Dataset not found"
            raise FileNotFoundError(f"{name} not found under {root} (set download to fetch it): {e}") from e
        splits.append(ImageData(images.contiguous(), labels.long(), classes))
    return splits[0], splits[1]


# ---------------------------------------------------------------- ImageFolder

# Splits whose decoded tensor would be larger than this stream by default (``streaming: auto``).
IN_MEMORY_BYTES = 2 << 30


def load_image_folder(directory: Path, image_size: int = 32, channels: int = 3, classes: list[str] | None = None) -> ImageData:
    """Decode ``directory/<class>/<image>`` into one tensor, resized to a square, by worker processes.

    ``classes`` pins the class order (the val split must use the train split's).
    The tensor is allocated once and filled batch by batch: the peak is the
    tensor, not the tensor plus a copy of every image.
    """
    return in_memory(ImageFiles.scan(directory, image_size, channels, classes))


def in_memory(files: ImageFiles) -> ImageData:
    """A listed split decoded into one tensor."""
    images = torch.empty(len(files), *files.input_shape, dtype=torch.uint8)
    for batch in files.batches(256):
        assert batch.index is not None
        images[batch.index] = batch.images
    return ImageData(images, files.labels, files.classes)


def decoded_bytes(split: ImageFiles | WebDatasetShards) -> int:
    c, h, w = split.input_shape
    return len(split) * c * h * w


# ------------------------------------------------------------ generated shapes

SHAPES = (
    "horizontal bar",
    "vertical bar",
    "diagonal bar",
    "anti-diagonal bar",
    "plus",
    "cross",
    "square outline",
    "ring",
    "disc",
    "filled square",
)


def generate_shapes(n: int, num_classes: int = 10, image_size: int = 28, channels: int = 1, seed: int = 0) -> ImageData:
    """Shapes of random position, size, stroke, contrast and colour, plus noise.

    Deterministic per seed. The class is the shape, never its place or
    brightness, so a linear model on pixels scores far below a small CNN.
    """
    if not 2 <= num_classes <= len(SHAPES):
        raise ValueError(f"num_classes must be 2..{len(SHAPES)}")
    g = torch.Generator().manual_seed(seed)

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(*shape, generator=g)

    labels = torch.randint(0, num_classes, (n,), generator=g)
    s = image_size
    cx, cy = uniform(0.3 * s, 0.7 * s, n, 1, 1), uniform(0.3 * s, 0.7 * s, n, 1, 1)
    half = uniform(0.2 * s, 0.3 * s, n, 1, 1)  # half-extent of the shape
    stroke = uniform(0.05 * s, 0.09 * s, n, 1, 1)  # half-width of lines
    grid = torch.arange(s, dtype=torch.float32)
    dx, dy = grid.view(1, 1, s) - cx, grid.view(1, s, 1) - cy
    u, v = (dx + dy) / math.sqrt(2), (dx - dy) / math.sqrt(2)
    radius, box = torch.sqrt(dx**2 + dy**2), torch.maximum(dx.abs(), dy.abs())
    hbar = (dy.abs() < stroke) & (dx.abs() < half)
    vbar = (dx.abs() < stroke) & (dy.abs() < half)
    diag = (v.abs() < stroke) & (u.abs() < half)
    anti = (u.abs() < stroke) & (v.abs() < half)
    masks = torch.stack(
        [
            hbar,
            vbar,
            diag,
            anti,
            hbar | vbar,
            diag | anti,
            (box < half) & (box > half - 2 * stroke),
            (radius < half) & (radius > half - 2 * stroke),
            radius < 0.8 * half,
            box < 0.7 * half,
        ][:num_classes],
        dim=1,
    )  # n x classes x s x s
    mask = masks[torch.arange(n), labels].unsqueeze(1).float()  # n x 1 x s x s

    background = uniform(0.0, 0.3, n, channels, 1, 1)
    foreground = background + uniform(0.4, 0.7, n, 1, 1, 1) * (
        uniform(0.6, 1.0, n, channels, 1, 1) if channels > 1 else 1.0
    )
    images = background + (foreground - background) * mask
    images = images + 0.08 * torch.randn(n, channels, s, s, generator=g)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    return ImageData(images, labels, list(SHAPES[:num_classes]))


def generated_splits(
    num_classes: int = 10, image_size: int = 28, channels: int = 1, train_size: int = 6000, val_size: int = 1000, seed: int = 0
) -> tuple[ImageData, ImageData]:
    """Train and val splits drawn from disjoint seeds."""
    train = generate_shapes(train_size, num_classes, image_size, channels, seed=2 * seed)
    val = generate_shapes(val_size, num_classes, image_size, channels, seed=2 * seed + 1)
    return train, val
