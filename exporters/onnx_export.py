"""Export a PyTorch classifier to ONNX and prove the file computes the same thing.

The torch.export-based exporter runs first; the TorchScript-based one is the
fallback for models it cannot trace. Either way the file passes the ONNX
checker and is compared with PyTorch in onnxruntime on real inputs.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from exporters.runtimes.onnxruntime import predict, session

log = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
DYNAMO = "torch.export (dynamo)"
TORCHSCRIPT = "torchscript"


class ExportError(RuntimeError):
    """Neither exporter produced a valid ONNX file."""


class ParityError(ValueError):
    """onnxruntime and PyTorch disagree by more than the tolerance."""


@dataclass(frozen=True)
class ExportResult:
    path: Path
    exporter: str  # which exporter produced the file
    opset: int


# A file whose logits are allclose to PyTorch's may still flip the top-1 of an input on a near-tie: up to
# one input in a thousand is accepted as such.
TOP1_MISMATCH_ALLOWED = 0.001


@dataclass(frozen=True)
class ParityResult:
    """One runtime's logits against PyTorch's on the same inputs, judged as ``numpy.allclose`` does."""

    output: str
    samples: int
    max_abs_diff: float
    max_rel_diff: float  # |diff| / |PyTorch's logit|, the largest
    top1_mismatch: float  # fraction of samples whose argmax differs
    tolerance: float  # absolute
    relative_tolerance: float
    allclose: bool  # |runtime - PyTorch| <= tolerance + relative_tolerance * |PyTorch| everywhere

    @property
    def within(self) -> bool:
        return self.allclose and self.top1_mismatch <= TOP1_MISMATCH_ALLOWED

    def describe(self) -> str:
        return (
            f"differs from PyTorch by up to {self.max_abs_diff:.3g} (relative {self.max_rel_diff:.3g}) on "
            f"{self.samples} inputs, {'within' if self.allclose else 'over'} the tolerance "
            f"{self.tolerance:.3g} + {self.relative_tolerance:.3g} x |logit|; top-1 differs on "
            f"{100 * self.top1_mismatch:.2f}% of them"
        )


def compare(actual: np.ndarray, expected: np.ndarray, tolerance: float, relative_tolerance: float, output: str = OUTPUT_NAME) -> ParityResult:
    """Logits of a runtime (``actual``) against PyTorch's (``expected``), N x classes each."""
    diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    magnitude = np.abs(expected.astype(np.float64))
    return ParityResult(
        output=output,
        samples=len(expected),
        max_abs_diff=float(diff.max(initial=0.0)),
        max_rel_diff=float((diff / np.maximum(magnitude, 1e-6)).max(initial=0.0)),
        top1_mismatch=float((actual.argmax(1) != expected.argmax(1)).mean()) if len(expected) else 0.0,
        tolerance=tolerance,
        relative_tolerance=relative_tolerance,
        allclose=bool(np.all(diff <= tolerance + relative_tolerance * magnitude)),
    )


def export_onnx(
    model: nn.Module,
    example: torch.Tensor,
    path: Path,
    opset: int = 18,
    dynamic_batch: bool = True,
    exporters: tuple[str, ...] = (DYNAMO, TORCHSCRIPT),
) -> ExportResult:
    """Write ``model`` to ``path``, trying ``exporters`` in order; the file must pass ``check``.

    With ``dynamic_batch`` the batch axis is symbolic; without, it is fixed at 1.
    """
    model = model.eval().cpu()
    example = example.cpu()[:1]
    if dynamic_batch:  # batch 1 would be specialised into the graph
        example = example.repeat(2, *([1] * (example.ndim - 1)))
    errors = []
    for exporter in exporters:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _export_with(exporter, model, example, path, opset, dynamic_batch)
            check(path)
            return ExportResult(path, exporter, opset)
        except Exception as e:  # each exporter fails in its own ways; try the next
            log.warning("ONNX export with %s failed: %s", exporter, e)
            errors.append(f"{exporter}: {e}")
            path.unlink(missing_ok=True)
    raise ExportError("ONNX export failed: " + " | ".join(errors))


def check(path: Path) -> None:
    """onnx.checker with full_check, then strict shape inference: what every shipped file must pass."""
    onnx.checker.check_model(str(path), full_check=True)
    onnx.shape_inference.infer_shapes(onnx.load(str(path)), check_type=True, strict_mode=True)


def _export_with(exporter: str, model: nn.Module, example: torch.Tensor, path: Path, opset: int, dynamic_batch: bool) -> None:
    if exporter == DYNAMO:
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1 << 16)},) if dynamic_batch else None,
            opset_version=opset,
            verbose=False,
        )
        program.save(str(path))
    else:
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None,
            opset_version=opset,
        )


def write_metadata(path: Path, props: dict[str, str]) -> None:
    """Set ``metadata_props`` (what onnxruntime shows as ``custom_metadata_map``); the graph is untouched."""
    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


def validate(
    sess: ort.InferenceSession,
    model: nn.Module,
    inputs: torch.Tensor,
    tolerance: float = 1e-4,
    relative_tolerance: float = 1e-4,
    batch_size: int = 256,
) -> ParityResult:
    """Compare onnxruntime with PyTorch on ``inputs``; raise ParityError when they are not allclose, or top-1 differs."""
    outputs = [o.name for o in sess.get_outputs()]
    if outputs != [OUTPUT_NAME]:
        raise ParityError(f"expected one output {OUTPUT_NAME!r}, the file has {outputs}")
    model = model.eval().cpu()
    expected, actual = [], []
    with torch.inference_mode():
        for chunk in inputs.cpu().split(batch_size):
            expected.append(model(chunk).float().numpy())
            actual.append(predict(sess, [chunk.numpy()]))
            if actual[-1].shape != expected[-1].shape:
                raise ParityError(f"output {OUTPUT_NAME!r} has shape {actual[-1].shape}, PyTorch gives {expected[-1].shape}")
    result = compare(np.concatenate(actual), np.concatenate(expected), tolerance, relative_tolerance)
    log.info("ONNX parity: %s", result.describe())
    if not result.within:
        raise ParityError(f"output {OUTPUT_NAME!r}: onnxruntime {result.describe()}")
    return result


def validate_file(
    path: Path, model: nn.Module, inputs: torch.Tensor, tolerance: float, relative_tolerance: float, num_threads: int = 0
) -> ParityResult:
    """``validate`` of the file at ``path``, in an onnxruntime session of its own (the reference runtime)."""
    return validate(session(path, num_threads), model, inputs, tolerance, relative_tolerance)
