"""ONNX export: dynamic batch, checker, parity with PyTorch, and errors that name the numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from distill import models
from distill.benchmark import count_macs
from exporters import onnx_export, onnx_teacher
from exporters.runtimes import onnxruntime as ort_runtime


@pytest.mark.parametrize("architecture", ["lenet5_half", "resnet8_cifar", "cnn_bn_8"])
def test_export_runs_any_batch_within_tolerance(tmp_path: Path, architecture: str) -> None:
    model = models.build(architecture, 10, 3).eval()
    result = onnx_export.export_onnx(model, torch.randn(2, 3, 32, 32), tmp_path / "m.onnx")
    assert result.path.exists() and result.opset == 18
    session = ort_runtime.session(result.path)
    for batch in (1, 7):
        x = torch.randn(batch, 3, 32, 32)
        out = ort_runtime.runner(session)(x.numpy())
        assert out.shape == (batch, 10)
    parity = onnx_export.validate(session, model, torch.randn(50, 3, 32, 32), tolerance=1e-4)
    assert parity.max_abs_diff <= 1e-4 and parity.samples == 50 and parity.top1_mismatch == 0


def test_parity_failure_names_output_and_numbers(tmp_path: Path) -> None:
    model = models.build("lenet5_half", 10, 1).eval()
    result = onnx_export.export_onnx(model, torch.randn(2, 1, 28, 28), tmp_path / "m.onnx")
    other = models.build("lenet5_half", 10, 1).eval()  # different weights
    with pytest.raises(onnx_export.ParityError, match=r"output 'logits'.*differs from PyTorch by up to"):
        onnx_export.validate(ort_runtime.session(result.path), other, torch.randn(20, 1, 28, 28))


def test_parity_is_relative_to_the_logits_magnitude(tmp_path: Path) -> None:
    """Issue 21: logits in the thousands differ by ~1e-4 in float32 arithmetic; that is a match, not a failure."""
    model = models.build("lenet5_half", 10, 1).eval()
    with torch.no_grad():
        model.classifier[-1].weight.mul_(5000)
        model.classifier[-1].bias.mul_(5000)
    inputs = torch.randn(64, 1, 28, 28)
    with torch.no_grad():
        assert model(inputs).abs().max() > 100
    result = onnx_export.export_onnx(model, inputs[:2], tmp_path / "m.onnx")
    parity = onnx_export.validate(ort_runtime.session(result.path), model, inputs)
    assert parity.within and parity.top1_mismatch == 0


def test_compare_judges_as_numpy_allclose_does_with_top1() -> None:
    expected = np.array([[1000.0, -1000.0, 3.0], [0.001, 0.0, -0.001]])
    close = expected * (1 + 5e-5)  # 0.05 off at 1000: within 1e-4 + 1e-4 x 1000
    assert onnx_export.compare(close, expected, 1e-4, 1e-4).within
    assert not onnx_export.compare(close, expected, 1e-4, 0.0).allclose  # absolute alone: over
    far = expected.copy()
    far[1] = [0.0, 0.001, -0.001]  # small logits, off by 1e-3: over, and the top-1 moved
    parity = onnx_export.compare(far, expected, 1e-4, 1e-4)
    assert not parity.allclose and parity.top1_mismatch == 0.5 and not parity.within
    assert "top-1 differs on 50.00%" in parity.describe()


def test_onnx_matches_torch_numerically(tmp_path: Path) -> None:
    model = models.build("lenet5", 4, 1).eval()
    path = onnx_export.export_onnx(model, torch.randn(2, 1, 28, 28), tmp_path / "m.onnx").path
    x = torch.randn(16, 1, 28, 28)
    with torch.inference_mode():
        expected = model(x).numpy()
    np.testing.assert_allclose(ort_runtime.runner(ort_runtime.session(path))(x.numpy()), expected, atol=1e-4)


def test_onnx_teacher_is_detected_and_runs_any_batch(tmp_path: Path) -> None:
    model = models.build("lenet5", 4, 1).eval()
    dynamic = onnx_export.export_onnx(model, torch.randn(2, 1, 28, 28), tmp_path / "dynamic.onnx").path
    static = tmp_path / "static.onnx"
    torch.onnx.export(model, (torch.randn(3, 1, 28, 28),), str(static), dynamo=False, input_names=["x"])
    assert onnx_teacher.check_onnx_file(dynamic) and onnx_teacher.check_onnx_file(static)
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x07not a model")
    assert not onnx_teacher.check_onnx_file(tmp_path / "junk.onnx")
    x = torch.randn(7, 1, 28, 28)
    with torch.inference_mode():
        expected = model(x)
    for path in (dynamic, static):
        teacher = onnx_teacher.load_onnx_teacher(path, (1, 28, 28))
        assert teacher.num_classes == 4 and teacher.format == "onnx"
        assert torch.allclose(teacher.model(x), expected, atol=1e-4)


class TinyViT(nn.Module):
    """Patches, one transformer encoder layer, a linear head: attention for the MAC counters."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(1, 32, 4, stride=4)
        self.encoder = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.patch(x).flatten(2).transpose(1, 2)).mean(dim=1))


@pytest.mark.parametrize("architecture", ["lenet5", "resnet8_cifar", "tiny_vit"])
def test_macs_of_a_model_and_of_its_onnx_file_agree(tmp_path: Path, architecture: str) -> None:
    model = TinyViT().eval() if architecture == "tiny_vit" else models.build(architecture, 10, 1).eval()
    shape = (1, 16, 16) if architecture == "tiny_vit" else (1, 28, 28)
    dynamic = onnx_export.export_onnx(model, torch.randn(2, *shape), tmp_path / "dynamic.onnx").path
    static = tmp_path / "static.onnx"  # exported for batch 3: the count is still per input
    torch.onnx.export(model, (torch.randn(3, *shape),), str(static), dynamo=False, input_names=["x"])

    macs = count_macs(model, shape)
    assert [onnx_teacher.mac_count(onnx_teacher.OnnxTeacher(p), shape) for p in (dynamic, static)] == [macs, macs]
    if architecture == "lenet5":  # by hand: conv 6x28x28x25, conv 16x10x10x150, fc 400x120, 120x84, 84x10
        assert macs == 117_600 + 240_000 + 48_000 + 10_080 + 840
    if architecture == "tiny_vit":  # attention is in: the patch embedding and head alone are 8,512
        assert macs > 100_000
