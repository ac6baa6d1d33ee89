"""The model formats the API accepts: checked at upload, checked again and loaded in the worker.

One table maps the proto's ModelFormat to the engine's format names; torch
archives are judged by ``distill.model_checks``, ONNX files by
``exporters.onnx_teacher``. ``inspect`` is what upload runs, in a child
process (``service.inspection``); ``load_teacher`` is what a job runs. Both
check the file first, so a blob stored before a check existed is judged too.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from distill import loading, model_checks
from distill.model_checks import ArchiveLimits, ModelFileError
from exporters import onnx_teacher
from protos.distillery.v1 import distillery_pb2 as pb

FORMAT_BY_NAME = {
    loading.TORCHSCRIPT: pb.MODEL_FORMAT_TORCHSCRIPT,
    loading.EXPORTED_PROGRAM: pb.MODEL_FORMAT_EXPORTED_PROGRAM,
    loading.STATE_DICT: pb.MODEL_FORMAT_STATE_DICT,
    loading.SAFETENSORS: pb.MODEL_FORMAT_SAFETENSORS,
    onnx_teacher.ONNX: pb.MODEL_FORMAT_ONNX,
}
NAME_BY_FORMAT = {v: k for k, v in FORMAT_BY_NAME.items()}
WEIGHTS_FORMATS = tuple(FORMAT_BY_NAME[name] for name in loading.WEIGHTS)  # need an architecture name
LAYERED_FORMATS = tuple(FORMAT_BY_NAME[name] for name in loading.LAYERED)  # teachers for feature methods


def archive_limits(max_upload_bytes: int) -> ArchiveLimits:
    """An archive may unpack to no more than the server accepts as a file."""
    return ArchiveLimits(max_inflated_bytes=max_upload_bytes)


def detect(path: Path, limits: ArchiveLimits) -> int:
    """The ModelFormat of a file known safe to load; ModelFileError, naming the part, for anything else."""
    if zipfile.is_zipfile(path):
        return FORMAT_BY_NAME[model_checks.check_torch_archive(str(path), limits)]
    if model_checks.is_safetensors(path):
        return pb.MODEL_FORMAT_SAFETENSORS
    if onnx_teacher.check_onnx_file(path):
        return pb.MODEL_FORMAT_ONNX
    raise ModelFileError(
        "neither a zip archive, a safetensors file nor an ONNX model: raw pickles and legacy torch.save files are not accepted "
        f"because loading them can run arbitrary code; {model_checks.WHAT_TO_SEND}"
    )


def inspect(path: Path, limits: ArchiveLimits) -> int:
    """Check a file and load it as a job will (no forward pass): its ModelFormat, or ModelFileError."""
    fmt = detect(path, limits)
    if fmt == pb.MODEL_FORMAT_ONNX:
        onnx_teacher.open_onnx(path, num_threads=1)
    else:
        loading.try_load(path, NAME_BY_FORMAT[fmt])
    return fmt


def load_weights(model: pb.Model, path: Path, limits: ArchiveLimits) -> dict:
    """The tensors of an uploaded weights file (a student's pretrained start), checked again as at upload."""
    if detect(path, limits) != model.format or model.format not in WEIGHTS_FORMATS:
        raise ModelFileError(f"model {model.id} is {pb.ModelFormat.Name(model.format)}, not a weights file "
                             "(state_dict or safetensors)")
    return loading.read_weights(path, NAME_BY_FORMAT[model.format])


def load_teacher(
    model: pb.Model, path: Path, input_shape: tuple[int, int, int], num_threads: int, limits: ArchiveLimits
) -> loading.Teacher:
    detected = detect(path, limits)
    if detected != model.format:
        raise ModelFileError(f"the stored file is {pb.ModelFormat.Name(detected)}, not {pb.ModelFormat.Name(model.format)}")
    if model.format == pb.MODEL_FORMAT_ONNX:
        return onnx_teacher.load_onnx_teacher(path, input_shape, num_threads)
    return loading.load_teacher(path, NAME_BY_FORMAT[model.format], model.architecture, input_shape)
