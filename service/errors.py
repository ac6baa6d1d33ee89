"""Service exceptions and the one table that maps errors to gRPC status codes."""

from __future__ import annotations

import grpc

from distill.datafree import DataFreeFailedError
from distill.input_convention import TeacherNearChanceError
from distill.model_checks import ModelFileError
from distill.models import UnknownArchitectureError
from distill.loop import TrainingDivergedError
from exporters.onnx_export import ExportError, ParityError
from service.inspection import InspectionLimitError


class ServiceError(Exception):
    """An error with a status code a client can act on."""

    code = grpc.StatusCode.INTERNAL


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ServiceError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE


# Errors the engine and exporters raise, and the code a request or job that hits them ends with.
# Order matters: the first matching type wins (subclasses before ValueError).
_CODE_BY_TYPE: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (ModelFileError, grpc.StatusCode.INVALID_ARGUMENT),
    (InspectionLimitError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (TeacherNearChanceError, grpc.StatusCode.FAILED_PRECONDITION),
    (DataFreeFailedError, grpc.StatusCode.FAILED_PRECONDITION),
    (UnknownArchitectureError, grpc.StatusCode.INVALID_ARGUMENT),
    (FileNotFoundError, grpc.StatusCode.INVALID_ARGUMENT),
    # The server's disk or filesystem refused (full, read-only, ...): another try may work (RetryJob for a job).
    (OSError, grpc.StatusCode.UNAVAILABLE),
    (TrainingDivergedError, grpc.StatusCode.ABORTED),
    # The student is fine and kept (student.pt); ONNX cannot express it, or the file computes something else.
    (ExportError, grpc.StatusCode.UNIMPLEMENTED),
    (ParityError, grpc.StatusCode.FAILED_PRECONDITION),
    (ValueError, grpc.StatusCode.INVALID_ARGUMENT),
    (MemoryError, grpc.StatusCode.RESOURCE_EXHAUSTED),
]


def status_code(error: BaseException) -> grpc.StatusCode:
    """The status code for an error raised while serving a request or running a job."""
    if isinstance(error, ServiceError):
        return error.code
    for error_type, code in _CODE_BY_TYPE:
        if isinstance(error, error_type):
            return code
    return grpc.StatusCode.INTERNAL


def describe(error: BaseException) -> str:
    """A readable one-line message: the error's own text when it is a known kind, else its type too."""
    known = isinstance(error, (ServiceError, *(error_type for error_type, _ in _CODE_BY_TYPE)))
    message = " ".join(str(error).split())[:2000]  # one line, whatever the library printed
    return message if known else f"internal error ({type(error).__name__}): {message}"
