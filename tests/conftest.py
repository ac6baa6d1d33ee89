"""Shared fixtures: a real server process on a free port, a client, tiny teachers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch

from distill import data, models, trainer
from protos.distillery.v1 import distillery_pb2 as pb
from service.client import Client
from service.server import spawn_server, stop_server

# Tiny generated data: a few seconds per job on 2 cores.
TINY_DATA = {"num_classes": 4, "image_size": 28, "channels": 1, "train_size": 800, "val_size": 200, "seed": 3}


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """``distillery serve`` in a child process; yields (address, data_dir)."""
    data_dir = tmp_path_factory.mktemp("server")
    process, address = spawn_server(data_dir)
    yield address, data_dir
    stop_server(process)


@pytest.fixture(scope="session")
def client(server: tuple[str, Path]) -> Iterator[Client]:
    with Client(server[0]) as c:
        yield c


@pytest.fixture(scope="session")
def data_root(server: tuple[str, Path]) -> Path:
    return server[1] / "datasets"


def train_tiny_teacher(architecture: str = "lenet5", epochs: int = 3, **generated: int) -> torch.nn.Module:
    params = {**TINY_DATA, **generated}
    train, val = data.generated_splits(**params)
    splits = data.Splits(train, val)
    # The weights' initial values come from the global generator: seed it, or the teacher would depend on
    # which tests ran before the fixture was first asked for (the input-convention tests once failed that way).
    torch.manual_seed(0)
    model = models.build(architecture, params["num_classes"], params["channels"])
    trainer.train_from_labels(model, splits, trainer.TrainConfig(epochs=epochs, batch_size=32, seed=0))
    return model.eval()


@pytest.fixture(scope="session")
def tiny_teacher() -> torch.nn.Module:
    return train_tiny_teacher()


@pytest.fixture(scope="session")
def teacher_file(tmp_path_factory: pytest.TempPathFactory, tiny_teacher: torch.nn.Module) -> Path:
    path = tmp_path_factory.mktemp("teacher") / "lenet5.pt"
    torch.save(tiny_teacher.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def teacher_model(client: Client, teacher_file: Path) -> pb.Model:
    return client.upload(teacher_file, name="tiny teacher", architecture="lenet5")


class NaNOnTrainingBatches(torch.nn.Module):
    """A teacher that makes training diverge: finite on the 512-image batch its input convention is scored on
    (so the job gets as far as training), NaN on every training batch (smaller)."""

    def __init__(self, teacher: torch.nn.Module) -> None:
        super().__init__()
        self.teacher = teacher

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.teacher(x)
        return out * float("nan") if x.shape[0] < 512 else out


def diverging_teacher(client: Client, teacher: torch.nn.Module, folder: Path) -> pb.Model:
    torch.jit.save(torch.jit.script(NaNOnTrainingBatches(teacher).eval()), folder / "diverging.ts")
    return client.upload(folder / "diverging.ts")


def tiny_spec(teacher_id: str, **training: float) -> pb.JobSpec:
    """A job that finishes in seconds: tiny data, 4 epochs, a short benchmark.

    Fewer epochs leave some random inits of the 3-channel LeNet-5-half stuck
    below 90% (measured: 3 of 40 inits at 2 epochs, 0 of 40 at 4).
    """
    return pb.JobSpec(
        teacher_model_id=teacher_id,
        student=pb.StudentSpec(architecture="lenet5_half"),
        dataset=pb.DatasetSpec(generated=pb.GeneratedDataset(**TINY_DATA)),
        training=pb.TrainingSpec(epochs=4, batch_size=32, **training),
        benchmark=pb.BenchmarkSpec(batch_sizes=[1, 8], warmup_runs=2, min_runs=5, min_seconds=0.05),
        device=pb.DEVICE_CPU,
    )


def rpc_error(call, *args) -> grpc.RpcError:
    """The RpcError that ``call(*args)`` raises (fails the test when it raises none)."""
    with pytest.raises(grpc.RpcError) as info:
        result = call(*args)
        if hasattr(result, "__iter__") and not isinstance(result, (bytes, str)):
            list(result)  # streaming calls raise on iteration
    return info.value
