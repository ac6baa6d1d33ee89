"""Black-box teachers: an ONNX file run by onnxruntime, seen only through its outputs.

Such a teacher distils with logit methods (kd); feature methods need module
internals and refuse it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from distill.loading import ModelFileError, Teacher, describe_teacher
from exporters.onnx_export import predict, session

ONNX = "onnx"


def is_onnx_model(path: Path) -> bool:
    """True when the file parses as an ONNX model with a graph (protobuf parsing runs no code)."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # not protobuf, or not this message
        return False
    return model.ir_version > 0 and len(model.graph.node) > 0 and len(model.graph.input) > 0


class OnnxTeacher(nn.Module):
    """An onnxruntime session behind the nn.Module call convention (tensors in, tensors out)."""

    def __init__(self, path: Path, num_threads: int = 0) -> None:
        super().__init__()
        self.path = str(path)
        self.session = session(path, num_threads=num_threads)
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ModelFileError(f"the ONNX teacher must take one input, it takes {len(inputs)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A file exported for one batch size is run in chunks of it (onnx_export.predict pads the last).
        out = predict(self.session, [x.detach().float().cpu().numpy()])
        return torch.from_numpy(out).to(x.device)


def load_onnx_teacher(path: Path, input_shape: tuple[int, int, int], num_threads: int = 0) -> Teacher:
    try:
        model = OnnxTeacher(path, num_threads)
    except ModelFileError:
        raise
    except Exception as e:  # onnxruntime refuses malformed graphs with many error types
        raise ModelFileError(f"onnxruntime cannot load the ONNX teacher: {e}") from e
    return describe_teacher(model, ONNX, ONNX, input_shape)


def parameter_count(model: OnnxTeacher) -> int:
    """Floating-point values in the graph's initializers: the weights (integer ones are shapes and indices)."""
    graph = onnx.load(model.path, load_external_data=False).graph
    weights = (init for init in graph.initializer if init.data_type in _FLOAT_TYPES)
    return sum(int(np.prod(init.dims)) for init in weights)


_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}
