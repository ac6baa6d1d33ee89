"""OpenVINO: the FP32 and INT8 files on its CPU plugin.

It reads the same ONNX files as onnxruntime. The INT8 ones are onnxruntime's
QDQ graphs, which OpenVINO runs as INT8 kernels; the FP16 file and the
dynamic-INT8 one (ops OpenVINO has no kernels for, MatMulInteger) are left to
onnxruntime. FP32 runs at f32: on CPUs with bf16 units OpenVINO would
otherwise pick bf16 on its own, and its numbers would no longer be the FP32
student's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openvino as ov

from exporters.runtimes import Offer, Session

DEVICE = "CPU"
PRECISIONS = ("fp32", "int8 static")


class OpenVino:
    name = "openvino"
    version = ov.__version__.split("-")[0]  # "2026.4.1", without the build tag

    def __init__(self) -> None:
        self.core = ov.Core()

    def targets(self) -> list[str]:
        return list(self.core.available_devices)

    def offers(self, files: dict[str, Path]) -> list[Offer]:
        if DEVICE not in self.targets():
            return []
        return [Offer(precision, path, DEVICE, "cpu") for precision, path in files.items() if precision in PRECISIONS]

    def open(self, offer: Offer, threads: int) -> Session:
        model = self.core.read_model(str(offer.file))
        config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        if offer.precision == "fp32":
            config["INFERENCE_PRECISION_HINT"] = "f32"
        compiled = self.core.compile_model(model, offer.target, config)
        request, output = compiled.create_infer_request(), compiled.output(0)
        batch = compiled.input(0).get_partial_shape()[0]
        static = batch.get_length() if batch.is_static else None
        # The request's output buffer is reused by the next call: hand back a copy.
        return Session(lambda x: np.array(request.infer({0: x})[output], copy=True), static)
