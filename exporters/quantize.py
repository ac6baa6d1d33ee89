"""Reduced-precision variants of an exported FP32 ONNX file, made with onnxruntime's tools.

- static: QDQ format, weights int8 per output channel, activations uint8
  with ranges calibrated (min/max) on real inputs: validation images, or a
  data-free job's generator samples. The form onnxruntime's CPU kernels run
  as integer convolutions, and the one most edge runtimes accept.
- dynamic: weights int8, activation ranges computed per call; no
  calibration data, but convolutions gain little from it.
- fp16: weights and activations in half precision, float32 at the input and
  output so callers feed the same arrays. For GPU targets: most CPUs run it
  slower than FP32, and the report says so.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.transformers.float16 import convert_float_to_float16

from exporters.onnx_export import INPUT_NAME, check

log = logging.getLogger(__name__)

STATIC, DYNAMIC, FP16 = "int8 static", "int8 dynamic", "fp16"


class _Calibration(CalibrationDataReader):
    def __init__(self, batches: Iterable[np.ndarray]) -> None:
        self._batches: Iterator[np.ndarray] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)}


def reduce_precision(
    fp32: Path, out: Path, kind: str, calibration: Iterable[np.ndarray] = (), only_ops: tuple[str, ...] = ()
) -> Path:
    """Write the ``kind`` (STATIC, DYNAMIC or FP16) version of ``fp32`` to ``out``; the file passes ``check``.

    ``only_ops``: quantize only these op types (INT8; default: every type the quantizer knows).
    """
    if kind == FP16:
        model = convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True)
        _sort_topologically(model.graph)  # the converter appends its input casts last; the checker wants order
        onnx.save(model, str(out))
        check(out)
        return out
    with tempfile.TemporaryDirectory() as tmp:
        # Shape inference and graph fusions first, as onnxruntime advises: quantizing
        # an unfused Conv+BatchNorm would put a quantize step between them.
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        if kind == STATIC:
            quantize_static(
                str(prepared),
                str(out),
                _Calibration(calibration),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                op_types_to_quantize=list(only_ops) or None,
            )
        elif kind == DYNAMIC:
            quantize_dynamic(str(prepared), str(out), weight_type=QuantType.QInt8, op_types_to_quantize=list(only_ops) or None)
        else:
            raise ValueError(f"unknown INT8 kind {kind!r}")
    check(out)
    log.info("%s: %s -> %s (%d -> %d bytes)", kind, fp32.name, out.name, fp32.stat().st_size, out.stat().st_size)
    return out


def _sort_topologically(graph: onnx.GraphProto) -> None:
    """Reorder ``graph.node`` so every node comes after the producers of its inputs."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        waiting = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                waiting.append(node)
        if len(waiting) == len(pending):
            raise ValueError("the graph has a cycle or an input nothing produces")
        pending = waiting
    del graph.node[:]
    graph.node.extend(ordered)
