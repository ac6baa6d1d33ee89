"""Search (issue 24): Optuna TPE over a job's parameters, scored on held-out training data, resumable."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import grpc
import optuna
import pytest
import torch
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

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
                       on_trial=lambda trial, best, ended: heard.append(trial))
    assert [t.number for t in heard] == [0, 1] and all(t.state == "complete" for t in heard)
    # Held out: a quarter of the 800 training images, never the validation split; the rest trained on.
    assert (first.held_out_samples, first.train_samples) == (200, 600)
    assert first.best.held_out_top1 == max(t.held_out_top1 for t in first.trials)
    assert all(1.0 <= t.params["kd.temperature"] <= 8.0 for t in first.trials)

    # The same search asked for 3 trials again (a restart): the 2 finished ones are kept, one more runs.
    heard.clear()
    resumed = search.run(job, search.SearchConfig(SPACE, trials=3, held_out_fraction=0.25), tmp_path,
                         on_trial=lambda trial, best, ended: heard.append(trial))
    assert [t.number for t in heard] == [2] and [t.number for t in resumed.trials] == [0, 1, 2]
    assert [t.params for t in resumed.trials[:2]] == [t.params for t in first.trials]
    assert resumed.best.held_out_top1 == max(t.held_out_top1 for t in resumed.trials)


def test_a_trial_sets_the_values_where_they_belong_and_unknown_names_are_refused(tiny_teacher: torch.nn.Module) -> None:
    job = tiny_job(tiny_teacher)
    chosen = search.Trial(0, {"kd.temperature": 2.5, "training.learning_rate": 0.02}, None, 0.0, "complete")
    trial = search.with_values(job, chosen)
    assert trial.methods[0].params["temperature"] == 2.5 and trial.training.learning_rate == 0.02
    assert job.methods[0].params == {} and job.training.learning_rate is None  # the job itself is untouched
    # A trial that chose a student and a method trains those, with the values of the terms it has.
    chosen = search.Trial(1, {"dkd.beta": 4.0}, None, 0.0, "complete", choices={"student": "shallow_cnn", "method": "attention+dkd"})
    trial = search.with_values(job, chosen)
    assert trial.student == "shallow_cnn" and [(m.method, m.params) for m in trial.methods] == [("attention", {}), ("dkd", {"beta": 4.0})]
    for config, words in ((search.SearchConfig((search.Parameter("dkd.beta", 1, 8),)), "no trial has a 'dkd' loss term"),
                          (search.SearchConfig((search.Parameter("kd.tau", 1, 8),)), "kd has no parameter 'tau'"),
                          (search.SearchConfig((search.Parameter("kd.alpha", 0.5, 2.0),)), "leaves its bounds"),
                          (search.SearchConfig(students=("lenet5_half", "hf-hub:x/y")), "unknown architecture")):
        with pytest.raises(search.SearchError, match=words):
            search.check(job.methods, config)
    search.check(job.methods, search.SearchConfig((search.Parameter("dkd.beta", 1, 8),), methods=("kd", "dkd")))
    with pytest.raises(search.SearchError, match="low > 0 on a log scale"):
        search.SearchConfig((search.Parameter("kd.alpha", 0.0, 1.0, log=True),))
    with pytest.raises(ValueError, match="unknown method 'kdd'"):
        search.SearchConfig(methods=("kd", "kdd"))
    with pytest.raises(search.SearchError, match="two or more students or methods"):
        search.SearchConfig(students=("lenet5_half",))


def test_trials_run_in_parallel_within_the_budget_and_are_heard_in_the_callers_thread(
    tiny_teacher: torch.nn.Module, tmp_path: Path
) -> None:
    heard: list[tuple[int, str]] = []
    result = search.run(tiny_job(tiny_teacher), search.SearchConfig(SPACE, trials=5), tmp_path, parallel=2,
                        on_trial=lambda trial, best, ended: heard.append((trial.number, threading.current_thread().name)))
    assert sorted(n for n, _ in heard) == [t.number for t in result.trials] == [0, 1, 2, 3, 4]  # none over the budget
    assert {name for _, name in heard} == {threading.main_thread().name}
    assert all(t.state == "complete" for t in result.trials)


def test_a_trial_below_the_median_is_pruned_after_an_epoch(tiny_teacher: torch.nn.Module, tmp_path: Path) -> None:
    job = tiny_job(tiny_teacher)
    config = search.SearchConfig((search.Parameter("training.learning_rate", 1e-5, 0.1, log=True),), trials=3,
                                 trial_epochs=3)
    # The trials' values, fixed in the study the search goes on from: two that learn, then one that cannot.
    study = optuna.create_study(study_name="search", direction="maximize",
                                storage=JournalStorage(JournalFileBackend(str(tmp_path / "study.journal"))))
    for rate in (0.05, 0.05, 1e-5):
        study.enqueue_trial({"training.learning_rate": rate})
    result = search.run(job, config, tmp_path)
    assert [t.state for t in result.trials] == ["complete", "complete", "pruned"]
    pruned = result.trials[2]
    assert "after epoch 2: below the median" in pruned.note and pruned.held_out_top1 < result.best.held_out_top1
    assert result.best.number in (0, 1)


def test_two_objectives_choose_the_fastest_on_the_pareto_front_near_the_best(tiny_teacher: torch.nn.Module) -> None:
    job = tiny_job(tiny_teacher)
    latency = {"lenet5_half": 0.5, "shallow_cnn": 2.0, "cnn_bn_8": 1.0}  # as the service measures them, in ms
    config = search.SearchConfig((search.Parameter("kd.temperature", 1.0, 8.0, log=True),), trials=4,
                                 students=tuple(latency), methods=("kd", "dkd"), accuracy_tolerance=100)
    result = search.run(job, config, latency_ms=latency)
    trials = [t for t in result.trials if t.state == "complete"]
    assert all(t.p50_ms == latency[t.choices["student"]] for t in trials)
    for t in trials:  # on the front: nothing both more accurate and faster (at least as good in both, better in one)
        dominated = any(o.held_out_top1 >= t.held_out_top1 and o.p50_ms <= t.p50_ms and
                        (o.held_out_top1, o.p50_ms) != (t.held_out_top1, t.p50_ms) for o in trials)
        assert t.pareto == (not dominated)
    # Tolerance 100 points: every front trial qualifies, so the fastest is shipped.
    assert result.best.p50_ms == min(t.p50_ms for t in trials if t.pareto) and "fastest trial on the Pareto front" in result.reason
    assert all("kd.temperature" in t.params or t.choices["method"] == "dkd" for t in result.trials)


@pytest.mark.slow
def test_a_search_job_survives_a_restart_and_trains_the_chosen_values_on_the_whole_split(
    tmp_path: Path, teacher_file: Path
) -> None:
    data_dir = tmp_path / "data"
    process, address = spawn_server(data_dir, ["--max-concurrent-jobs", "2"])
    try:
        with Client(address) as client:
            teacher = client.upload(teacher_file, architecture="lenet5")
            spec = tiny_spec(teacher.id)
            spec.training.epochs = 6  # the chosen trial's training: the kill lands before the job ends
            spec.export.MergeFrom(pb.ExportSpec(int8=False, fp16=False, exporter=pb.ONNX_EXPORTER_TORCHSCRIPT))
            spec.benchmark.batch_sizes[:] = [1]
            spec.search.MergeFrom(pb.SearchSpec(trials=3, held_out_fraction=0.25, trial_epochs=1, parameters=[
                pb.SearchParameter(name="kd.temperature", low=1, high=8, log=True),
                pb.SearchParameter(name="training.learning_rate", low=0.005, high=0.1, log=True)]))
            spec.search.parameters.add(name="dkd.beta", low=1, high=8)
            error = rpc_error(client.create_job, spec)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "no trial has a 'dkd' loss term" in error.details()
            del spec.search.parameters[-1]
            # Two objectives: held-out top-1 and the students' p50, measured here; the student is the search's choice.
            spec.search.latency.SetInParent()
            assert "name two or more in search.students" in rpc_error(client.create_job, spec).details()
            spec.search.students[:] = ["lenet5_half", "cnn_bn_8"]
            assert "leave student unset" in rpc_error(client.create_job, spec).details()
            spec.student.Clear()
            job = client.create_job(spec)
            assert wait_for_message(client, job.id, "search: 3 trials").message.endswith(", 2 at a time")  # both slots free
            first = wait_for_message(client, job.id, "search trial ")
            # Two trials run at once: by the time the first is heard of, the other may have ended too.
            ended = int(re.search(r"; (\d) of 3 ended", first.message).group(1))
            assert ended in (1, 2) and first.metrics["trials"] == 3 and first.metrics["trial"] == ended
            assert first.progress == pytest.approx(0.025 + (0.45 - 0.025) * ended / 3)  # the trials' share of the bar
            worker = worker_pid(data_dir, job.id)
        process.kill()  # mid-search: one trial finished, others running or about to
        process.wait()
        wait_gone(worker, 10)

        process, address = spawn_server(data_dir)
        with Client(address) as client:
            done = client.wait(job.id)
            assert done.state == pb.JOB_STATE_SUCCEEDED, done.error.message
            messages = [e.message for e in client.watch(job.id)]
            assert "requeued after a server restart" in messages
            assert [m for m in messages if m.startswith(first.message.split(":")[0])] == [first.message]  # not run again
            report = client.report(job.id)
            s = report.search
            complete = [t for t in s.trials if t.state == "complete"]
            assert int(first.message.split()[2]) in [t.number for t in complete] and len(complete) == 3  # kept
            assert all(t.note.startswith("stopped by a restart") for t in s.trials if t.state == "failed")
            assert (s.train_samples, s.held_out_samples) == (600, 200)  # trials: of the 800 training images
            assert s.latency == "p50 at batch 1 in onnxruntime" and all(t.p50_ms > 0 for t in complete)
            front = [t for t in complete if t.pareto]
            chosen = next(t for t in complete if t.number == s.chosen_trial)
            most_accurate = max(t.held_out_top1 for t in complete)
            assert chosen.pareto and chosen.held_out_top1 >= most_accurate - 1.0  # the default tolerance
            assert chosen.p50_ms == min(t.p50_ms for t in front if t.held_out_top1 >= most_accurate - 1.0)
            # The chosen trial then trained the shipped student on all 800; the validation split scored it once.
            assert report.student.architecture == chosen.choices["student"] and report.training.train_samples == 800
            assert f"T={chosen.params['kd.temperature']:g}" in report.training.method
            assert report.variants[1].accuracy.samples == TINY_DATA["val_size"]
            markdown = client.download(job.id, "report.md", tmp_path / "report.md").read_text()
            assert "## Search" in markdown and "scored on the 200 held out" in markdown and "| Pareto |" in markdown
            page = client.download(job.id, "report.html", tmp_path / "report.html").read_text()
            assert "Pareto front" in page and "<svg" in page[page.index("<h2>Search</h2>"):]
    finally:
        process.kill()
        process.wait()
