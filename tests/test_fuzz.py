"""Property-based fuzzing of CreateJob and UploadModel against the real server.

Whatever the spec, the answer is a job or a status code a client can act on
(never INTERNAL, UNKNOWN or a hang), and the server stays healthy afterwards.
Specs are built field by field from the JobSpec descriptor, so fields added to
the proto later are fuzzed too. Uploads are real model files in every format
(zips and an ONNX protobuf), mutated where their structure lives: a model, or
INVALID_ARGUMENT / RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest
import torch
from google.protobuf import message_factory, text_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import given, settings
from hypothesis import strategies as st

from protos.distillery.v1 import distillery_pb2 as pb
from service.client import Client
from service.server import SERVICE_NAME
from service.job_states import TERMINAL_STATES
from exporters import onnx_export
from tests.conftest import TINY_DATA, tiny_spec

# A hang shows up as DEADLINE_EXCEEDED instead of stalling the suite.
CALL_TIMEOUT_S = 10.0
MAX_LIST_SIZE = 4
MAX_MUTATIONS = 3
# A random message sets each field (or oneof) with chance 1 in this: with more, nearly every
# random spec would mix job kinds (student with benchmark_only, losses with data_free) and stop there.
FIELD_SET_ODDS = 3
# The fields the server resolves as paths and confines to its data roots, by dataset source.
PATH_FIELDS = {"torchvision": ("root",), "image_folder": ("train_dir", "val_dir")}

_INTEGER_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
_FLOAT_WIDTHS = {FieldDescriptor.TYPE_FLOAT: 32, FieldDescriptor.TYPE_DOUBLE: 64}
# Values at or just past the edges of the ranges the server checks.
_INTEGER_EDGES = (0, 1, -1, 2, 3, 4, 7, 8, 10, 16, 28, 64, 1000, 1024, 1025, 4096, 4097, 65536, 1_000_000)
_FLOAT_EDGES = (0.0, -0.0, 1e-9, 1e-6, 1e-4, 0.05, 0.5, 0.9, 1.0, 4.0, 100.0, 1000.0, 1e6, -1.0,
                float("nan"), float("inf"), float("-inf"), 3.4028234663852886e38)


def _integers(low: int, high: int) -> st.SearchStrategy[int]:
    edges = sorted({v for v in (*_INTEGER_EDGES, low, high) if low <= v <= high})
    return st.one_of(st.sampled_from(edges), st.integers(max(low, -10), 300), st.integers(low, high))


def _floats(width: int) -> st.SearchStrategy[float]:
    return st.one_of(st.sampled_from(_FLOAT_EDGES), st.floats(-10, 1e4, width=width), st.floats(width=width))


def _strings(data_root: Path) -> st.SearchStrategy[str]:
    """Random text, plus names the server knows and paths that probe the data-root confinement."""
    special = [
        "", ".", "..", "../..", "../../../etc", "/", "/etc/passwd", "~", " ", "\n", "a\x00b",
        str(data_root), str(data_root / "train"), f"{data_root}/../..", "x" * 300, "a/" * 200,
        "データ/名前", "🔥", "lenet5", "resnet18", "CIFAR10", "conv1", "features.4", "layer2",
        "m-0000000000000000",
    ]
    return st.one_of(st.sampled_from(special), st.text(max_size=12))


def _scalar_values(message: Message, into: dict[str, dict[object, None]]) -> None:
    """Every scalar set anywhere in ``message``, by field full name (a dict keeps their order)."""
    for field, value in message.ListFields():
        for item in value if field.is_repeated else [value]:
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                _scalar_values(item, into)
            else:
                into.setdefault(field.full_name, {})[item] = None


class SpecStrategies:
    """Strategies for any message reachable from JobSpec, driven by its descriptor.

    Every field also draws from the values it has in the valid specs (the real
    model id, "lenet5_half", "MNIST", ...), so random specs often get past the
    first checks and reach the deep ones.
    """

    def __init__(self, valid: list[pb.JobSpec], data_root: Path) -> None:
        self.valid = valid
        self.strings = _strings(data_root)
        self.known: dict[str, dict[object, None]] = {}
        for spec in valid:
            _scalar_values(spec, self.known)

    def specs(self) -> st.SearchStrategy[pb.JobSpec]:
        bases = st.sampled_from(self.valid)
        return st.one_of(
            bases.flatmap(self.mutated),  # a valid spec with a few changes anywhere in its tree
            st.tuples(bases, self.message(pb.JobSpec.DESCRIPTOR)).map(_merged),  # random fields over a valid spec
            self.message(pb.JobSpec.DESCRIPTOR),  # anything at all
            self.dataset_paths(),  # too deep for the others to reach often
        )

    def scalar(self, field: FieldDescriptor) -> st.SearchStrategy:
        generic = self._generic_scalar(field)
        if field.full_name in self.known:
            return st.one_of(st.sampled_from(list(self.known[field.full_name])), generic)
        return generic

    def _generic_scalar(self, field: FieldDescriptor) -> st.SearchStrategy:
        if field.type in _INTEGER_RANGES:
            return _integers(*_INTEGER_RANGES[field.type])
        if field.type in _FLOAT_WIDTHS:
            return _floats(_FLOAT_WIDTHS[field.type])
        if field.type == FieldDescriptor.TYPE_BOOL:
            return st.booleans()
        if field.type == FieldDescriptor.TYPE_STRING:
            return self.strings
        if field.type == FieldDescriptor.TYPE_BYTES:
            return st.binary(max_size=16)
        if field.type == FieldDescriptor.TYPE_ENUM:
            # proto3 enums are open: numbers the server has no name for are valid on the wire.
            return st.one_of(st.sampled_from([v.number for v in field.enum_type.values]), _integers(-(2**31), 2**31 - 1))
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            return self.message(field.message_type)
        raise TypeError(f"no strategy for {field.full_name} (type {field.type}): add one")

    def value(self, field: FieldDescriptor) -> st.SearchStrategy:
        """What the field can be set to: one value, or a (short) list for a repeated field."""
        if field.is_repeated:
            return st.lists(self.scalar(field), max_size=MAX_LIST_SIZE)
        return self.scalar(field)

    def message(self, descriptor: Descriptor) -> st.SearchStrategy[Message]:
        """A message with each field, or one member of each oneof, set with chance 1 in FIELD_SET_ODDS."""
        groups: dict[str, list[FieldDescriptor]] = {}
        for field in descriptor.fields:
            oneof = field.containing_oneof
            groups.setdefault(oneof.name if oneof else field.name, []).append(field)

        @st.composite
        def build(draw: st.DrawFn) -> Message:
            message = message_factory.GetMessageClass(descriptor)()
            for fields in groups.values():
                if draw(st.integers(1, FIELD_SET_ODDS)) == 1:
                    chosen = draw(st.sampled_from(fields))
                    assign(message, chosen, draw(self.value(chosen)))
            return message

        return build()

    def mutated(self, base: pb.JobSpec) -> st.SearchStrategy[pb.JobSpec]:
        """``base`` with a few fields anywhere in its tree, each as likely as any other, cleared or replaced."""

        @st.composite
        def build(draw: st.DrawFn) -> pb.JobSpec:
            spec = pb.JobSpec()
            spec.CopyFrom(base)
            for _ in range(draw(st.integers(0, MAX_MUTATIONS))):
                message, field = draw(st.sampled_from(_positions(spec)))
                if draw(st.booleans()):
                    message.ClearField(field.name)
                else:
                    assign(message, field, draw(self.value(field)))
            return spec

        return build()

    def dataset_paths(self) -> st.SearchStrategy[pb.JobSpec]:
        """A valid spec whose dataset paths are any string."""
        with_paths = [spec for spec in self.valid if spec.dataset.WhichOneof("source") in PATH_FIELDS]

        @st.composite
        def build(draw: st.DrawFn) -> pb.JobSpec:
            spec = pb.JobSpec()
            spec.CopyFrom(draw(st.sampled_from(with_paths)))
            source = spec.dataset.WhichOneof("source")
            for name in PATH_FIELDS[source]:
                setattr(getattr(spec.dataset, source), name, draw(self.strings))
            return spec

        return build()


def _positions(message: Message) -> list[tuple[Message, FieldDescriptor]]:
    """Every field of ``message`` and of the messages set inside it: where a mutation can land."""
    positions = [(message, field) for field in message.DESCRIPTOR.fields]
    for field, value in message.ListFields():
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            for item in value if field.is_repeated else [value]:
                positions += _positions(item)
    return positions


def _merged(pair: tuple[pb.JobSpec, pb.JobSpec]) -> pb.JobSpec:
    """The first spec with the second's set fields merged over it (lists are appended)."""
    merged = pb.JobSpec()
    merged.CopyFrom(pair[0])
    merged.MergeFrom(pair[1])
    return merged


def assign(message: Message, field: FieldDescriptor, value: object) -> None:
    """Set ``field`` of ``message`` to ``value`` (a list for a repeated field)."""
    if field.is_repeated:
        container = getattr(message, field.name)
        del container[:]
        container.extend(value)
    elif field.type == FieldDescriptor.TYPE_MESSAGE:
        getattr(message, field.name).CopyFrom(value)  # sets presence even for an empty message
    else:
        setattr(message, field.name, value)


def valid_specs(teacher_id: str) -> list[pb.JobSpec]:
    """Specs CreateJob accepts, one per job kind and dataset source: the seeds that mutations start from."""
    distillation = [tiny_spec(teacher_id)]
    for dataset in (
        pb.DatasetSpec(torchvision=pb.TorchvisionDataset(name="MNIST", root=".")),
        pb.DatasetSpec(image_folder=pb.ImageFolderDataset(train_dir="train", val_dir="val", image_size=28, channels=1)),
    ):
        spec = tiny_spec(teacher_id)
        spec.dataset.CopyFrom(dataset)
        distillation.append(spec)
    with_losses = tiny_spec(teacher_id)
    with_losses.losses.add(weight=1, kd=pb.KnowledgeDistillation(temperature=2, alpha=0.5))
    with_losses.losses.add(weight=0.5, attention=pb.AttentionTransfer(beta=100))
    with_losses.export.CopyFrom(pb.ExportSpec(opset=17, int8=False, fp16=False, dynamic_batch=False))
    data_free = pb.JobSpec(
        teacher_model_id=teacher_id,
        student=pb.StudentSpec(architecture="lenet5_half"),
        data_free=pb.DataFreeSpec(input_shape=pb.InputShape(channels=1, height=28, width=28), iterations=2, batch_size=8),
        device=pb.DEVICE_CPU,
    )
    benchmark_only = pb.JobSpec(
        teacher_model_id=teacher_id,
        benchmark_only=pb.BenchmarkOnlySpec(student_model_id=teacher_id),
        dataset=pb.DatasetSpec(generated=pb.GeneratedDataset(**TINY_DATA)),
        benchmark=pb.BenchmarkSpec(batch_sizes=[1], warmup_runs=1, min_runs=1, min_seconds=0.01),
    )
    return [*distillation, with_losses, data_free, benchmark_only]


def legitimate_rejections(spec: pb.JobSpec, model_ids: list[str]) -> set[grpc.StatusCode]:
    """The codes CreateJob may refuse ``spec`` with, by the API's contract (README, proto)."""
    codes = {grpc.StatusCode.INVALID_ARGUMENT}
    referenced = [spec.teacher_model_id, spec.student.init_model_id, spec.student.model_id]
    if spec.HasField("benchmark_only"):
        referenced.append(spec.benchmark_only.student_model_id)
    if any(model_id not in ("", *model_ids) for model_id in referenced) or not spec.teacher_model_id:
        codes.add(grpc.StatusCode.NOT_FOUND)
    if spec.device == pb.DEVICE_CUDA:  # FAILED_PRECONDITION on a server without CUDA
        codes.add(grpc.StatusCode.FAILED_PRECONDITION)
    if spec.distributed.processes_per_node > (os.cpu_count() or 1):  # more processes than this server has cores
        codes.add(grpc.StatusCode.FAILED_PRECONDITION)
    return codes


def create_job(client: Client, spec: pb.JobSpec) -> pb.Job | grpc.RpcError:
    """The new job, or the error (returned, not raised: a failed check then shows no chained RpcError)."""
    try:
        return client.stub.CreateJob(pb.CreateJobRequest(spec=spec), timeout=CALL_TIMEOUT_S).job
    except grpc.RpcError as error:
        return error


def health_status(client: Client, service: str) -> int:
    # On the client's own channel: whatever credentials it carries, the health check carries too.
    request = health_pb2.HealthCheckRequest(service=service)
    return health_pb2_grpc.HealthStub(client.channel).Check(request, timeout=CALL_TIMEOUT_S).status


def test_create_job_answers_every_spec_with_a_job_or_a_client_error(
    server: tuple[str, Path], client: Client, teacher_model: pb.Model
) -> None:
    model_ids = [teacher_model.id]
    strategies = SpecStrategies(valid_specs(teacher_model.id), (server[1] / "datasets").resolve())
    outcomes: Counter[str] = Counter()
    accepted_ids: list[str] = []

    # derandomize: the same examples on every run (until this file or Hypothesis changes), so CI is
    # reproducible and a failure reproduces locally; database=None: with that, no example store to keep.
    # deadline=None: each example is a round trip to a server that may be busy killing a worker it had
    # just started for the previous one.
    @settings(max_examples=150, derandomize=True, database=None, deadline=None)
    @given(spec=strategies.specs())
    def create_job_once(spec: pb.JobSpec) -> None:
        readable = text_format.MessageToString(spec, as_utf8=True)
        outcome = create_job(client, spec)
        if isinstance(outcome, grpc.RpcError):
            code, details = outcome.code(), outcome.details() or ""
            queue_full = code == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-queued-jobs" in details
            assert queue_full or code in legitimate_rejections(spec, model_ids), (
                f"CreateJob answered {code.name}: {details}\nfor the spec:\n{readable}"
            )
            assert details.strip() and "Traceback" not in details, (
                f"{code.name} without a readable message: {details!r}\nfor the spec:\n{readable}"
            )
            outcomes[code.name] += 1
            return
        # Accepted: cancel at once, so the fuzzing trains nothing.
        job = outcome
        assert job.state == pb.JOB_STATE_QUEUED, f"a new job reads {pb.JobState.Name(job.state)}\n{readable}"
        stored = job.spec.SerializeToString(deterministic=True)
        assert stored == spec.SerializeToString(deterministic=True), f"the job's spec differs from\n{readable}"
        try:
            client.cancel(job.id)
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error  # it had already ended
        outcomes["accepted"] += 1
        accepted_ids.append(job.id)

    started = time.monotonic()
    create_job_once()
    print(f"\nCreateJob fuzzing: {dict(outcomes)} in {time.monotonic() - started:.1f} s")

    rejected = sum(n for name, n in outcomes.items() if name != "accepted")
    assert outcomes["accepted"] and rejected, f"the fuzzing must reach both outcomes, got {dict(outcomes)}"
    for service in ("", SERVICE_NAME):
        assert health_status(client, service) == health_pb2.HealthCheckResponse.SERVING
    listed = {job.id: job for job in client.list_jobs(page_size=500)}
    for job_id in accepted_ids:
        assert listed[job_id].state in TERMINAL_STATES, f"job {job_id} still reads {pb.JobState.Name(listed[job_id].state)}"
    assert client.get_job(accepted_ids[-1]).id == accepted_ids[-1]


# ---------------------------------------------------------------- uploads

# Where a file's structure lives: zip local headers and pickles at the front, the central directory at the end.
_EDGE_BYTES = 1024


def _mutations(size: int) -> st.SearchStrategy[list[tuple[str, int, int, bytes]]]:
    position = st.one_of(st.integers(0, _EDGE_BYTES), st.integers(max(0, size - _EDGE_BYTES), size - 1), st.integers(0, size - 1))
    mutation = st.tuples(
        st.sampled_from(("flip", "truncate", "insert", "delete", "copy")), position, position, st.binary(min_size=1, max_size=16)
    )
    return st.lists(mutation, min_size=1, max_size=MAX_MUTATIONS)


def mutate(data: bytes, mutations: list[tuple[str, int, int, bytes]]) -> bytes:
    for kind, at, other, chunk in mutations:
        if not data:
            break
        at, other = at % max(len(data), 1), other % max(len(data), 1)
        if kind == "flip":
            data = data[:at] + bytes([data[at] ^ chunk[0] or 1]) + data[at + 1 :]
        elif kind == "truncate":
            data = data[:at]
        elif kind == "insert":
            data = data[:at] + chunk + data[at:]
        elif kind == "delete":
            data = data[:at] + data[at + len(chunk) :]
        else:  # a copy of another region over this one: duplicated headers, names and lengths
            data = data[:at] + data[other : other + 4 * len(chunk)] + data[at + 4 * len(chunk) :]
    return data


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory, tiny_teacher: torch.nn.Module) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("fuzz-models")
    example = torch.randn(2, TINY_DATA["channels"], TINY_DATA["image_size"], TINY_DATA["image_size"])
    torch.save(tiny_teacher.state_dict(), folder / "sd.pt")
    torch.jit.save(torch.jit.script(tiny_teacher), folder / "ts.pt")
    torch.export.save(torch.export.export(tiny_teacher, (example,)), folder / "ep.pt2")
    onnx_export.export_onnx(tiny_teacher, example, folder / "m.onnx")
    return {name: (folder / name).read_bytes() for name in ("sd.pt", "ts.pt", "ep.pt2", "m.onnx")}


@pytest.mark.slow
def test_upload_answers_every_mutated_file_with_a_model_or_a_client_error(
    client: Client, model_files: dict[str, bytes], tmp_path: Path
) -> None:
    outcomes: Counter[str] = Counter()

    @settings(max_examples=120, derandomize=True, database=None, deadline=None)
    @given(data=st.data())
    def upload_once(data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(model_files)))
        mutations = data.draw(_mutations(len(model_files[name])))
        path = tmp_path / name
        path.write_bytes(mutate(model_files[name], mutations) or b"\0")
        try:
            client.upload(path, architecture="lenet5")
        except grpc.RpcError as error:
            code, details = error.code(), error.details() or ""
            assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED), (
                f"UploadModel answered {code.name}: {details}\nfor {name} mutated by {mutations}"
            )
            assert details.strip() and "\n" not in details and "Traceback" not in details, details
            outcomes[code.name] += 1
            return
        outcomes["accepted"] += 1

    started = time.monotonic()
    upload_once()
    print(f"\nUploadModel fuzzing: {dict(outcomes)} in {time.monotonic() - started:.1f} s")
    assert outcomes["accepted"] and outcomes["INVALID_ARGUMENT"], f"the fuzzing must reach both outcomes, got {dict(outcomes)}"
    for service in ("", SERVICE_NAME):
        assert health_status(client, service) == health_pb2.HealthCheckResponse.SERVING
