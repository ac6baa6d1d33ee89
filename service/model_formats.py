"""The teacher formats the API accepts: detection at upload, loading in the worker.

One table maps the proto's ModelFormat to the engine's format names; PyTorch
files are judged by ``distill.loading``, ONNX files by ``exporters``.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from distill import loading
from exporters import onnx_teacher
from protos.distillery.v1 import distillery_pb2 as pb

FORMAT_BY_NAME = {
    loading.TORCHSCRIPT: pb.MODEL_FORMAT_TORCHSCRIPT,
    loading.EXPORTED_PROGRAM: pb.MODEL_FORMAT_EXPORTED_PROGRAM,
    loading.STATE_DICT: pb.MODEL_FORMAT_STATE_DICT,
    onnx_teacher.ONNX: pb.MODEL_FORMAT_ONNX,
}
NAME_BY_FORMAT = {v: k for k, v in FORMAT_BY_NAME.items()}


def detect(path: Path) -> int:
    """The ModelFormat of a file; raises loading.ModelFileError for anything unsafe or unknown."""
    if not zipfile.is_zipfile(path) and onnx_teacher.is_onnx_model(path):
        return pb.MODEL_FORMAT_ONNX
    return FORMAT_BY_NAME[loading.detect_format(path)]


def load_teacher(model: pb.Model, path: Path, input_shape: tuple[int, int, int], num_threads: int) -> loading.Teacher:
    if model.format == pb.MODEL_FORMAT_ONNX:
        return onnx_teacher.load_onnx_teacher(path, input_shape, num_threads)
    return loading.load_teacher(path, NAME_BY_FORMAT[model.format], model.architecture, input_shape)
