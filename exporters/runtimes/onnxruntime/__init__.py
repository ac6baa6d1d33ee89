"""onnxruntime: every file the export stage writes, on the CPU execution provider, and FP32 on CUDA where present.

Also the session helpers the rest of ``exporters`` uses: the export's parity
check and ONNX teachers run in onnxruntime, the reference runtime.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from exporters import runtimes

CPU_EP, CUDA_EP = "CPUExecutionProvider", "CUDAExecutionProvider"


class OnnxRuntime:
    name = "onnxruntime"
    version = ort.__version__

    def targets(self) -> list[str]:
        return ort.get_available_providers()

    def offers(self, files: dict[str, Path]) -> list[runtimes.Offer]:
        offers = [runtimes.Offer(precision, path, CPU_EP, "cpu") for precision, path in files.items()]
        if CUDA_EP in self.targets() and "fp32" in files:
            offers.insert(1, runtimes.Offer("fp32", files["fp32"], CUDA_EP, "cuda", "CUDA"))
        return offers

    def open(self, offer: runtimes.Offer, threads: int) -> runtimes.Session:
        sess = session(offer.file, threads, [offer.target])
        return runtimes.Session(runner(sess), static_batch(sess))


def session(path: Path, num_threads: int = 0, providers: list[str] | None = None) -> ort.InferenceSession:
    """An onnxruntime session on ``providers`` that this machine has (else the CPU); ``num_threads`` 0: ORT's default."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    available = ort.get_available_providers()
    providers = [p for p in (providers or [CPU_EP]) if p in available] or [CPU_EP]
    return ort.InferenceSession(str(path), options, providers=providers)


def static_batch(sess: ort.InferenceSession) -> int | None:
    """The batch size a file was exported for, or None when its batch axis is symbolic."""
    batch = sess.get_inputs()[0].shape[0]
    return batch if isinstance(batch, int) and batch > 0 else None


def runner(sess: ort.InferenceSession) -> Callable[[np.ndarray], np.ndarray]:
    """``batch -> first output`` for any single-input file (an uploaded one may name its tensors anything)."""
    name = sess.get_inputs()[0].name  # looked up once: timing loops call this per batch
    return lambda batch: sess.run(None, {name: batch})[0]


def predict(sess: ort.InferenceSession, batches: Iterable[np.ndarray]) -> np.ndarray:
    """The first output for every input, in order (a file with a static batch is fed chunks of it)."""
    return runtimes.predict(runtimes.Session(runner(sess), static_batch(sess)), batches)
