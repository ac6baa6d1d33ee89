"""The service over a real channel to a real server process: one job end to end, and bad input."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import torch
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image

from distill import data, datafree, models
from distill.benchmark import count_macs
from protos.distillery.v1 import distillery_pb2 as pb
from service.client import Client
from tests.conftest import TINY_DATA, rpc_error, tiny_spec, train_tiny_teacher

STAGES = ["load_teacher", "build_student", "distil", "evaluate", "export", "benchmark", "report"]


def _health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status


@pytest.fixture(scope="module")
def finished_job(client: Client, teacher_model: pb.Model) -> tuple[pb.Job, list[pb.JobEvent]]:
    job = client.create_job(tiny_spec(teacher_model.id), request_id="e2e")
    events: list[pb.JobEvent] = []
    return client.wait(job.id, events.append), events


def test_health_and_reflection(server: tuple[str, Path]) -> None:
    assert _health(server[0]) == health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(server[0]) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert "distillery.v1.DistillationService" in names and "grpc.health.v1.Health" in names


def test_job_runs_end_to_end(finished_job: tuple[pb.Job, list[pb.JobEvent]], client: Client, tmp_path: Path) -> None:
    job, events = finished_job
    assert job.state == pb.JOB_STATE_SUCCEEDED, job.error.message
    stages = [e.stage for e in events if e.stage and not e.step]
    assert stages == STAGES
    training = [e for e in events if e.step]
    assert training and training[-1].step == training[-1].total_steps and training[-1].loss > 0
    assert events[-1].state == pb.JOB_STATE_SUCCEEDED and events[-1].progress == 1.0
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    ran, started, ended = (t.ToNanoseconds() / 1e9 for t in (job.run_time, job.start_time, job.end_time))
    assert ran == pytest.approx(ended - started, abs=1e-3)  # one start, never requeued: it ran from start to end

    report = client.report(job.id)
    names = [v.name for v in report.variants]
    assert names == [
        "teacher / pytorch", "student / pytorch", "student / onnxruntime", "student / onnxruntime int8 static",
        "student / onnxruntime int8 dynamic", "student / onnxruntime fp16", "student / openvino",
        "student / openvino int8 static", "teacher / onnxruntime", "teacher / openvino",
    ]
    teacher, student, student_onnx, int8_static, int8_dynamic, fp16, openvino, openvino_int8, teacher_onnx, teacher_openvino = (
        report.variants
    )
    # The second runtime (issue 21): OpenVINO reads the same files, scored and timed like the others.
    assert (openvino.artifact, openvino_int8.artifact) == ("student.onnx", "student.int8.onnx")
    assert openvino.parity.within_tolerance and abs(openvino.accuracy.top1 - student.accuracy.top1) <= 1.0
    assert openvino.execution_provider == "CPU" and [lat.batch_size for lat in openvino_int8.latency] == [1, 8]
    assert openvino.speedup_baseline == "teacher / openvino"
    assert {r.name for r in report.environment.runtimes} == {"onnxruntime", "openvino"}
    # Like for like (issue 21): the teacher is timed in onnxruntime too, and the headline is same-runtime.
    assert (teacher_onnx.name, teacher_onnx.artifact) == ("teacher / onnxruntime", "")
    assert abs(teacher_onnx.accuracy.top1 - teacher.accuracy.top1) <= 1.0
    assert student_onnx.speedup_baseline == "teacher / onnxruntime" and student.speedup_baseline == "teacher / pytorch"
    assert [v.precision for v in (int8_static, int8_dynamic, fp16)] == ["int8 static", "int8 dynamic", "fp16"]
    assert (student_onnx.artifact, int8_static.artifact, fp16.artifact) == ("student.onnx", "student.int8.onnx", "student.fp16.onnx")
    assert abs(fp16.accuracy.top1 - student.accuracy.top1) <= 1.0  # half precision barely moves a small net
    for v in (int8_static, int8_dynamic, fp16):  # measured like the FP32 student, and judged against the budget
        assert v.accuracy.samples == student.accuracy.samples and [lat.batch_size for lat in v.latency] == [1, 8]
        within_budget = student.accuracy.top1 - v.accuracy.top1 <= 1.0
        slower = all(lat.p50_ms > base.p50_ms for lat, base in zip(v.latency, student_onnx.latency))
        assert v.recommended == (within_budget and not slower) and "budget" in v.note
    assert teacher.accuracy.top1 > 90 and student.accuracy.top1 > 80
    # Float noise may flip an argmax on a borderline sample or two of the 200.
    assert abs(student_onnx.accuracy.top1 - student.accuracy.top1) <= 1.0
    assert [lat.batch_size for lat in student_onnx.latency] == [1, 8]
    for lat in (lat for v in report.variants for lat in v.latency):
        assert 0 < lat.p50_ms <= lat.p90_ms <= lat.p95_ms <= lat.p99_ms
        assert lat.HasField("peak_memory_bytes") == sys.platform.startswith("linux")
    for v in report.variants:
        baseline = {"onnxruntime": teacher_onnx, "openvino": teacher_openvino}.get(v.runtime, teacher)
        for lat, base in zip(v.latency, baseline.latency):
            assert lat.speedup_vs_teacher == pytest.approx(base.p50_ms / lat.p50_ms)
            assert lat.HasField("speedup_vs_teacher_pytorch") == (v.runtime != "pytorch")
    assert report.student.parameters < report.teacher.parameters and report.student.macs > 0
    assert student_onnx.parameters == student.parameters and student_onnx.execution_provider == "CPUExecutionProvider"
    assert student.top1_delta_vs_teacher == pytest.approx(student.accuracy.top1 - teacher.accuracy.top1)
    assert report.export.parity_max_abs_diff <= 1e-4
    assert report.summary.startswith("student is ") and " than the teacher in " in report.summary
    assert report.student_lowest_latency.batch_size == 1
    assert report.student_lowest_latency.variant in {v.name for v in report.variants if v.model == "student" and v.recommended}
    # Per class: every validation sample counted once, and the class names are the dataset's.
    assert sum(c.samples for c in report.per_class) == teacher.accuracy.samples
    assert [c.name for c in report.per_class] == data.generated_splits(**TINY_DATA)[1].classes
    assert report.kind == pb.JOB_KIND_DISTILLATION and report.environment.python_version

    # Artifacts: the ONNX file runs in onnxruntime and matches the downloaded PyTorch student.
    assert {a.name for a in job.artifacts} == {
        "student.onnx", "student.int8.onnx", "student.int8-dynamic.onnx", "student.fp16.onnx", "student.pt",
        "bundle.zip", "report.json", "report.md", "report.html",
    }
    onnx_path = client.download(job.id, "student.onnx", tmp_path)
    saved = torch.load(client.download(job.id, "student.pt", tmp_path), weights_only=True)
    model = models.build(saved["architecture"], saved["num_classes"], saved["input_shape"][0])
    model.load_state_dict(saved["state_dict"])
    _, val = data.generated_splits(**TINY_DATA)
    x = data.Normalization(saved["mean"], saved["std"]).apply(val.images[:64])
    with torch.inference_mode():
        expected = model.eval()(x).numpy()
    session = ort.InferenceSession(str(onnx_path))
    actual = session.run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(actual, expected, atol=1e-4)
    metadata = session.get_modelmeta().custom_metadata_map
    assert json.loads(metadata["distillery.classes"]) == val.classes and metadata["distillery.job_id"] == job.id
    assert json.loads(metadata["distillery.preprocess"])["mean"] == pytest.approx(saved["mean"])
    assert metadata["distillery.top1"] == f"{student_onnx.accuracy.top1:.2f}"

    report_json = client.download(job.id, "report.json", tmp_path).read_text()
    assert json_format.Parse(report_json, pb.Report()) == report
    assert "| student / onnxruntime |" in client.download(job.id, "report.md", tmp_path).read_text()
    page = client.download(job.id, "report.html", tmp_path).read_text()
    assert report.summary in page and page.count("<svg") == 2


def test_create_job_is_idempotent_on_request_id(finished_job, client: Client, teacher_model: pb.Model) -> None:
    job, _ = finished_job
    again = client.create_job(tiny_spec(teacher_model.id), request_id="e2e")
    assert again.id == job.id
    different = tiny_spec(teacher_model.id)
    different.training.epochs = 3
    assert rpc_error(client.create_job, different, "e2e").code() == grpc.StatusCode.ALREADY_EXISTS


def test_list_jobs_pages_and_filters(finished_job, client: Client) -> None:
    job, _ = finished_job
    first = client.stub.ListJobs(pb.ListJobsRequest(page_size=1))
    assert len(first.jobs) == 1
    all_ids = [j.id for j in client.list_jobs(page_size=1)]
    assert job.id in all_ids and len(all_ids) == len(set(all_ids))
    succeeded = {j.id: j for j in client.list_jobs(state=pb.JOB_STATE_SUCCEEDED)}
    assert succeeded[job.id] == client.get_job(job.id) and succeeded[job.id].artifacts  # the page has each job whole
    bad = rpc_error(client.stub.ListJobs, pb.ListJobsRequest(page_token="garbage"))
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_one_job_at_a_time_and_cancel(client: Client, teacher_model: pb.Model) -> None:
    spec = tiny_spec(teacher_model.id)
    spec.training.epochs = 500
    job = client.create_job(spec)
    waiting = client.create_job(spec)
    deadline = time.time() + 60
    while client.get_job(job.id).stage != "distil" and time.time() < deadline:
        time.sleep(0.2)
    assert client.get_job(job.id).state == pb.JOB_STATE_RUNNING
    # The server runs --max-concurrent-jobs 1 (the default): the second job queues.
    assert client.get_job(waiting.id).state == pb.JOB_STATE_QUEUED
    assert client.cancel(waiting.id).state == pb.JOB_STATE_CANCELLED
    cancelled = client.cancel(job.id)
    assert cancelled.state == pb.JOB_STATE_CANCELLED and cancelled.error.code == grpc.StatusCode.CANCELLED.value[0]
    assert rpc_error(client.cancel, job.id).code() == grpc.StatusCode.FAILED_PRECONDITION
    assert rpc_error(client.report, job.id).code() == grpc.StatusCode.FAILED_PRECONDITION


def test_job_that_cannot_work_fails_with_a_readable_error(client: Client, tmp_path: Path) -> None:
    # A 4-class teacher on 3-class data: the worker must say so, not crash.
    teacher = train_tiny_teacher(epochs=1)
    torch.save(teacher.state_dict(), tmp_path / "t.pt")
    model = client.upload(tmp_path / "t.pt", architecture="lenet5")
    spec = tiny_spec(model.id)
    spec.dataset.generated.num_classes = 3
    job = client.wait(client.create_job(spec).id)
    assert job.state == pb.JOB_STATE_FAILED
    assert job.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "4 outputs but the dataset has 3 classes" in job.error.message
    assert "Traceback" not in job.error.message


def _upload_raw(client: Client, header: pb.UploadModelHeader, payload: bytes) -> grpc.RpcError:
    def messages():
        yield pb.UploadModelRequest(header=header)
        yield pb.UploadModelRequest(chunk=payload)

    return rpc_error(client.stub.UploadModel, messages())


class _WritesAFile:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # what an attacker's pickle does on load
        return (os.system, (f"touch {self.marker}",))


def test_bad_uploads_are_refused(client: Client, tmp_path: Path, server: tuple[str, Path]) -> None:
    marker = tmp_path / "pwned"
    torch.save(models.build("lenet5", 4, 1), tmp_path / "module.pt")
    pickled = (tmp_path / "module.pt").read_bytes()
    good = pb.UploadModelHeader(sha256=hashlib.sha256(pickled).hexdigest(), size_bytes=len(pickled))

    err = _upload_raw(client, good, pickled)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "arbitrary code" in err.details()
    assert "state_dict" in err.details()

    wrong_hash = pb.UploadModelHeader(sha256="0" * 64, size_bytes=len(pickled))
    err = _upload_raw(client, wrong_hash, pickled)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "sha256 mismatch" in err.details()

    too_big = pb.UploadModelHeader(sha256="0" * 64, size_bytes=1 << 40)
    err = _upload_raw(client, too_big, b"")
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "at most" in err.details()

    # A torch.save-style zip whose pickle would write the marker when loaded, uploaded as a state_dict.
    with zipfile.ZipFile(tmp_path / "evil.pt", "w") as z:
        z.writestr("evil/data.pkl", pickle.dumps({"weight": _WritesAFile(marker)}, protocol=2))
        z.writestr("evil/version", "3\n")
    err = rpc_error(client.upload, tmp_path / "evil.pt", "evil", "lenet5")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "posix.system" in err.details()

    torch.save(models.build("lenet5", 4, 1).state_dict(), tmp_path / "sd.pt")
    err = rpc_error(client.upload, tmp_path / "sd.pt")  # no architecture
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "architecture" in err.details()

    assert not marker.exists()
    assert not list((server[1] / "tmp").glob("blob-*")), "a refused upload left a temporary file"
    assert _health(server[0]) == health_pb2.HealthCheckResponse.SERVING


def test_bad_requests_get_precise_codes(client: Client, teacher_model: pb.Model, data_root: Path, tmp_path: Path, server) -> None:
    code = grpc.StatusCode
    assert rpc_error(client.get_job, "j-nope").code() == code.NOT_FOUND
    assert rpc_error(client.report, "j-nope").code() == code.NOT_FOUND
    assert rpc_error(client.stub.GetModel, pb.GetModelRequest(model_id="m-nope")).code() == code.NOT_FOUND
    assert rpc_error(client.download, "j-nope", "student.onnx", tmp_path).code() == code.NOT_FOUND

    def create(spec: pb.JobSpec) -> grpc.RpcError:
        return rpc_error(client.create_job, spec)

    spec = tiny_spec(teacher_model.id)
    spec.student.architecture = "resnet9000"
    err = create(spec)
    assert err.code() == code.INVALID_ARGUMENT and "student.architecture" in err.details()

    spec = tiny_spec(teacher_model.id)
    spec.ClearField("dataset")
    assert create(spec).code() == code.INVALID_ARGUMENT

    spec = tiny_spec(teacher_model.id)
    spec.training.learning_rate = -1
    err = create(spec)
    assert err.code() == code.INVALID_ARGUMENT and "learning_rate" in err.details()

    assert create(tiny_spec("m-unknown")).code() == code.NOT_FOUND

    for root in ("../../etc", "/etc"):
        spec = tiny_spec(teacher_model.id)
        spec.dataset.torchvision.name, spec.dataset.torchvision.root = "MNIST", root
        err = create(spec)
        assert err.code() == code.INVALID_ARGUMENT and "outside the server's data roots" in err.details()

    os.symlink("/etc", data_root / "escape")
    spec = tiny_spec(teacher_model.id)
    spec.dataset.image_folder.train_dir, spec.dataset.image_folder.val_dir = "escape", "escape"
    assert create(spec).code() == code.INVALID_ARGUMENT

    # Data-free specs: no losses, no epochs, and a shape when there is no dataset to take it from.
    spec = data_free_spec(teacher_model.id)
    spec.losses.add(kd=pb.KnowledgeDistillation())
    err = create(spec)
    assert err.code() == code.INVALID_ARGUMENT and "losses must be empty" in err.details()
    spec = data_free_spec(teacher_model.id)
    spec.training.epochs = 3
    err = create(spec)
    assert err.code() == code.INVALID_ARGUMENT and "training.epochs" in err.details()
    spec = data_free_spec(teacher_model.id)
    spec.data_free.ClearField("input_shape")
    err = create(spec)
    assert err.code() == code.INVALID_ARGUMENT and "input_shape is required" in err.details()
    spec = data_free_spec(teacher_model.id)
    spec.data_free.batch_size = 1
    err = create(spec)
    assert err.code() == code.INVALID_ARGUMENT and "batch_size" in err.details()

    if not torch.cuda.is_available():
        spec = tiny_spec(teacher_model.id)
        spec.device = pb.DEVICE_CUDA
        assert create(spec).code() == code.FAILED_PRECONDITION

    assert _health(server[0]) == health_pb2.HealthCheckResponse.SERVING


def test_onnx_teacher_distils_with_kd_only(client: Client, tiny_teacher: torch.nn.Module, tmp_path: Path) -> None:
    from exporters import onnx_export

    path = onnx_export.export_onnx(tiny_teacher, torch.randn(2, 1, 28, 28), tmp_path / "teacher.onnx").path
    model = client.upload(path, name="black box")
    assert model.format == pb.MODEL_FORMAT_ONNX

    spec = tiny_spec(model.id)
    spec.losses.add(attention=pb.AttentionTransfer())
    err = rpc_error(client.create_job, spec)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "needs the teacher's layers" in err.details()

    spec = tiny_spec(model.id)
    spec.training.epochs = 1
    job = client.wait(client.create_job(spec).id)
    assert job.state == pb.JOB_STATE_SUCCEEDED, job.error.message
    teacher_variant = client.report(job.id).variants[0]
    assert (teacher_variant.model, teacher_variant.runtime) == ("teacher", "onnxruntime")
    assert teacher_variant.macs == count_macs(tiny_teacher, (1, 28, 28))  # counted from the graph
    assert teacher_variant.accuracy.top1 > 90


def test_feature_methods_run_through_the_api(client: Client, teacher_model: pb.Model) -> None:
    spec = tiny_spec(teacher_model.id)
    spec.training.epochs = 1
    spec.losses.add(fitnet=pb.FitNet(hint=pb.LayerPair(teacher="features.4", student="features.4"), hint_epochs=1))
    spec.losses.add(attention=pb.AttentionTransfer(beta=500))
    spec.losses.add(kd=pb.KnowledgeDistillation())
    spec.losses.add(dense_flow=pb.FlowOfSolutionProcedure(flow_epochs=1, adversarial_weight=1))  # the flow family, in one job
    spec.losses.add(ktsvd=pb.SingularVectorTransfer(flow_epochs=1))
    job = client.wait(client.create_job(spec).id)
    assert job.state == pb.JOB_STATE_SUCCEEDED, job.error.message
    method = client.report(job.id).training.method
    assert method.startswith("fitnet(hint=features.4, guided=features.4, hint_epochs=1) + attention(") and "kd(T=4" in method
    assert "dense_flow(pairs=" in method and "adversarial_weight=1" in method and "ktsvd(pairs=" in method

    spec.losses[1].attention.layers.add(teacher="no.such.layer", student="pool")
    job = client.wait(client.create_job(spec).id)
    assert job.state == pb.JOB_STATE_FAILED and "no module 'no.such.layer'" in job.error.message


def test_specialists_ship_one_ensemble_through_the_api(client: Client, teacher_model: pb.Model, tmp_path: Path) -> None:
    from service.students import with_weights

    spec = tiny_spec(teacher_model.id)
    spec.losses.add(specialists=pb.SpecialistNetworks(specialists=2, specialist_epochs=1))
    job = client.wait(client.create_job(spec).id)
    assert job.state == pb.JOB_STATE_SUCCEEDED, job.error.message  # exported as one graph, parity checked
    report = client.report(job.id)
    t = report.training
    groups = [set(s.classes) for s in t.specialists]
    assert t.method.startswith("specialists(T=4, alpha=0.9, specialists=2") and groups
    assert all(2 <= len(g) < 4 for g in groups) and len(set.union(*groups)) == sum(map(len, groups))
    assert t.HasField("generalist_top1") and report.variants[1].accuracy.top1 > 90
    assert "## Specialists" in client.download(job.id, "report.md", tmp_path / "report.md").read_text()
    assert "<h2>Specialists</h2>" in client.download(job.id, "report.html", tmp_path / "report.html").read_text()

    # student.pt rebuilds the ensemble (what RetryJob loads): the same logits as the shipped ONNX graph.
    saved = torch.load(client.download(job.id, "student.pt", tmp_path / "student.pt"), weights_only=True)
    rebuilt = with_weights(models.build("lenet5_half", 4, 1), saved).eval()
    session = ort.InferenceSession(str(client.download(job.id, "student.onnx", tmp_path / "student.onnx")))
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        assert np.allclose(session.run(None, {"input": x.numpy()})[0], rebuilt(x).numpy(), atol=1e-4)

    spec.search.parameters.add(name="training.learning_rate", low=0.01, high=0.1)
    err = rpc_error(client.create_job, spec)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "leave specialists out of the search" in err.details()


def data_free_spec(teacher_id: str) -> pb.JobSpec:
    """A data-free job of a few seconds: no dataset, a narrow generator, 20 iterations."""
    return pb.JobSpec(
        teacher_model_id=teacher_id,
        student=pb.StudentSpec(architecture="lenet5_half"),
        data_free=pb.DataFreeSpec(
            input_shape=pb.InputShape(channels=1, height=28, width=28),
            iterations=20,
            student_steps=2,
            batch_size=32,
            generator_width=8,
        ),
        benchmark=pb.BenchmarkSpec(batch_sizes=[1], warmup_runs=2, min_runs=5, min_seconds=0.05),
        device=pb.DEVICE_CPU,
    )


def learning_data_free_spec(teacher_id: str) -> pb.JobSpec:
    """A data-free job long enough for the student to learn the tiny teacher (about 15 s): without labels,
    a student that has not learnt it fails its job (test_a_collapsed_data_free_job_fails_and_keeps_its_artifacts)."""
    spec = data_free_spec(teacher_id)
    spec.data_free.MergeFrom(pb.DataFreeSpec(iterations=150, student_steps=3, batch_size=64, generator_width=16,
                                             student_learning_rate=0.02))
    return spec


@pytest.mark.slow
def test_data_free_job_without_data(client: Client, teacher_model: pb.Model, tmp_path: Path) -> None:
    job = client.wait(client.create_job(learning_data_free_spec(teacher_model.id)).id)
    assert job.state == pb.JOB_STATE_SUCCEEDED, job.error.message
    assert {a.name for a in job.artifacts} == {
        "student.onnx", "student.int8.onnx", "student.int8-dynamic.onnx", "student.fp16.onnx", "student.pt",
        "bundle.zip", "report.json", "report.md", "report.html", "samples.png", "generator.pt",
    }
    report = client.report(job.id)
    # Nothing labelled to score on: no accuracy anywhere, and the report says so.
    assert not any(v.HasField("accuracy") for v in report.variants)
    assert "no labelled data" in report.summary
    # INT8 calibrated on generator samples; with nothing labelled it cannot be judged, so it is not recommended.
    int8 = next(v for v in report.variants if v.precision == "int8 static")
    assert not int8.recommended and "no labelled data" in int8.note
    d = report.data_free
    assert (d.method, d.iterations, d.student_steps, d.replay_steps, d.batch_size) == ("dfad", 150, 3, 10, 64)
    report_md = client.download(job.id, "report.md", tmp_path / "report.md").read_text()
    assert "3 student steps on fresh images and 10 on replayed ones" in report_md
    assert len(d.class_histogram) == 4 and sum(d.class_histogram) == d.generated_samples > 0
    assert 0 <= d.agreement_on_generated <= 100
    assert report.training.steps == 150 and report.training.train_samples == 0 and report.training.val_samples == 0
    assert report.export.parity_max_abs_diff <= 1e-4 and report.export.parity_samples > 0

    with Image.open(client.download(job.id, "samples.png", tmp_path)) as grid:
        assert grid.size == (8 * 28, 4 * 28)  # 8 samples per class, one row per class
    markdown = client.download(job.id, "report.md", tmp_path).read_text()
    assert "## Data-free: dfad" in markdown and "nothing to evaluate" in markdown
    saved = torch.load(client.download(job.id, "generator.pt", tmp_path), weights_only=True)
    assert datafree.Generator.from_checkpoint(saved).sample(3).shape == (3, 1, 28, 28)


class OneClass(torch.nn.Module):
    """A teacher that sees one class in everything: no generator can cover the others."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor([8.0, 0.0, 0.0, 0.0]).expand(x.shape[0], 4) + 0 * x.mean()


def test_a_collapsed_data_free_job_fails_and_keeps_its_artifacts(client: Client, tmp_path: Path) -> None:
    torch.jit.save(torch.jit.script(OneClass()), tmp_path / "one_class.ts")
    job = client.wait(client.create_job(data_free_spec(client.upload(tmp_path / "one_class.ts").id)).id)
    assert job.state == pb.JOB_STATE_FAILED and job.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert "the generator covers 1 of 4 classes" in job.error.message and "kept for inspection" in job.error.message
    assert {"student.pt", "student.onnx", "report.json", "samples.png", "generator.pt"} <= {a.name for a in job.artifacts}
    report = json_format.Parse(client.download(job.id, "report.json", tmp_path).read_text(), pb.Report())
    assert not any(v.recommended for v in report.variants if v.model == "student")
    assert report.summary.startswith("no student variant is recommended")
    # What the coverage watch saw and did is in the report, and was an event of the job as it happened.
    d = report.data_free
    assert "3 of 4 classes rarely or never" in d.interventions[0] and "class-conditional targets on" in d.interventions[0]
    assert "balance weight raised to 2x" in d.interventions[1]
    assert d.recipe.startswith("batch 32 (set in the spec); class coverage judged every 10 iterations") and d.logit_bound == 30
    told = [e.message for e in client.watch(job.id) if e.message.startswith("iteration ")]
    assert told == list(d.interventions)
    markdown = client.download(job.id, "report.md", tmp_path).read_text()
    assert "When classes vanished from the generator's images during training:" in markdown


def test_auto_picks_bn_prior_for_a_torchscript_teacher_with_batchnorm(client: Client, tmp_path: Path) -> None:
    torch.jit.save(torch.jit.script(train_tiny_teacher("resnet8_cifar")), tmp_path / "bn.ts")
    spec = data_free_spec(client.upload(tmp_path / "bn.ts").id)
    spec.dataset.generated.CopyFrom(pb.GeneratedDataset(**TINY_DATA))  # scores the student; 20 iterations teach it little
    job = client.wait(client.create_job(spec).id)
    # So little that the student may be judged near chance (FAILED_PRECONDITION): the report is kept either way.
    assert job.state == pb.JOB_STATE_SUCCEEDED or job.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0], job.error.message
    d = json_format.Parse(client.download(job.id, "report.json", tmp_path).read_text(), pb.Report()).data_free
    assert d.method == "bn_prior" and d.batchnorm.startswith("9 batch-norm ops in the TorchScript teacher"), d.batchnorm
    assert "generator warmed up for 20 steps" in d.recipe


def test_data_free_job_evaluates_on_validation_data_only(client: Client, teacher_model: pb.Model) -> None:
    spec = data_free_spec(teacher_model.id)
    spec.dataset.generated.CopyFrom(pb.GeneratedDataset(**TINY_DATA))
    job = client.wait(client.create_job(spec).id)
    assert job.state == pb.JOB_STATE_SUCCEEDED, job.error.message
    report = client.report(job.id)
    teacher, student = report.variants[:2]
    assert teacher.accuracy.samples == student.accuracy.samples == TINY_DATA["val_size"]
    assert teacher.accuracy.top1 > 90
    assert report.training.train_samples == 0 and report.training.val_samples == TINY_DATA["val_size"]

    spec.data_free.input_shape.channels = 3  # disagrees with the dataset's images
    job = client.wait(client.create_job(spec).id)
    assert job.state == pb.JOB_STATE_FAILED and "differs from the dataset" in job.error.message


def test_benchmark_only_compares_a_model_with_its_own_onnx(
    client: Client, teacher_model: pb.Model, tiny_teacher: torch.nn.Module, tmp_path: Path
) -> None:
    from exporters import onnx_export

    path = onnx_export.export_onnx(tiny_teacher, torch.randn(2, 1, 28, 28), tmp_path / "teacher.onnx").path
    onnx_model = client.upload(path, name="the teacher, as ONNX")
    spec = pb.JobSpec(
        teacher_model_id=teacher_model.id,
        benchmark_only=pb.BenchmarkOnlySpec(student_model_id=onnx_model.id),
        dataset=pb.DatasetSpec(generated=pb.GeneratedDataset(**TINY_DATA)),
        benchmark=pb.BenchmarkSpec(batch_sizes=[1, 4], warmup_runs=2, min_runs=5, min_seconds=0.05),
        device=pb.DEVICE_CPU,
    )
    job = client.wait(client.create_job(spec).id)
    assert job.state == pb.JOB_STATE_SUCCEEDED, job.error.message
    assert {a.name for a in job.artifacts} == {"report.json", "report.md", "report.html"}  # nothing was made
    report = client.report(job.id)
    assert report.kind == pb.JOB_KIND_BENCHMARK_ONLY and not report.HasField("training")
    teacher, student = report.variants[:2]
    assert [v.name for v in report.variants] == [
        "teacher / pytorch", "student / onnxruntime", "teacher / onnxruntime", "teacher / openvino"
    ]
    # The same weights in two runtimes: the same answers, the same parameter count.
    assert student.accuracy.agreement_with_teacher >= 99.5 and abs(student.top1_delta_vs_teacher) <= 0.5
    assert student.parameters == teacher.parameters and student.file_size_bytes == onnx_model.size_bytes
    assert [lat.batch_size for lat in student.latency] == [1, 4] and report.per_class
    assert "Benchmark only" in client.download(job.id, "report.md", tmp_path).read_text()


def test_benchmark_only_without_data_times_random_inputs(client: Client, teacher_model: pb.Model, tmp_path: Path) -> None:
    student = torch.jit.script(models.build("lenet5_half", 4, 1).eval())
    torch.jit.save(student, tmp_path / "student.ts")
    uploaded = client.upload(tmp_path / "student.ts", name="a student made elsewhere")
    spec = pb.JobSpec(
        teacher_model_id=teacher_model.id,
        benchmark_only=pb.BenchmarkOnlySpec(student_model_id="m-missing", input_shape=pb.InputShape(channels=1, height=28, width=28)),
        benchmark=pb.BenchmarkSpec(batch_sizes=[2], warmup_runs=1, min_runs=3, min_seconds=0.01),
        device=pb.DEVICE_CPU,
    )
    assert rpc_error(client.create_job, spec).code() == grpc.StatusCode.NOT_FOUND
    spec.benchmark_only.student_model_id = uploaded.id
    job = client.wait(client.create_job(spec).id)
    assert job.state == pb.JOB_STATE_SUCCEEDED, job.error.message
    report = client.report(job.id)
    assert [v.name for v in report.variants] == [
        "teacher / pytorch", "student / pytorch", "student / onnxruntime", "student / openvino",
        "teacher / onnxruntime", "teacher / openvino",
    ]
    assert not any(v.HasField("accuracy") for v in report.variants) and not report.per_class
    assert report.summary.endswith("accuracy not measured (no labelled data)")
    assert report.student.parameters < report.teacher.parameters
    assert "student.onnx" in {a.name for a in job.artifacts}


def test_bundle_predicts_without_torch(finished_job, client: Client, tmp_path: Path) -> None:
    """The device team's side: unzip, a Python with onnxruntime, numpy and Pillow only, predict.py on image files."""
    job, _ = finished_job
    with zipfile.ZipFile(client.download(job.id, "bundle.zip", tmp_path)) as bundle:
        assert {"student.onnx", "student.int8.onnx", "MODEL_CARD.md", "labels.txt", "preprocess.json", "predict.py"} <= set(
            bundle.namelist()
        )
        bundle.extractall(tmp_path / "bundle")
    card = (tmp_path / "bundle" / "MODEL_CARD.md").read_text()
    assert "| `student.onnx` | fp32 | onnxruntime (CPUExecutionProvider) |" in card
    assert "| `student.onnx` | fp32 | openvino (CPU) |" in card  # the same file, measured in each runtime

    # 100 validation images as PNG files, and the service's own student on the same images.
    _, val = data.generated_splits(**TINY_DATA)
    paths = []
    for i in range(100):
        paths.append(tmp_path / f"img{i:03d}.png")
        Image.fromarray(val.images[i, 0].numpy(), mode="L").save(paths[-1])
    saved = torch.load(client.download(job.id, "student.pt", tmp_path), weights_only=True)
    model = models.build(saved["architecture"], saved["num_classes"], saved["input_shape"][0])
    model.load_state_dict(saved["state_dict"])
    with torch.inference_mode():
        expected = model.eval()(data.Normalization(saved["mean"], saved["std"]).apply(val.images[:100])).argmax(1)

    python = _python_without_torch(tmp_path / "env")
    out = subprocess.run(
        [python, str(tmp_path / "bundle" / "predict.py"), *map(str, paths)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    predicted = [line.split("\t")[1].rsplit(" ", 1)[0] for line in out.stdout.splitlines()]
    assert predicted == [val.classes[i] for i in expected.tolist()]


def _python_without_torch(root: Path) -> str:
    """A fresh virtual environment that sees numpy, onnxruntime and Pillow (linked from ours) and nothing else."""
    import numpy
    import onnxruntime
    import PIL

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True)
    deps = root / "deps"
    deps.mkdir()
    for module in (numpy, onnxruntime, PIL):
        package = Path(module.__file__).parent
        for name in (package.name, f"{package.name}.libs", "pillow.libs" if module is PIL else ""):
            if name and (package.parent / name).exists() and not (deps / name).exists():
                (deps / name).symlink_to(package.parent / name)
    site = next((root / "venv" / "lib").glob("python*/site-packages"))
    (site / "deps.pth").write_text(str(deps) + "\n")
    python = str(root / "venv" / "bin" / "python")
    probe = subprocess.run([python, "-c", "import torch"], capture_output=True, text=True)
    assert probe.returncode != 0 and "No module named 'torch'" in probe.stderr
    return python


def test_export_input_size_resizes_what_the_student_is_measured_and_shipped_at(
    client: Client, teacher_model: pb.Model, tmp_path: Path
) -> None:
    spec = tiny_spec(teacher_model.id)
    spec.export.input_size.height, spec.export.input_size.width = 36, 32  # trained at 28x28
    spec.export.fp16 = False
    job = client.wait(client.create_job(spec).id)
    assert job.state == pb.JOB_STATE_SUCCEEDED, job.error.message
    report = client.report(job.id)
    assert list(report.export.input_shape) == list(report.student.input_shape) == [1, 36, 32]
    assert list(report.teacher.input_shape) == [1, 28, 28]
    session = ort.InferenceSession(str(client.download(job.id, "student.onnx", tmp_path)))
    assert session.get_inputs()[0].shape[1:] == [1, 36, 32]
    student = next(v for v in report.variants if v.name == "student / onnxruntime")
    assert student.accuracy.samples == TINY_DATA["val_size"] and student.accuracy.top1 > 50
    assert json.loads(session.get_modelmeta().custom_metadata_map["distillery.preprocess"])["height"] == 36

    spec.export.input_size.height = spec.export.input_size.width = 8  # LeNet's 5x5 convs need more than 8 px
    job = client.wait(client.create_job(spec).id)
    assert job.state == pb.JOB_STATE_FAILED
    assert job.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "cannot take 8x8 inputs (export.input_size)" in job.error.message
