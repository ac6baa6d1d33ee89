"""Black-box teachers: an ONNX file run by onnxruntime, seen only through its outputs.

Such a teacher distils with logit methods (kd); feature methods need module
internals and refuse it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from distill.allocator import out_of_memory
from distill.loading import ModelFileError, Teacher, describe_teacher
from exporters.runtimes.onnxruntime import predict, session

ONNX = "onnx"


def _parse(path: Path) -> onnx.ModelProto | None:
    """The file as an ONNX model with a graph, or None (protobuf parsing runs no code)."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # not protobuf, or not this message
        return None
    return model if model.ir_version > 0 and len(model.graph.node) > 0 and len(model.graph.input) > 0 else None


def check_onnx_file(path: Path) -> bool:
    """False when the file is not ONNX; True when it is and safe to hand onnxruntime; else ModelFileError.

    External data would have onnxruntime open any path the file names (the
    server's database, another model); a tensor that declares more bytes than
    the whole file holds is a lie meant to make the loader allocate them.
    """
    model = _parse(path)
    if model is None:
        return False
    file_bytes = path.stat().st_size
    for where, tensor in _tensors(model.graph, "graph"):
        name = f"{where} tensor {tensor.name!r}" if tensor.name else f"{where} tensor"
        if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data):
            raise ModelFileError(f"{name} keeps its data in an external file; send a model with its weights inside the file")
        if any(d < 0 for d in tensor.dims):
            raise ModelFileError(f"{name} has a negative dimension {list(tensor.dims)}")
        declared = math.prod(tensor.dims) * _ITEM_BYTES.get(tensor.data_type, 1)
        if declared > 2 * file_bytes:  # x2: sub-byte types are counted as a byte each
            raise ModelFileError(f"{name} declares {declared} bytes of data, the whole file is {file_bytes}")
    return True


def _tensors(graph: onnx.GraphProto, where: str) -> Iterator[tuple[str, onnx.TensorProto]]:
    """Every tensor a graph holds: initializers, sparse ones, constants in node attributes, and subgraphs'."""
    for tensor in graph.initializer:
        yield where, tensor
    for sparse in graph.sparse_initializer:
        yield where, sparse.values
        yield where, sparse.indices
    for node in graph.node:
        here = f"{where} node {node.name or node.op_type}"
        for attr in node.attribute:
            for tensor in (*([attr.t] if attr.HasField("t") else []), *attr.tensors):
                yield here, tensor
            for sparse in (*([attr.sparse_tensor] if attr.HasField("sparse_tensor") else []), *attr.sparse_tensors):
                yield here, sparse.values
                yield here, sparse.indices
            for subgraph in (*([attr.g] if attr.HasField("g") else []), *attr.graphs):
                yield from _tensors(subgraph, f"{here} subgraph")


def _item_bytes(data_type: int) -> int:
    try:
        return max(1, onnx.helper.tensor_dtype_to_np_dtype(data_type).itemsize)
    except (KeyError, ValueError, TypeError):  # strings and types numpy cannot hold
        return 1


_ITEM_BYTES = {data_type: _item_bytes(data_type) for data_type in onnx.TensorProto.DataType.values()}


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
        # A file exported for one batch size is run in chunks of it (the last padded).
        out = predict(self.session, [x.detach().float().cpu().numpy()])
        return torch.from_numpy(out).to(x.device)


def load_onnx_teacher(path: Path, input_shape: tuple[int, int, int], num_threads: int = 0) -> Teacher:
    return describe_teacher(open_onnx(path, num_threads), ONNX, ONNX, input_shape)


def open_onnx(path: Path, num_threads: int = 0) -> OnnxTeacher:
    """An onnxruntime session of a file ``check_onnx_file`` passed; ModelFileError when onnxruntime refuses it."""
    try:
        return OnnxTeacher(path, num_threads)
    except ModelFileError:
        raise
    except Exception as e:  # onnxruntime refuses malformed graphs with many error types
        if out_of_memory(e):
            raise
        raise ModelFileError(f"onnxruntime cannot load the ONNX model: {' '.join(str(e).split())[:500]}") from e


def parameter_count(model: OnnxTeacher) -> int:
    """Floating-point values in the graph's initializers: the weights (integer ones are shapes and indices)."""
    graph = onnx.load(model.path, load_external_data=False).graph
    weights = (init for init in graph.initializer if init.data_type in _FLOAT_TYPES)
    return sum(int(np.prod(init.dims)) for init in weights)


def mac_count(model: OnnxTeacher, input_shape: tuple[int, int, int]) -> int:
    """Multiply-accumulates for one sample, counted as ``count_macs`` counts a PyTorch model's.

    Conv, Gemm and MatMul nodes (what torch's flop counter counts), sized by
    ONNX shape inference with the input fixed to ``input_shape``; 0 when a
    size cannot be inferred (the report shows "-").
    """
    graph_model = onnx.load(model.path, load_external_data=False)
    weights = {init.name: list(init.dims) for init in graph_model.graph.initializer}
    model_input = next(i for i in graph_model.graph.input if i.name not in weights)
    dims = model_input.type.tensor_type.shape.dim
    if len(dims) != 1 + len(input_shape):
        return 0
    batch = dims[0].dim_value or 1  # a file exported for a fixed batch keeps it; the total is divided by it
    for dim, size in zip(dims, (batch, *input_shape)):
        dim.dim_value = size
    try:
        graph = onnx.shape_inference.infer_shapes(graph_model, data_prop=True).graph
    except Exception:  # inference refuses some graphs outright; they are not counted
        return 0
    shapes = dict(weights)
    for value in (*graph.input, *graph.value_info, *graph.output):
        shapes[value.name] = [d.dim_value if d.HasField("dim_value") else 0 for d in value.type.tensor_type.shape.dim]

    total = 0
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        a, b, out = (shapes.get(name) for name in (node.input[0], node.input[1], node.output[0]))
        if not a or not b or not out or 0 in a + b + out:
            return 0
        if node.op_type == "Conv":  # weight: out channels, in channels / groups, kernel
            total += math.prod(out) * math.prod(b[1:])
        elif node.op_type == "Gemm":
            trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
            total += math.prod(out) * a[0 if trans_a else 1]
        else:
            total += math.prod(out) * a[-1]
    return total // batch


_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}
