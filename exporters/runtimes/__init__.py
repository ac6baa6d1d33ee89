"""Runtimes behind one interface: what each offers for exported files, a session to run one, its version.

A runtime is one folder here (``onnxruntime/``, ``openvino/``) holding one
class that implements ``Runtime``. The service asks ``available()`` for them
and never names a runtime's API: a new runtime is a new folder and a line in
``available``.

Every runtime reads the ONNX files the export stage writes (FP32, and the
reduced precisions made by ``exporters.quantize``) and says which of them it
can run, where (``Offer``). A ``Session`` runs batches of float32 NCHW inputs
and returns float32 logits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Offer:
    """One way a runtime can run one file."""

    precision: str  # the file's: "fp32", "int8 static", "int8 dynamic", "fp16"
    file: Path
    target: str  # where, in the runtime's words: "CPUExecutionProvider", "CUDAExecutionProvider", "CPU"
    device: str  # "cpu" | "cuda"
    label: str = ""  # shown after the variant's name when it is not the runtime's default CPU target, e.g. "CUDA"


@dataclass(frozen=True)
class Session:
    run: Callable[[np.ndarray], np.ndarray]  # a batch -> its logits
    static_batch: int | None  # the batch size the file was exported for; None: any


class Runtime(Protocol):
    name: str
    version: str

    def targets(self) -> list[str]:
        """Where this machine can run models (execution providers, devices), for the report's environment."""
        ...

    def offers(self, files: dict[str, Path]) -> list[Offer]:
        """What this runtime can run of ``files`` (precision -> ONNX file), here."""
        ...

    def open(self, offer: Offer, threads: int) -> Session:
        """A session for ``offer`` using ``threads`` intra-op threads (0: the runtime's default)."""
        ...


def available() -> list[Runtime]:
    """Every runtime this build has, onnxruntime first (the reference the export is checked in)."""
    from exporters.runtimes.onnxruntime import OnnxRuntime
    from exporters.runtimes.openvino import OpenVino

    return [OnnxRuntime(), OpenVino()]


def predict(session: Session, batches: Iterable[np.ndarray]) -> np.ndarray:
    """Logits for every input, in order; a file with a static batch is fed chunks of it (the last padded)."""
    size, outputs = session.static_batch, []
    for batch in batches:
        if size is None:
            outputs.append(session.run(batch))
            continue
        for start in range(0, len(batch), size):
            chunk = batch[start : start + size]
            n = len(chunk)
            if n < size:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - n, axis=0)])
            outputs.append(session.run(chunk)[:n])
    return np.concatenate(outputs)
