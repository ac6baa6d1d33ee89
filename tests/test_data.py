"""Datasets load from local files into uint8 tensors; the generated set is learnable but not linear."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from distill import data, evaluate, models, trainer


def test_generated_is_deterministic_per_seed_and_covers_all_classes() -> None:
    a = data.generate_shapes(500, num_classes=6, seed=7)
    b = data.generate_shapes(500, num_classes=6, seed=7)
    c = data.generate_shapes(500, num_classes=6, seed=8)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    assert a.images.dtype == torch.uint8 and a.images.shape == (500, 1, 28, 28)
    assert set(a.labels.tolist()) == set(range(6))
    rgb = data.generate_shapes(10, channels=3, image_size=32)
    assert rgb.images.shape == (10, 3, 32, 32)


def _fit(model: torch.nn.Module, splits: data.Splits, epochs: int, optimizer: str) -> float:
    trainer.train_from_labels(model, splits, trainer.TrainConfig(epochs=epochs, batch_size=32, optimizer=optimizer))
    return evaluate.accuracy(trainer.predict_logits(model, splits.val, splits.normalization), splits.val.labels).top1


def test_generated_data_needs_a_cnn() -> None:
    splits = data.Splits(*data.generated_splits(train_size=2000, val_size=500, seed=1))
    cnn = _fit(models.build("lenet5", 10, 1), splits, epochs=4, optimizer="sgd")
    linear = _fit(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10)), splits, epochs=10, optimizer="adam")
    assert cnn > 90, cnn
    assert linear < 60, linear


def _write_idx(path: Path, array: np.ndarray) -> None:
    # The MNIST idx format: magic (0, 0, type 0x08 = uint8, ndim), then big-endian dims.
    with open(path, "wb") as f:
        f.write(struct.pack(">BBBB", 0, 0, 8, array.ndim))
        f.write(struct.pack(f">{array.ndim}I", *array.shape))
        f.write(array.astype(np.uint8).tobytes())


def test_torchvision_mnist_from_local_raw_files(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 30), ("t10k", 10)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    train, test = data.load_torchvision("MNIST", tmp_path)
    assert train.images.shape == (30, 1, 28, 28) and test.images.shape == (10, 1, 28, 28)
    assert train.labels.tolist()[:3] == [0, 1, 2] and len(train.classes) == 10


def test_torchvision_missing_dataset_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="MNIST not found"):
        data.load_torchvision("MNIST", tmp_path)


def test_image_folder_decodes_and_resizes(tmp_path: Path) -> None:
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(3):
                pixels = np.random.default_rng(i).integers(0, 256, (40, 36, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / cls / f"{i}.png")
    train = data.load_image_folder(tmp_path / "train", image_size=32, channels=3)
    val = data.load_image_folder(tmp_path / "val", image_size=32, channels=3, classes=train.classes)
    assert train.images.shape == (6, 3, 32, 32) and train.classes == ["cat", "dog"]
    assert val.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_subset_is_seeded_and_normalization_is_per_channel() -> None:
    d = data.generate_shapes(100, channels=3, image_size=16)
    assert torch.equal(d.subset(10, seed=1).images, d.subset(10, seed=1).images)
    assert len(d.subset(0, seed=1)) == 100
    norm = data.Normalization.of(d)
    x = norm.apply(d.images)
    assert x.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert (x.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-3
