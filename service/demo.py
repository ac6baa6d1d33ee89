"""``distillery demo``: the whole product once, through a real server.

Plays both parts: the user who trained a teacher (here: LeNet-5 on the
built-in shapes data, trained locally as any user script would), and the
pipeline that hands it to the service and collects the student.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

from distill import data, models, trainer
from protos.distillery.v1 import distillery_pb2 as pb
from service.client import Client, ProgressBar
from service.server import spawn_server, stop_server

TEACHER = "lenet5"
STUDENT = "lenet5_half"
GENERATED = {"num_classes": 10, "image_size": 28, "channels": 1, "train_size": 6000, "val_size": 1000, "seed": 0}


def train_teacher(path: Path) -> None:
    """The user's side: train a teacher and save its state_dict."""
    train, val = data.generated_splits(**GENERATED)
    splits = data.Splits(train, val)
    model = models.build(TEACHER, GENERATED["num_classes"], GENERATED["channels"])
    trainer.train_from_labels(model, splits, trainer.TrainConfig(epochs=8, batch_size=64, seed=1))
    torch.save(model.state_dict(), path)


def run_demo(output: Path) -> int:
    started = time.perf_counter()
    output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="distillery-demo-") as tmp:
        tmp_dir = Path(tmp)
        print("starting a server ...", file=sys.stderr)
        server, address = spawn_server(tmp_dir / "data")
        try:
            print(f"server at {address}; training a {TEACHER} teacher on the built-in shapes data ...", file=sys.stderr)
            teacher_path = tmp_dir / "teacher.pt"
            train_teacher(teacher_path)
            with Client(address) as client:
                model = client.upload(teacher_path, name="demo teacher", architecture=TEACHER)
                print(f"uploaded teacher {model.id}", file=sys.stderr)
                spec = pb.JobSpec(
                    teacher_model_id=model.id,
                    display_name="demo: lenet5 -> lenet5_half",
                    student=pb.StudentSpec(architecture=STUDENT),
                    dataset=pb.DatasetSpec(generated=pb.GeneratedDataset(**GENERATED)),
                    losses=[pb.LossTerm(kd=pb.KnowledgeDistillation(temperature=4.0, alpha=0.9))],
                    training=pb.TrainingSpec(epochs=10, batch_size=64),
                    device=pb.DEVICE_CPU,
                )
                job = client.create_job(spec, request_id=f"demo-{model.id}-{time.time_ns()}")
                print(f"job {job.id} queued", file=sys.stderr)
                job = client.wait(job.id, ProgressBar().update)
                if job.state != pb.JOB_STATE_SUCCEEDED:
                    print(f"job {job.id} ended {pb.JobState.Name(job.state)}: {job.error.message}", file=sys.stderr)
                    return 1
                paths = {a.name: client.download(job.id, a.name, output) for a in job.artifacts}
        finally:
            stop_server(server)
    report_md = paths["report.md"].read_text()
    print(report_md)
    print(f"demo finished in {time.perf_counter() - started:.0f} s; artifacts in {output.resolve()}", file=sys.stderr)
    print(paths["report.json"].resolve())
    return 0
