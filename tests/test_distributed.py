"""Training on 2 CPU processes (gloo, launched by torch.distributed's elastic agent, as torchrun launches)
takes the same steps as training on 1 process with the same global batch."""

from __future__ import annotations

import os
import re
import signal
import socket
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch

from distill import data, distributed, losses, methods, models
from distill.datafree import DataFreeConfig, Generator, distil_data_free
from distill.loop import Interrupted
from distill.trainer import TrainConfig, TrainResult, distil
from protos.distillery.v1 import distillery_pb2 as pb
from service.client import Client
from service.report import to_markdown
from service.server import spawn_server, stop_server
from tests.conftest import TINY_DATA, diverging_teacher, tiny_spec
from tests.test_reliability import long_spec, rank_pids, wait_for_step, wait_gone
from tests.test_service import data_free_spec

CONFIG = TrainConfig(epochs=2, batch_size=32, seed=3)


def _kd_run(stop_requested: Any = None, on_checkpoint: Any = None) -> tuple[TrainResult, torch.nn.Module]:
    """Every rank builds the same data, teacher and student; only the sharding differs."""
    torch.manual_seed(0)
    splits = data.Splits(*data.generated_splits(num_classes=4, train_size=300, val_size=10, seed=5))
    teacher = models.build("lenet5", 4, 1).eval()
    student = models.build("lenet5_half", 4, 1)
    loss = losses.WeightedLoss([(0.7, methods.KnowledgeDistillation()), (0.3, methods.CrossEntropy())])
    result = distil(student, teacher, loss, splits.train, splits.normalization, CONFIG,
                    stop_requested=stop_requested, on_checkpoint=on_checkpoint)
    return result, student


def _kd_rank() -> dict[str, Any]:
    distributed.init("cpu")
    torch.set_num_threads(1)
    result, student = _kd_run()
    return {"result": result, "state": student.state_dict()}


def _stop_rank() -> dict[str, Any]:
    """Only rank 1 is asked to stop (after its 3rd step); only rank 0 may write the checkpoint."""
    distributed.init("cpu")
    torch.set_num_threads(1)
    rank, polls, checkpoints = distributed.ranks().rank, [], []

    def asked() -> bool:
        polls.append(1)
        return rank == 1 and len(polls) >= 3

    try:
        _kd_run(stop_requested=asked, on_checkpoint=checkpoints.append if rank == 0 else None)
    except Interrupted:
        return {"stopped_after": len(polls), "checkpoint_steps": [c["step"] for c in checkpoints]}
    return {"stopped_after": None}


def _data_free_rank() -> dict[str, Any]:
    distributed.init("cpu")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    teacher = models.build("resnet8_cifar", 4, 3).eval()  # BatchNorm: the bn_prior method, hooks on every rank
    student = models.build("lenet5_half", 4, 3)
    config = DataFreeConfig(iterations=4, student_steps=2, batch_size=16, generator_width=8, checkpoint_interval_steps=1000)
    at_end: dict[str, torch.Tensor] = {}

    def snapshot(progress: Any) -> None:  # the last report comes before ranks copy rank 0's state
        if progress.step == config.iterations:
            at_end.update({name: p.detach().clone() for name, p in student.named_parameters()})

    result = distil_data_free(student, teacher, (3, 32, 32), config, on_progress=snapshot)
    return {"loss": result.final_loss, "world": result.world_size, "method": result.method, "student": at_end}


def _two_processes(entrypoint: Any) -> dict[int, Any]:
    return distributed.launch(distributed.Launch(processes_per_node=2, run_id=entrypoint.__name__), entrypoint)


@pytest.mark.slow
def test_two_processes_take_the_one_process_steps() -> None:
    alone, alone_student = _kd_run()
    ranks = _two_processes(_kd_rank)

    assert sorted(ranks) == [0, 1]
    for outcome in ranks.values():
        together = outcome["result"]
        assert together.world_size == 2 and alone.world_size == 1
        assert together.final_loss == pytest.approx(alone.final_loss, rel=1e-3)
        # The same samples, each as often: every sample once per epoch, between the two ranks.
        assert torch.equal(together.visits, alone.visits)
        assert torch.equal(alone.visits, torch.full((300,), CONFIG.epochs, dtype=torch.int32))
        for name, value in alone_student.state_dict().items():
            torch.testing.assert_close(outcome["state"][name], value, atol=2e-4, rtol=1e-3, msg=name)
    assert all(torch.equal(ranks[0]["state"][k], ranks[1]["state"][k]) for k in ranks[0]["state"])


def test_a_stop_asked_of_one_rank_stops_all_after_the_same_step() -> None:
    ranks = _two_processes(_stop_rank)
    assert ranks[0]["stopped_after"] == ranks[1]["stopped_after"] == 3
    assert ranks[0]["checkpoint_steps"] == [3]  # rank 0 wrote it; rank 1 had no callback to write with


def test_data_free_ranks_train_one_student() -> None:
    ranks = _two_processes(_data_free_rank)
    assert ranks[0]["world"] == 2 and ranks[0]["method"] == "bn_prior"
    assert ranks[0]["loss"] == ranks[1]["loss"] and torch.isfinite(torch.tensor(ranks[0]["loss"]))
    # Each rank trained on its own generated images; DDP kept the student's weights the same.
    assert ranks[0]["student"] and all(torch.equal(v, ranks[1]["student"][k]) for k, v in ranks[0]["student"].items())


def test_a_job_on_two_processes_through_the_service(client: Client, teacher_model: pb.Model) -> None:
    spec = tiny_spec(teacher_model.id)
    spec.export.int8 = spec.export.fp16 = False  # the training is what is tested
    spec.distributed.processes_per_node = 2
    events: list[pb.JobEvent] = []
    job = client.wait(client.create_job(spec).id, events.append)

    assert job.state == pb.JOB_STATE_SUCCEEDED, job.error.message
    report = client.report(job.id)
    assert report.training.processes == 2 and "on 2 cpu processes (torch.distributed)" in to_markdown(report)
    # Each sample once per epoch, between the two processes.
    assert report.training.samples_seen == report.training.epochs * report.training.train_samples
    assert report.variants[1].model == "student" and report.variants[1].accuracy.top1 > 80
    steps = [e.step for e in events if e.step]  # progress from one process only: steps never repeat
    assert steps == sorted(set(steps)) and steps[-1] == report.training.steps


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_meet_at_the_rendezvous_and_train_one_student(tmp_path: Path, teacher_file: Path) -> None:
    """Two servers stand in for two nodes (one process each): the same spec, submitted to both, trains one student."""
    servers = [spawn_server(tmp_path / f"node{i}") for i in range(2)]
    clients = [Client(address) for _, address in servers]
    try:
        endpoint = f"127.0.0.1:{_free_port()}"
        jobs = []
        for client in clients:
            spec = tiny_spec(client.upload(teacher_file, architecture="lenet5").id)
            spec.export.int8 = spec.export.fp16 = False  # two whole jobs on 2 cores: the training is what is tested
            spec.distributed.nodes, spec.distributed.rendezvous_endpoint = 2, endpoint
            jobs.append(client.create_job(spec).id)
        students = []
        for client, job_id in zip(clients, jobs):
            job = client.wait(job_id)
            assert job.state == pb.JOB_STATE_SUCCEEDED, job.error.message
            report = client.report(job_id)
            assert report.training.processes == 2
            assert report.training.samples_seen == report.training.epochs * report.training.train_samples
            path = client.download(job_id, "student.pt", tmp_path / f"{job_id}.pt")
            students.append(torch.load(path, weights_only=True)["state_dict"])
        for name, value in students[0].items():  # each node evaluated and shipped the same student
            assert torch.equal(value, students[1][name]), name
    finally:
        for client in clients:
            client.close()
        for process, _ in servers:
            stop_server(process)


@pytest.mark.slow
def test_a_failing_or_cancelled_process_ends_the_job_with_its_own_reason(
    client: Client, teacher_model: pb.Model, server: tuple[str, Path], tiny_teacher: torch.nn.Module, tmp_path: Path
) -> None:
    # Killed (what the OOM killer does): the job says which process and how.
    spec = long_spec(teacher_model.id)
    spec.distributed.processes_per_node = 2
    job = client.create_job(spec)
    wait_for_step(client, job.id, 1)
    os.kill(rank_pids(server[1], job.id, 2)[1], signal.SIGKILL)
    failed = client.wait(job.id)
    assert failed.state == pb.JOB_STATE_FAILED and failed.error.code == grpc.StatusCode.INTERNAL.value[0]
    assert "was killed by SIGKILL" in failed.error.message

    # Cancelled: the worker's process group holds its training processes; all of them end.
    job = client.create_job(spec)
    wait_for_step(client, job.id, 1)
    pids = rank_pids(server[1], job.id, 2)
    client.cancel(job.id)
    for pid in pids:
        wait_gone(pid, 5)

    # Diverged: every process sees the same mean loss; the job gets the engine's message and code.
    spec = tiny_spec(diverging_teacher(client, tiny_teacher, tmp_path).id)
    spec.distributed.processes_per_node = 2
    failed = client.wait(client.create_job(spec).id)
    assert failed.state == pb.JOB_STATE_FAILED and failed.error.code == grpc.StatusCode.ABORTED.value[0]
    assert re.fullmatch(r"training process \d: loss became nan at step 1; .*", failed.error.message)


@pytest.mark.slow
def test_a_data_free_job_on_two_processes_through_the_service(client: Client, teacher_model: pb.Model, tmp_path: Path) -> None:
    spec = data_free_spec(teacher_model.id)
    spec.distributed.processes_per_node = 2
    # Labelled validation data: 20 iterations teach the student little, and without labels that fails the job.
    spec.dataset.generated.CopyFrom(pb.GeneratedDataset(**TINY_DATA))
    job = client.wait(client.create_job(spec).id)

    assert job.state == pb.JOB_STATE_SUCCEEDED, job.error.message
    assert {"samples.png", "generator.pt", "student.int8.onnx"} <= {a.name for a in job.artifacts}
    report = client.report(job.id)
    assert report.training.processes == 2 and report.training.steps == 20 and report.training.samples_seen == 0
    assert report.data_free.method == "dfad" and sum(report.data_free.class_histogram) > 0
    # The worker took the generator the processes trained (it makes the calibration and parity inputs).
    saved = torch.load(client.download(job.id, "generator.pt", tmp_path), weights_only=True)
    assert Generator.from_checkpoint(saved).sample(3).shape == (3, 1, 28, 28)
