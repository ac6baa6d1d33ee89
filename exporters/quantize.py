"""INT8 variants of an exported FP32 ONNX file, made with onnxruntime's quantization tools.

- static: QDQ format, weights int8 per output channel, activations uint8
  with ranges calibrated (min/max) on real inputs: validation images, or a
  data-free job's generator samples. The form onnxruntime's CPU kernels run
  as integer convolutions, and the one most edge runtimes accept.
- dynamic: weights int8, activation ranges computed per call; no
  calibration data, but convolutions gain little from it.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_dynamic,
    quantize_static,
)

from exporters.onnx_export import INPUT_NAME, check

log = logging.getLogger(__name__)

STATIC, DYNAMIC = "int8 static", "int8 dynamic"


class _Calibration(CalibrationDataReader):
    def __init__(self, batches: Iterable[np.ndarray]) -> None:
        self._batches: Iterator[np.ndarray] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)}


def quantize_int8(fp32: Path, out: Path, kind: str, calibration: Iterable[np.ndarray] = ()) -> Path:
    """Write the ``kind`` (STATIC or DYNAMIC) INT8 version of ``fp32`` to ``out``; the file passes ``check``."""
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
            )
        elif kind == DYNAMIC:
            quantize_dynamic(str(prepared), str(out), weight_type=QuantType.QInt8)
        else:
            raise ValueError(f"unknown INT8 kind {kind!r}")
    check(out)
    log.info("%s: %s -> %s (%d -> %d bytes)", kind, fp32.name, out.name, fp32.stat().st_size, out.stat().st_size)
    return out
