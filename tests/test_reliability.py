"""A service that survives: kill -9, SIGTERM drains, dying workers, time limits, auth and TLS.

Each test runs real server processes on real ports over one data directory,
and kills real processes.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import torch
from google.protobuf import json_format
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.distillery.v1 import distillery_pb2 as pb
from service import cli
from service.client import Client
from service.config import ServerConfig
from service.server import spawn_server, stop_server
from service.servicer import DistillationServicer
from service.store import Store, StoreThread
from service.supervisor import Supervisor
from tests.conftest import diverging_teacher, rpc_error, tiny_spec
from tests.test_service import learning_data_free_spec


def long_spec(teacher_id: str, checkpoint_every: int = 20) -> pb.JobSpec:
    """Minutes of training at ~25 steps per epoch: long enough to be interrupted anywhere."""
    spec = tiny_spec(teacher_id)
    spec.training.epochs = 400
    spec.training.checkpoint_interval_steps = checkpoint_every
    return spec


def quick_spec(teacher_id: str) -> pb.JobSpec:
    """A whole job at its quickest: one epoch, the FP32 file only, timed at batch 1 (for what surrounds a job)."""
    spec = tiny_spec(teacher_id)
    spec.training.epochs = 1
    spec.export.int8 = spec.export.fp16 = False
    spec.benchmark.batch_sizes[:] = [1]
    return spec


# How long a wait may last before the test calls it a hang: a guard against a broken build, not a
# promise about speed (this machine is shared and its speed drifts).
HANG_GUARD_S = 120.0


def wait_for_step(client: Client, job_id: str, step: int, timeout: float = HANG_GUARD_S) -> None:
    deadline = time.time() + timeout
    for event in client.watch(job_id):
        if event.step >= step:
            return
        assert time.time() < deadline, f"job {job_id} did not reach step {step} in {timeout} s"
    pytest.fail(f"job {job_id} ended before step {step}")


def wait_for_message(client: Client, job_id: str, prefix: str, timeout: float = 120) -> pb.JobEvent:
    deadline = time.time() + timeout
    for event in client.watch(job_id):
        if event.message.startswith(prefix):
            return event
        assert time.time() < deadline, f"job {job_id} said no {prefix!r} in {timeout} s"
    pytest.fail(f"job {job_id} ended without saying {prefix!r}")


def worker_pid(data_dir: Path, job_id: str, timeout: float = 60) -> int:
    """The pid of the job's worker, from the line it logs first."""
    log = data_dir / "logs" / f"{job_id}.log"
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = re.search(r"in worker pid (\d+)", log.read_text()) if log.exists() else None
        if found:
            return int(found.group(1))
        time.sleep(0.1)
    raise AssertionError(f"no worker pid logged for {job_id}")


def rank_pids(data_dir: Path, job_id: str, count: int, timeout: float = 60) -> list[int]:
    """The pids of a distributed job's training processes, from the line each logs first."""
    log = data_dir / "logs" / f"{job_id}.log"
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = re.findall(r"training process rank \d+ \(local \d+\) pid (\d+)", log.read_text()) if log.exists() else []
        if len(found) >= count:
            return [int(pid) for pid in found]
        time.sleep(0.1)
    raise AssertionError(f"{count} training processes did not log their pids for {job_id}")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"  # a zombie has stopped running; only its exit status is left


def wait_gone(pid: int, timeout: float) -> None:
    deadline = time.time() + timeout
    while alive(pid):
        assert time.time() < deadline, f"process {pid} still runs after {timeout} s"
        time.sleep(0.05)


def resumed_from(events: list[pb.JobEvent]) -> list[int]:
    return [int(e.message.rsplit(" ", 1)[1]) for e in events if e.message.startswith("resuming from step")]


@pytest.mark.slow
def test_kill_9_mid_training_resumes_from_its_checkpoint_and_loses_nothing(tmp_path: Path, teacher_file: Path) -> None:
    data_dir = tmp_path / "data"
    process, address = spawn_server(data_dir)
    try:
        with Client(address) as client:
            teacher = client.upload(teacher_file, architecture="lenet5")
            done = client.wait(client.create_job(quick_spec(teacher.id)).id)
            assert done.state == pb.JOB_STATE_SUCCEEDED, done.error.message
            done_events = list(client.watch(done.id))
            job = client.create_job(long_spec(teacher.id, checkpoint_every=20))
            wait_for_step(client, job.id, 50)
            worker = worker_pid(data_dir, job.id)
        process.kill()
        process.wait()
        wait_gone(worker, 10)  # the worker dies with its server, rather than train on unseen

        process, address = spawn_server(data_dir)
        with Client(address) as client:
            assert client.get_job(job.id).state in (pb.JOB_STATE_QUEUED, pb.JOB_STATE_RUNNING)
            wait_for_message(client, job.id, "resuming from step")
            client.cancel(job.id)  # no need to train 10,000 steps to know it resumed
            events = list(client.watch(job.id))
            assert "requeued after a server restart" in [e.message for e in events]
            assert resumed_from(events) and resumed_from(events)[0] >= 40

            # The finished job, its events and its artifacts are all still there.
            assert client.get_job(done.id) == done
            assert list(client.watch(done.id)) == done_events
            for artifact in done.artifacts:
                client.download(done.id, artifact.name, tmp_path)  # checks each sha256
    finally:
        process.kill()
        process.wait()


def seconds(value: Timestamp | Duration) -> float:
    return value.ToNanoseconds() / 1e9


@pytest.mark.slow
def test_time_limit_counts_running_time_across_a_restart_not_downtime(tmp_path: Path, teacher_file: Path) -> None:
    data_dir, limit = tmp_path / "data", 16
    process, address = spawn_server(data_dir, ["--job-time-limit", str(limit)])
    try:
        with Client(address) as client:
            teacher = client.upload(teacher_file, architecture="lenet5")
            job = client.create_job(long_spec(teacher.id))
            wait_for_step(client, job.id, 5, timeout=limit * 3 / 4)  # before the limit could end it
            first_start = seconds(client.get_job(job.id).start_time)
            time.sleep(max(0.0, first_start + limit / 2 - time.time()))  # half the allowance spent
            ran = seconds(client.get_job(job.id).run_time)  # saved by the supervisor every 2 s
            assert 0 < ran <= time.time() - first_start
        process.kill()
        process.wait()
        time.sleep(limit / 2 + 2)  # down for longer than what is left of the allowance: none of it may count

        process, address = spawn_server(data_dir, ["--job-time-limit", str(limit)])
        with Client(address) as client:
            failed = client.wait(job.id)
            assert failed.state == pb.JOB_STATE_FAILED and f"time limit of {limit} s" in failed.error.message
            assert seconds(failed.start_time) == first_start  # the requeue kept the first start
            assert seconds(failed.run_time) >= limit
            events = list(client.watch(job.id))
            restart = [e.message for e in events].index("requeued after a server restart")
            assert any(e.message.startswith("resuming from step") for e in events[restart:])  # it ran again
            # ...for what was left of the allowance (limit - ran), which sets it apart from both wrong answers:
            # downtime counted would leave about nothing, a fresh allowance about `limit`. The bounds sit halfway
            # between, far from any scheduling noise: they tell the hypotheses apart, they do not time the server.
            second_start = next(e for e in events[restart:] if e.message == "started")
            second_run = seconds(failed.end_time) - seconds(second_start.time)
            left = limit - ran
            assert left / 2 < second_run < (left + limit) / 2, (ran, second_run)
    finally:
        process.kill()
        process.wait()


def test_a_store_from_before_run_time_opens_with_its_jobs(tmp_path: Path) -> None:
    """A server upgraded in place keeps its jobs: the columns run time and stored plans need are added on open."""
    store = Store(tmp_path / "store.db")
    job, _ = store.create_job(tiny_spec("m-teacher"), "request-1", max_queued=10)
    store.close()
    db = sqlite3.connect(tmp_path / "store.db")
    db.execute("ALTER TABLE jobs DROP COLUMN running_since")
    db.execute("ALTER TABLE jobs DROP COLUMN run_seconds")
    db.execute("ALTER TABLE jobs DROP COLUMN plan")
    db.execute("ALTER TABLE jobs DROP COLUMN slots")
    db.close()

    store = Store(tmp_path / "store.db")
    assert store.get_job(job.id) == job
    assert store.get_plan(job.id) == ""  # accepted before plans were stored: its worker plans it when it runs
    assert store.transition(job.id, pb.JOB_STATE_RUNNING, "started")
    time.sleep(0.05)
    assert store.transition(job.id, pb.JOB_STATE_SUCCEEDED, "done")
    finished = store.get_job(job.id)
    assert seconds(finished.run_time) == pytest.approx(seconds(finished.end_time) - seconds(finished.start_time), abs=1e-3)
    assert seconds(finished.run_time) >= 0.05
    store.close()


def test_a_search_holds_free_job_slots_and_no_job_starts_into_them(tmp_path: Path) -> None:
    store = Store(tmp_path / "store.db")
    first, second, third = (store.create_job(tiny_spec("m-teacher"), f"request-{i}", max_queued=10)[0] for i in range(3))
    assert store.transition(first.id, pb.JOB_STATE_RUNNING, "started", slot_limit=3)
    assert store.claim_slots(first.id, wanted=5, limit=3) == 3  # a search: every slot free, for its trials
    assert not store.transition(second.id, pb.JOB_STATE_RUNNING, "started", slot_limit=3)  # none left
    store.release_slots(first.id)  # the search ended: back to its own slot
    assert store.transition(second.id, pb.JOB_STATE_RUNNING, "started", slot_limit=3)
    assert store.claim_slots(first.id, wanted=5, limit=3) == 2  # the second job holds one
    assert store.transition(first.id, pb.JOB_STATE_SUCCEEDED, "done")  # ending gives the slots back
    assert store.transition(third.id, pb.JOB_STATE_RUNNING, "started", slot_limit=3)
    assert store.claim_slots(third.id, wanted=5, limit=3) == 2 and store.claim_slots(second.id, 4, 3) == 1
    store.close()


@pytest.mark.parametrize("processes", [0, 2], ids=["in-worker", "2-processes"])
@pytest.mark.slow
def test_sigterm_drains_running_jobs_to_a_checkpoint_and_the_queue(tmp_path: Path, teacher_file: Path, processes: int) -> None:
    data_dir = tmp_path / "data"
    process, address = spawn_server(data_dir, ["--drain-timeout", "20"])
    try:
        with Client(address) as client:
            teacher = client.upload(teacher_file, architecture="lenet5")
            spec = long_spec(teacher.id, checkpoint_every=100_000)  # only the drain can write a checkpoint
            if processes:  # the ranks agree on a step; rank 0 writes the checkpoint there
                spec.distributed.processes_per_node = processes
            job = client.create_job(spec)
            wait_for_step(client, job.id, 30)
            workers = [worker_pid(data_dir, job.id), *(rank_pids(data_dir, job.id, processes) if processes else [])]

            stream_events: list[pb.JobEvent] = []
            stream_errors: list[grpc.RpcError] = []
            health: list[int] = []

            def watch_job() -> None:
                try:
                    stream_events.extend(client.watch(job.id))
                except grpc.RpcError as e:
                    stream_errors.append(e)

            def watch_health() -> None:
                with grpc.insecure_channel(address) as channel:
                    try:
                        for reply in health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest()):
                            health.append(reply.status)
                    except grpc.RpcError:
                        pass  # the server going away ends this stream

            threads = [threading.Thread(target=watch_job), threading.Thread(target=watch_health)]
            for thread in threads:
                thread.start()
            deadline = time.time() + HANG_GUARD_S
            while not health:
                assert time.time() < deadline, "no health status streamed"
                time.sleep(0.05)
            process.send_signal(signal.SIGTERM)
            while health[-1] != health_pb2.HealthCheckResponse.NOT_SERVING:
                assert time.time() < deadline, "health never flipped to NOT_SERVING"
                time.sleep(0.01)
            assert rpc_error(client.create_job, spec).code() == grpc.StatusCode.UNAVAILABLE
            process.wait(timeout=HANG_GUARD_S)  # it exits on its own: the drain checkpointed and stopped the job
            for thread in threads:
                thread.join(10)
        assert not stream_errors, "WatchJob must end cleanly on a drain"
        assert not any(alive(pid) for pid in workers)
        checkpoint = torch.load(data_dir / "checkpoints" / f"{job.id}.pt", weights_only=True)
        assert checkpoint["step"] >= 30  # written by the drain at the step it stopped

        process, address = spawn_server(data_dir)
        with Client(address) as client:
            wait_for_message(client, job.id, "resuming from step")
            client.cancel(job.id)
            events = list(client.watch(job.id))
            assert "requeued: the server is shutting down" in [e.message for e in events]
            assert resumed_from(events) == [checkpoint["step"]]
    finally:
        process.kill()
        process.wait()


@pytest.mark.slow
def test_a_dying_worker_fails_only_its_job_and_frees_the_slot(
    client: Client, teacher_model: pb.Model, server, tiny_teacher: torch.nn.Module, tmp_path: Path
) -> None:
    data_dir = server[1]
    for sig, reason in ((signal.SIGSEGV, "killed by SIGSEGV"), (signal.SIGKILL, "killed by SIGKILL (likely out of memory)")):
        job = client.create_job(long_spec(teacher_model.id))
        behind = client.create_job(quick_spec(teacher_model.id)) if sig == signal.SIGSEGV else None
        wait_for_step(client, job.id, 1)
        os.kill(worker_pid(data_dir, job.id), sig)
        failed = client.wait(job.id)
        assert failed.state == pb.JOB_STATE_FAILED and failed.error.code == grpc.StatusCode.INTERNAL.value[0]
        assert reason in failed.error.message
        if behind is not None:
            assert client.wait(behind.id).state == pb.JOB_STATE_SUCCEEDED  # the slot was freed

    # A teacher with one NaN weight fails before training: its outputs are checked when its input convention is found.
    broken = {k: v.clone() for k, v in tiny_teacher.state_dict().items()}
    next(v for k, v in broken.items() if k.endswith("bias")).fill_(float("nan"))
    torch.save(broken, tmp_path / "nan.pt")
    nan_teacher = client.upload(tmp_path / "nan.pt", architecture="lenet5")
    failed = client.wait(client.create_job(quick_spec(nan_teacher.id)).id)
    assert failed.state == pb.JOB_STATE_FAILED and failed.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert "the teacher's outputs are not finite" in failed.error.message
    # Diverging: the first training loss is NaN.
    failed = client.wait(client.create_job(quick_spec(diverging_teacher(client, tiny_teacher, tmp_path).id)).id)
    assert failed.state == pb.JOB_STATE_FAILED and failed.error.code == grpc.StatusCode.ABORTED.value[0]
    assert "loss became nan at step 1; the teacher's outputs" in failed.error.message


def _stat(path: Path) -> list[str]:
    """Fields of a /proc stat file after the command name (field 3 onward)."""
    return path.read_text().rsplit(")", 1)[1].split()


def test_a_locked_database_never_stalls_the_event_loop(tmp_path: Path) -> None:
    """A write that waits on SQLite's lock (another process holds it) waits on the store's thread, not the loop."""
    config = ServerConfig(data_dir=tmp_path)
    config.make_dirs()
    entered = threading.Event()

    class WatchedStore(Store):
        def transition(self, *args: object, **kwargs: object) -> bool:
            entered.set()  # the next statement waits for the lock
            return super().transition(*args, **kwargs)

    store = StoreThread(WatchedStore(config.db_path))
    job, _ = store.store.create_job(pb.JobSpec(), "queued", 10)
    servicer = DistillationServicer(config, store, Supervisor(config, store))
    other_process = sqlite3.connect(config.db_path, isolation_level=None)
    other_process.execute("BEGIN IMMEDIATE")

    async def cancel_while_locked() -> pb.CancelJobResponse:
        cancel = asyncio.create_task(servicer.CancelJob(pb.CancelJobRequest(job_id=job.id), None))
        # Resumes only when the loop is free: had the transition blocked it, the cancel would have ended first.
        await asyncio.to_thread(entered.wait)
        assert not cancel.done(), "the loop was blocked until the store call gave up"
        other_process.execute("COMMIT")
        return await cancel

    try:
        assert asyncio.run(cancel_while_locked()).job.state == pb.JOB_STATE_CANCELLED
    finally:
        other_process.close()
        store.close()


def test_training_keeps_its_priority_when_the_api_is_flooded(client: Client, teacher_model: pb.Model, server) -> None:
    job = client.create_job(long_spec(teacher_model.id))
    wait_for_step(client, job.id, 1)
    worker = worker_pid(server[1], job.id)
    try:
        worker_stat = _stat(Path(f"/proc/{worker}/stat"))
        server_pid = int(_stat(Path(f"/proc/{worker_stat[1]}/stat"))[1])  # the worker's parent is the forkserver
        nice = {int(_stat(task / "stat")[16]) for task in Path(f"/proc/{server_pid}/task").iterdir()}
        assert int(worker_stat[16]) == 0  # the training runs at the priority the server was started with
        assert int(_stat(Path(f"/proc/{server_pid}/stat"))[16]) == 10 and 10 in nice  # the API's threads: --api-nice
    finally:
        client.cancel(job.id)


@pytest.mark.parametrize("kind", ["kd", "data-free"])
def test_a_job_failing_after_training_keeps_its_student_and_is_retried_from_there(
    client: Client, teacher_model: pb.Model, server, tmp_path: Path, kind: str
) -> None:
    """Issue 21: an export that fails must not throw away the trained student, and a retry must not train again."""
    spec = tiny_spec(teacher_model.id) if kind == "kd" else learning_data_free_spec(teacher_model.id)
    spec.export.int8 = spec.export.fp16 = False  # what is retried is the export of the FP32 file; variants add time
    job = client.create_job(spec)
    # A directory where the exporter writes student.onnx: the disk refuses the export, as a full one would.
    blocker = server[1] / "tmp" / job.id / "student.onnx"
    blocker.mkdir(parents=True)
    (blocker / "keep").write_text("")
    failed = client.wait(job.id)
    assert failed.state == pb.JOB_STATE_FAILED and failed.error.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert failed.error.message.startswith("the export stage failed; the trained student is kept (student.pt)")
    trained = ["student.pt"] if kind == "kd" else ["generator.pt", "samples.png", "student.pt"]
    assert [a.name for a in failed.artifacts] == trained
    first = torch.load(client.download(job.id, "student.pt", tmp_path / "first.pt"), weights_only=True)
    assert json_format.Parse(first["job_spec"], pb.JobSpec()) == spec
    assert json_format.Parse(first["training"], pb.TrainingSummary()).steps > 0
    assert bool(first["data_free"]) == (kind == "data-free")
    trained_events = len([e for e in client.watch(job.id) if e.stage == "distil" and e.total_steps])

    assert rpc_error(client.retry, "j-missing").code() == grpc.StatusCode.NOT_FOUND
    blocker.joinpath("keep").unlink()
    blocker.rmdir()
    assert client.retry(job.id).state in (pb.JOB_STATE_QUEUED, pb.JOB_STATE_RUNNING)
    done = client.wait(job.id)
    assert done.state == pb.JOB_STATE_SUCCEEDED, done.error.message
    events = list(client.watch(job.id))
    assert len([e for e in events if e.stage == "distil" and e.total_steps]) == trained_events  # no step trained again
    assert any(e.message.startswith("retry: the student trained by the earlier attempt") for e in events)
    second = torch.load(client.download(job.id, "student.pt", tmp_path / "second.pt"), weights_only=True)
    assert all(torch.equal(first["state_dict"][k], second["state_dict"][k]) for k in first["state_dict"])
    report = client.report(job.id)
    assert report.training.steps == json_format.Parse(first["training"], pb.TrainingSummary()).steps
    assert any(n.startswith("retried (RetryJob)") for n in report.notes)
    assert report.HasField("data_free") == (kind == "data-free")
    assert {"student.onnx", "report.json"} <= {a.name for a in done.artifacts}
    assert rpc_error(client.retry, job.id).code() == grpc.StatusCode.FAILED_PRECONDITION  # only FAILED jobs


def test_cancel_ends_the_worker(client: Client, teacher_model: pb.Model, server) -> None:
    job = client.create_job(long_spec(teacher_model.id))
    wait_for_step(client, job.id, 1)
    worker = worker_pid(server[1], job.id)
    assert client.cancel(job.id).state == pb.JOB_STATE_CANCELLED
    wait_gone(worker, HANG_GUARD_S)  # the worker ends (the guard only keeps a broken build from hanging the suite)
    assert rpc_error(client.cancel, job.id).code() == grpc.StatusCode.FAILED_PRECONDITION


def test_a_message_over_the_size_limit_is_resource_exhausted(client: Client, teacher_model: pb.Model) -> None:
    spec = tiny_spec(teacher_model.id)
    spec.student.architecture = "x" * (9 << 20)  # the default limit is 8 MiB; files stream in 1 MiB chunks
    assert rpc_error(client.create_job, spec).code() == grpc.StatusCode.RESOURCE_EXHAUSTED


# ------------------------------------------------ a locked-down server: token, TLS, tight limits

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def locked_down(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, bytes]]:
    """A server with --auth-token-file, TLS, a 3 s job time limit and a queue of one; yields (address, data_dir, CA)."""
    root = tmp_path_factory.mktemp("locked")
    (root / "token").write_text(TOKEN + "\n")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(root / "key.pem"), "-out", str(root / "cert.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    process, address = spawn_server(
        root / "data",
        ["--auth-token-file", str(root / "token"), "--tls-cert", str(root / "cert.pem"), "--tls-key", str(root / "key.pem"),
         "--job-time-limit", "3", "--max-queued-jobs", "1"],
    )  # fmt: skip
    yield address, root / "data", (root / "cert.pem").read_bytes()
    stop_server(process)


def test_auth_refuses_unary_and_streaming_calls_without_the_token(locked_down, teacher_file: Path) -> None:
    address, _, ca = locked_down
    for token in ("", "wrong"):
        with Client(address, token=token, tls_ca=ca) as stranger:
            for call, args in ((stranger.get_job, ("j-x",)), (lambda: list(stranger.list_jobs()), ()),
                               (lambda job_id: list(stranger.watch(job_id)), ("j-x",)),
                               (stranger.upload, (teacher_file, "t", "lenet5"))):  # fmt: skip
                err = rpc_error(call, *args)
                assert err.code() == grpc.StatusCode.UNAUTHENTICATED, err
                assert "bearer token" in err.details()
    # Health is exempt: orchestrators probe it without credentials.
    with grpc.secure_channel(address, grpc.ssl_channel_credentials(ca)) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with Client(address, token=TOKEN, tls_ca=ca) as client:
        assert client.upload(teacher_file, architecture="lenet5").id.startswith("m-")
        assert rpc_error(client.get_job, "j-x").code() == grpc.StatusCode.NOT_FOUND  # past the interceptor


def test_tls_is_required_when_configured(locked_down, capsys: pytest.CaptureFixture[str]) -> None:
    address, data_dir, _ = locked_down
    with Client(address, token=TOKEN, timeout=5) as plaintext:
        assert rpc_error(plaintext.get_job, "j-x").code() == grpc.StatusCode.UNAVAILABLE
    assert cli.main(["--address", address, "--tls-ca", str(data_dir.parent / "cert.pem"), "health"]) == 0
    assert capsys.readouterr().out == "SERVING\n"


def test_time_limit_and_queue_limit_are_resource_exhausted(locked_down, teacher_file: Path) -> None:
    address, _, ca = locked_down
    with Client(address, token=TOKEN, tls_ca=ca) as client:
        teacher = client.upload(teacher_file, architecture="lenet5")
        running = client.create_job(long_spec(teacher.id))
        while client.get_job(running.id).state == pb.JOB_STATE_QUEUED:
            time.sleep(0.05)
        queued = client.create_job(long_spec(teacher.id))
        err = rpc_error(client.create_job, long_spec(teacher.id))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "limit 1" in err.details()
        client.cancel(queued.id)

        failed = client.wait(running.id)
        assert failed.state == pb.JOB_STATE_FAILED
        assert failed.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        assert "time limit of 3 s (--job-time-limit)" in failed.error.message
        duration = failed.end_time.ToSeconds() - failed.start_time.ToSeconds()
        assert 3 <= duration < 10
