"""Students people deploy (issue 23): timm architectures, pretrained starts from safetensors or a state_dict."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
import safetensors.torch
import torch

from distill import loading, models
from distill.model_checks import ModelFileError
from protos.distillery.v1 import distillery_pb2 as pb
from service import specs
from service.client import Client
from service.store import Store
from tests.conftest import TINY_DATA, rpc_error, tiny_spec

TIMM_STUDENT = "mobilenetv4_conv_small"


def test_registry_names_win_and_any_timm_name_builds_offline() -> None:
    assert isinstance(models.build("resnet18", 10, 3), torch.nn.Module)  # torchvision's, as before timm
    assert type(models.build("resnet18", 10, 3)).__module__.startswith("torchvision")
    student = models.build(TIMM_STUDENT, 4, 1, 28).eval()
    assert student(torch.zeros(2, 1, 28, 28)).shape == (2, 4)
    fixed_size = models.build("efficientformerv2_s0", 4, 3, 32).eval()  # built for the job's input size
    assert fixed_size(torch.zeros(1, 3, 32, 32)).shape == (1, 4)
    shallow = models.build("shallow_cnn", 10, 3).eval()
    assert shallow(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    assert [m.out_channels for m in shallow.modules() if isinstance(m, torch.nn.Conv2d)] == [16, 16]
    assert [m.out_features for m in shallow.modules() if isinstance(m, torch.nn.Linear)] == [256, 10]
    # Names that would make timm fetch something are not model names.
    for name in ("hf-hub:timm/resnet18.a1_in1k", "resnet18.a1_in1k", "local-dir:/tmp/x", "no_such_net"):
        assert not models.is_known(name)
        with pytest.raises(models.UnknownArchitectureError, match="timm.list_models"):
            models.build(name, 10, 3)


def test_a_pretrained_start_loads_every_tensor_but_a_head_for_other_classes() -> None:
    torch.manual_seed(0)
    pretrained = models.build(TIMM_STUDENT, 7, 3, 28).state_dict()
    student = models.build(TIMM_STUDENT, 4, 1, 28)
    start = loading.start_from(student, pretrained)
    assert start.reinitialised == ["classifier.bias", "classifier.weight"]
    assert start.adapted == ["conv_stem.weight"]  # an RGB stem summed for one channel, as timm adapts it
    loaded = student.state_dict()
    assert start.tensors_loaded == len(loaded) - 3
    assert all(torch.equal(loaded[k], pretrained[k]) for k in loaded if k not in ("classifier.bias", "classifier.weight", "conv_stem.weight"))
    assert torch.allclose(loaded["conv_stem.weight"], pretrained["conv_stem.weight"].sum(1, keepdim=True))
    assert loaded["classifier.weight"].shape == (4, pretrained["classifier.weight"].shape[1])

    with pytest.raises(ModelFileError, match="missing"):  # strict: another architecture's weights
        loading.start_from(models.build("resnet8_cifar", 4, 3), pretrained)
    wrong_body = {**pretrained, "conv_head.weight": torch.zeros(3, 3, 1, 1)}
    with pytest.raises(ModelFileError, match="conv_head.weight is \\(3, 3, 1, 1\\) in the file"):
        loading.start_from(models.build(TIMM_STUDENT, 7, 3, 28), wrong_body)


@pytest.mark.slow
def test_a_timm_student_from_safetensors_weights_trains_and_ships(
    client: Client, teacher_model: pb.Model, tmp_path: Path
) -> None:
    torch.manual_seed(1)
    safetensors.torch.save_file(models.build(TIMM_STUDENT, 7, 3, 28).state_dict(), tmp_path / "start.safetensors")
    weights = client.upload(tmp_path / "start.safetensors", architecture=TIMM_STUDENT)
    assert weights.format == pb.MODEL_FORMAT_SAFETENSORS

    spec = tiny_spec(teacher_model.id)
    spec.training.epochs = 1
    spec.export.MergeFrom(pb.ExportSpec(int8=False, fp16=False))
    spec.benchmark.batch_sizes[:] = [1]
    spec.student.MergeFrom(pb.StudentSpec(architecture=TIMM_STUDENT, init_model_id=weights.id))
    job = client.wait(client.create_job(spec).id)
    assert job.state == pb.JOB_STATE_SUCCEEDED, job.error.message
    assert {"bundle.zip", "student.onnx", "student.pt"} <= {a.name for a in job.artifacts}
    report = client.report(job.id)
    start = report.training.pretrained
    assert (start.model_id, list(start.reinitialised), list(start.adapted)) == (
        weights.id, ["classifier.bias", "classifier.weight"], ["conv_stem.weight"])
    assert start.tensors_loaded > 200
    student_variant = next(v for v in report.variants if v.model == "student" and v.runtime == "onnxruntime")
    assert student_variant.accuracy.samples == TINY_DATA["val_size"]
    markdown = client.download(job.id, "report.md", tmp_path / "report.md").read_text()
    assert f"Student start: pretrained weights {weights.id}" in markdown

    # The weights must be for the student's architecture, and exist.
    teacher_weights = client.upload(_state_dict_of(models.build("lenet5", 4, 1), tmp_path), architecture="lenet5")
    for init, code, words in ((teacher_weights.id, grpc.StatusCode.INVALID_ARGUMENT, "holds weights for 'lenet5'"),
                              ("m-missing", grpc.StatusCode.NOT_FOUND, "not found")):
        spec.student.init_model_id = init
        error = rpc_error(client.create_job, spec)
        assert error.code() == code and words in error.details()
    # Weights uploaded under the student's name that do not fit it fail the job as a bad file, naming the tensors.
    misnamed = client.upload(tmp_path / "sd.pt", name="lenet5 weights, misnamed", architecture=TIMM_STUDENT)
    spec.student.init_model_id = misnamed.id
    failed = client.wait(client.create_job(spec).id)
    assert failed.state == pb.JOB_STATE_FAILED and failed.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert f"student.init_model_id {misnamed.id}: the weights do not fit" in failed.error.message


def _state_dict_of(model: torch.nn.Module, folder: Path) -> Path:
    torch.save(model.state_dict(), folder / "sd.pt")
    return folder / "sd.pt"


@pytest.mark.slow
def test_student_auto_times_its_candidates_and_trains_the_largest_that_fits(
    client: Client, teacher_model: pb.Model, server: tuple[str, Path], tmp_path: Path
) -> None:
    candidates = ["lenet5_half", "shallow_cnn", "lenet5"]
    spec = tiny_spec(teacher_model.id)
    spec.training.epochs = 1
    spec.export.MergeFrom(pb.ExportSpec(int8=False, fp16=False))
    spec.benchmark.batch_sizes[:] = [1]
    # A budget every candidate meets: the most parameters wins, whatever this machine's speed today.
    spec.student.Clear()
    spec.student.auto.MergeFrom(pb.AutoStudent(max_latency_ms=1e5, candidates=candidates))
    job = client.wait(client.create_job(spec).id)
    assert job.state == pb.JOB_STATE_SUCCEEDED, job.error.message
    report = client.report(job.id)
    pick = report.student_pick
    assert [c.architecture for c in pick.candidates] == candidates
    assert all(c.fits and c.p50_ms > 0 and c.parameters > 0 and c.macs > 0 for c in pick.candidates), pick
    largest = max(pick.candidates, key=lambda c: c.parameters).architecture
    assert largest == "shallow_cnn" and pick.chosen == largest and report.student.architecture == largest
    assert pick.budget == "p50 <= 100000 ms at batch 1 in onnxruntime" and largest in pick.reason
    markdown = client.download(job.id, "report.md", tmp_path / "report.md").read_text()
    assert f"## Student picked for {pick.budget}" in markdown and "| shallow_cnn |" in markdown
    # The pick is stored with the job: a resumed run or a retry trains shallow_cnn without timing again.
    store = Store(server[1] / "distillery.db")
    stored = specs.plan_from_json(store.get_plan(job.id))
    store.close()
    assert stored.student_architecture == "shallow_cnn" and "shallow_cnn" in stored.student_pick

    # A budget nothing meets (a nanosecond) fails the job, naming the fastest candidate; nothing is trained.
    spec.student.auto.max_latency_ms = 1e-6
    failed = client.wait(client.create_job(spec).id)
    assert failed.state == pb.JOB_STATE_FAILED
    assert failed.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert "no student candidate fits p50 <= 1e-06 ms at batch 1 in onnxruntime: the fastest" in failed.error.message
    assert not failed.artifacts

    # The spec is checked before anything runs.
    for auto, words in ((pb.AutoStudent(candidates=["lenet5"]), "needs a budget"),
                        (pb.AutoStudent(min_speedup=2, runtime="tensorrt"), "runtime must be one of"),
                        (pb.AutoStudent(min_speedup=2, candidates=["hf-hub:timm/x"]), "unknown architecture")):
        spec.student.auto.CopyFrom(auto)
        error = rpc_error(client.create_job, spec)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and words in error.details(), error.details()
    spec.student.architecture = "lenet5"
    assert "not both" in rpc_error(client.create_job, spec).details()


@pytest.mark.slow
def test_your_own_torchscript_student_is_trained_in_place_and_shipped(
    client: Client, teacher_model: pb.Model, tiny_teacher: torch.nn.Module, tmp_path: Path
) -> None:
    torch.manual_seed(2)
    mine = models.build("cnn_bn_8", TINY_DATA["num_classes"], TINY_DATA["channels"]).eval()
    torch.jit.save(torch.jit.script(mine), tmp_path / "mine.ts")
    uploaded = client.upload(tmp_path / "mine.ts")
    torch.jit.save(torch.jit.script(tiny_teacher), tmp_path / "teacher.ts")  # its layers are tapped the same way
    spec = tiny_spec(client.upload(tmp_path / "teacher.ts").id)
    spec.export.MergeFrom(pb.ExportSpec(int8=False, fp16=False))
    spec.benchmark.batch_sizes[:] = [1]
    spec.student.Clear()
    spec.student.model_id = uploaded.id
    spec.losses.add().kd.SetInParent()
    spec.losses.add().attention.SetInParent()  # a feature method: the module's layers are tapped through its graph
    job = client.wait(client.create_job(spec).id)
    assert job.state == pb.JOB_STATE_SUCCEEDED, job.error.message
    assert {"bundle.zip", "student.onnx", "student.pt"} <= {a.name for a in job.artifacts}
    report = client.report(job.id)
    assert report.student.architecture == f"TorchScript {uploaded.id}"
    assert "attention(" in report.training.method and "kd(" in report.training.method
    student = next(v for v in report.variants if v.model == "student" and v.runtime == "onnxruntime")
    assert student.accuracy.top1 > 60  # 4 classes: it learnt (chance is 25%)
    trained = torch.load(client.download(job.id, "student.pt", tmp_path / "student.pt"), weights_only=True)
    assert trained["student_model_id"] == uploaded.id and trained["architecture"] == ""
    start = mine.state_dict()
    assert any(not torch.equal(start[k], trained["state_dict"][k]) for k in start)  # trained, not just timed

    spec.student.model_id = teacher_model.id  # a state_dict: weights, not a module
    error = rpc_error(client.create_job, spec)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "a student to train is a TorchScript module" in error.details()
