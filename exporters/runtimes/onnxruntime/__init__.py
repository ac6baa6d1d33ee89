"""onnxruntime: every file the export stage writes, on the CPU execution provider, and FP32 on CUDA where present."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from exporters import onnx_export
from exporters.runtimes import Offer, Session

CPU_EP, CUDA_EP = "CPUExecutionProvider", "CUDAExecutionProvider"


class OnnxRuntime:
    name = "onnxruntime"
    version = ort.__version__

    def targets(self) -> list[str]:
        return ort.get_available_providers()

    def offers(self, files: dict[str, Path]) -> list[Offer]:
        offers = [Offer(precision, path, CPU_EP, "cpu") for precision, path in files.items()]
        if CUDA_EP in self.targets() and "fp32" in files:
            offers.insert(1, Offer("fp32", files["fp32"], CUDA_EP, "cuda", "CUDA"))
        return offers

    def open(self, offer: Offer, threads: int) -> Session:
        session = onnx_export.session(offer.file, threads, [offer.target])
        return Session(onnx_export.runner(session), onnx_export.static_batch(session))
