"""Search (issue 24): Optuna TPE over a job's parameters, scored on held-out training data, resumable."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
import torch

from distill import data, engine, search
from distill.losses import MethodConfig
from distill.trainer import TrainConfig
from protos.distillery.v1 import distillery_pb2 as pb
from service.client import Client
from service.server import spawn_server
from tests.conftest import TINY_DATA, rpc_error, tiny_spec
from tests.test_reliability import wait_for_message, wait_gone, worker_pid

SPACE = (search.Parameter("kd.temperature", 1.0, 8.0, log=True), search.Parameter("training.learning_rate", 0.005, 0.1, log=True))


def tiny_job(teacher: torch.nn.Module) -> engine.Job:
    splits = data.Splits(*data.generated_splits(**TINY_DATA))
    splits.normalization = data.Normalization.of(splits.train)
    return engine.Job(teacher=teacher, student="lenet5_half", data=splits, methods=(MethodConfig("kd"),),
                      training=TrainConfig(epochs=1, batch_size=64), normalization=splits.normalization)


def test_trials_are_scored_on_held_out_training_data_and_a_stopped_search_goes_on(
    tiny_teacher: torch.nn.Module, tmp_path: Path
) -> None:
    job = tiny_job(tiny_teacher)
    heard: list[search.Trial] = []
    first = search.run(job, search.SearchConfig(SPACE, trials=2, held_out_fraction=0.25), tmp_path,
                       on_trial=lambda trial, best: heard.append(trial))
    assert [t.number for t in heard] == [0, 1] and all(t.state == "complete" for t in heard)
    # Held out: a quarter of the 800 training images, never the validation split; the rest trained on.
    assert (first.held_out_samples, first.train_samples) == (200, 600)
    assert first.best.held_out_top1 == max(t.held_out_top1 for t in first.trials)
    assert all(1.0 <= t.params["kd.temperature"] <= 8.0 for t in first.trials)

    # The same search asked for 3 trials again (a restart): the 2 finished ones are kept, one more runs.
    heard.clear()
    resumed = search.run(job, search.SearchConfig(SPACE, trials=3, held_out_fraction=0.25), tmp_path,
                         on_trial=lambda trial, best: heard.append(trial))
    assert [t.number for t in heard] == [2] and [t.number for t in resumed.trials] == [0, 1, 2]
    assert [t.params for t in resumed.trials[:2]] == [t.params for t in first.trials]
    assert resumed.best.held_out_top1 == max(t.held_out_top1 for t in resumed.trials)


def test_a_trial_sets_the_values_where_they_belong_and_unknown_names_are_refused(tiny_teacher: torch.nn.Module) -> None:
    job = tiny_job(tiny_teacher)
    trial = search.with_values(job, {"kd.temperature": 2.5, "training.learning_rate": 0.02})
    assert trial.methods[0].params["temperature"] == 2.5 and trial.training.learning_rate == 0.02
    assert job.methods[0].params == {} and job.training.learning_rate is None  # the job itself is untouched
    for parameter, words in ((search.Parameter("dkd.beta", 1, 8), "no 'dkd' loss term"),
                             (search.Parameter("kd.tau", 1, 8), "kd has no parameter 'tau'"),
                             (search.Parameter("kd.alpha", 0.5, 2.0), "leaves its bounds")):
        with pytest.raises(search.SearchError, match=words):
            search.check(job.methods, (parameter,))
    with pytest.raises(search.SearchError, match="low > 0 on a log scale"):
        search.SearchConfig((search.Parameter("kd.alpha", 0.0, 1.0, log=True),))


@pytest.mark.slow
def test_a_search_job_survives_a_restart_and_trains_the_chosen_values_on_the_whole_split(
    tmp_path: Path, teacher_file: Path
) -> None:
    data_dir = tmp_path / "data"
    process, address = spawn_server(data_dir)
    try:
        with Client(address) as client:
            teacher = client.upload(teacher_file, architecture="lenet5")
            spec = tiny_spec(teacher.id)
            spec.training.epochs = 1
            spec.export.MergeFrom(pb.ExportSpec(int8=False, fp16=False, exporter=pb.ONNX_EXPORTER_TORCHSCRIPT))
            spec.benchmark.batch_sizes[:] = [1]
            spec.search.MergeFrom(pb.SearchSpec(trials=3, held_out_fraction=0.25, parameters=[
                pb.SearchParameter(name="kd.temperature", low=1, high=8, log=True),
                pb.SearchParameter(name="training.learning_rate", low=0.005, high=0.1, log=True)]))
            spec.search.parameters.add(name="dkd.beta", low=1, high=8)
            error = rpc_error(client.create_job, spec)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "no 'dkd' loss term" in error.details()
            del spec.search.parameters[-1]
            job = client.create_job(spec)
            first = wait_for_message(client, job.id, "search trial 0 ")
            worker = worker_pid(data_dir, job.id)
        process.kill()  # mid-search: trial 0 finished, trial 1 running or about to
        process.wait()
        wait_gone(worker, 10)

        process, address = spawn_server(data_dir)
        with Client(address) as client:
            done = client.wait(job.id)
            assert done.state == pb.JOB_STATE_SUCCEEDED, done.error.message
            messages = [e.message for e in client.watch(job.id)]
            assert "requeued after a server restart" in messages
            assert [m for m in messages if m.startswith("search trial 0 ")] == [first.message]  # not run again
            report = client.report(job.id)
            s = report.search
            complete = [t for t in s.trials if t.state == "complete"]
            assert [t.number for t in complete][:1] == [0] and len(complete) == 3
            assert all(t.note.startswith("stopped by a restart") for t in s.trials if t.state == "failed")
            assert s.chosen_trial == max(complete, key=lambda t: t.held_out_top1).number
            assert (s.train_samples, s.held_out_samples) == (600, 200)  # trials: of the 800 training images
            # The chosen values then trained the shipped student on all 800; the validation split scored it once.
            chosen = next(t for t in complete if t.number == s.chosen_trial)
            assert report.training.train_samples == 800
            assert f"T={chosen.params['kd.temperature']:g}" in report.training.method
            assert report.variants[1].accuracy.samples == TINY_DATA["val_size"]
            markdown = client.download(job.id, "report.md", tmp_path / "report.md").read_text()
            assert "## Search" in markdown and "scored on the 200 held out" in markdown
    finally:
        process.kill()
        process.wait()
