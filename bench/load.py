"""Does the service stay responsive, and leave training alone, under many clients?

Starts a real server (``distillery serve`` in a child process, on a free port,
in a temporary data directory), uploads a small LeNet-5 teacher trained here,
and runs the same KD job on generated data three times: with no load, under
load, and with no load again (the two baselines bracket the machine's drift).
Under load, ``--clients`` clients, each with its own gRPC channel, poll GetJob
and ListJobs (page_size 50) on the running job with ``--think-ms`` between
calls, and each holds a WatchJob stream open, for the whole of the job's
training. Every RPC error counts, the watch streams' included (a stream the
benchmark cancels when the load stops is not an error).

The job is sized so that its training takes about ``--seconds`` with no load
(a short calibration job measures the time per epoch), and its slowdown is
the loaded job's training wall time (report.training.wall_seconds) over the
mean of the two baselines. Latencies are measured in the clients
(time.perf_counter around each call), which run on the same machine as the
server and the training: they compete with both for the cores, and their own
scheduling delay is part of every latency they report.

    python bench/load.py                                   # 50 clients, about 60 s of training
    python bench/load.py --seconds 20 --out bench/results/load.md

Prints a Markdown summary (and writes it to ``--out``); exits 1 if any RPC
failed.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import platform
import random
import resource
import shlex
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event as ProcessEvent
from pathlib import Path

import grpc

from distill import benchmark
from protos.distillery.v1 import distillery_pb2 as pb
from protos.distillery.v1 import distillery_pb2_grpc as pb_grpc

# The generated data the teacher learns and the job distils on: 4 shapes, 28 px, 1 channel.
DATA = {"num_classes": 4, "image_size": 28, "channels": 1, "val_size": 200, "seed": 3}
TRAINING_STAGE = "distil"
RPC_TIMEOUT_S = 30.0
CALIBRATION_EPOCHS = 2
TARGET_GETJOB_P99_MS = 50.0
TARGET_SLOWDOWN = 1.20
# The no-load runs before and after the loaded one should agree this closely for the slowdown to mean anything.
MAX_DRIFT = 1.10


@dataclass
class Tally:
    """What one client process saw; merged across processes at the end."""

    get_job_ms: list[float] = field(default_factory=list)
    list_jobs_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)  # "RPC CODE" -> count
    watch_events: int = 0
    cpu_seconds: float = 0.0

    def merge(self, other: Tally) -> None:
        self.get_job_ms += other.get_job_ms
        self.list_jobs_ms += other.list_jobs_ms
        self.errors += other.errors
        self.watch_events += other.watch_events
        self.cpu_seconds += other.cpu_seconds


# ------------------------------------------------------------------ clients
# Client processes are spawned and import this module afresh: nothing at the
# top level may import torch (seconds of start-up and memory per process).


def poll(stub: pb_grpc.DistillationServiceStub, job_id: str, think_s: float, stop: threading.Event, tally: Tally) -> None:
    """GetJob, think, ListJobs, think, ... until ``stop``."""
    calls = (
        ("GetJob", lambda: stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=RPC_TIMEOUT_S), tally.get_job_ms),
        ("ListJobs", lambda: stub.ListJobs(pb.ListJobsRequest(page_size=50), timeout=RPC_TIMEOUT_S), tally.list_jobs_ms),
    )
    # A random phase, so that the clients do not call in lockstep.
    if stop.wait(random.uniform(0, think_s)):
        return
    while True:
        for name, call, latencies in calls:
            started = time.perf_counter()
            try:
                call()
                latencies.append(1000 * (time.perf_counter() - started))
            except grpc.RpcError as e:
                tally.errors[f"{name} {e.code().name}"] += 1
            if stop.wait(think_s):
                return


def watch(stream: grpc.Call, stop: threading.Event, tally: Tally) -> None:
    """Consume one WatchJob stream until the job ends or the load stops (and cancels it)."""
    try:
        for _ in stream:
            tally.watch_events += 1
    except grpc.RpcError as e:
        if not (stop.is_set() and e.code() == grpc.StatusCode.CANCELLED):
            tally.errors[f"WatchJob {e.code().name}"] += 1


def run_clients(
    address: str, count: int, think_s: float, job_ids: mp.Queue, stop: ProcessEvent, results: mp.Queue
) -> None:
    """One client process: ``count`` clients, each a channel, a polling thread and a watch stream."""
    channels = [grpc.insecure_channel(address) for _ in range(count)]
    for channel in channels:
        grpc.channel_ready_future(channel).result(timeout=RPC_TIMEOUT_S)
    results.put("ready")
    job_id = job_ids.get()

    # The threads wait on a local event: cheaper than 2 x count waiters on a cross-process one.
    done = threading.Event()
    tallies = [Tally() for _ in channels]
    threads = []
    streams = []
    for channel, tally in zip(channels, tallies):
        stub = pb_grpc.DistillationServiceStub(channel)
        stream = stub.WatchJob(pb.WatchJobRequest(job_id=job_id))
        streams.append(stream)
        threads += [
            threading.Thread(target=poll, args=(stub, job_id, think_s, done, tally)),
            threading.Thread(target=watch, args=(stream, done, tally)),
        ]
    for thread in threads:
        thread.start()
    stop.wait()
    done.set()
    for stream in streams:
        stream.cancel()
    for thread in threads:
        thread.join()
    for channel in channels:
        channel.close()

    total = Tally()
    for tally in tallies:
        total.merge(tally)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    total.cpu_seconds = usage.ru_utime + usage.ru_stime
    results.put(total)


# --------------------------------------------------------------- the server


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def train_teacher(path: Path) -> None:
    """A LeNet-5 teacher on the generated data, as the tests make one (a few seconds)."""
    import torch

    from distill import data, models, trainer

    train, val = data.generated_splits(**DATA, train_size=800)
    model = models.build("lenet5", DATA["num_classes"], DATA["channels"])
    trainer.train_from_labels(model, data.Splits(train, val), trainer.TrainConfig(epochs=3, batch_size=32, seed=0))
    torch.save(model.eval().state_dict(), path)


def job_spec(teacher_id: str, epochs: int, train_size: int) -> pb.JobSpec:
    """KD into LeNet-5-half; export and benchmark cut to the minimum, since only training time is compared."""
    return pb.JobSpec(
        teacher_model_id=teacher_id,
        student=pb.StudentSpec(architecture="lenet5_half"),
        dataset=pb.DatasetSpec(generated=pb.GeneratedDataset(**DATA, train_size=train_size)),
        training=pb.TrainingSpec(epochs=epochs, batch_size=32),
        export=pb.ExportSpec(int8=False, fp16=False),
        benchmark=pb.BenchmarkSpec(batch_sizes=[1], warmup_runs=2, min_runs=5, min_seconds=0.05),
        device=pb.DEVICE_CPU,
    )


def wait_for_training_end(stub: pb_grpc.DistillationServiceStub, job_id: str) -> None:
    """Follow the job's events until its training stage is over (or the job ends)."""
    stream = stub.WatchJob(pb.WatchJobRequest(job_id=job_id))
    trained = False
    try:
        for response in stream:
            if response.event.stage == TRAINING_STAGE:
                trained = True
            elif trained:
                return
    finally:
        stream.cancel()


def finish(stub: pb_grpc.DistillationServiceStub, job_id: str) -> pb.Report:
    """Wait for the job to end; its report, or an error naming why it failed."""
    for _ in stub.WatchJob(pb.WatchJobRequest(job_id=job_id)):
        pass
    job = stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=RPC_TIMEOUT_S).job
    if job.state != pb.JOB_STATE_SUCCEEDED:
        raise RuntimeError(f"job {job_id} ended {pb.JobState.Name(job.state)}: {job.error.message}")
    return stub.GetReport(pb.GetReportRequest(job_id=job_id), timeout=RPC_TIMEOUT_S).report


def run_job(stub: pb_grpc.DistillationServiceStub, spec: pb.JobSpec) -> pb.Report:
    job = stub.CreateJob(pb.CreateJobRequest(spec=spec), timeout=RPC_TIMEOUT_S).job
    return finish(stub, job.id)


@dataclass
class LoadedRun:
    report: pb.Report
    tally: Tally
    seconds: float  # how long the load ran
    server_cpu_seconds: float  # the server process's CPU time while it did


def run_loaded_job(
    stub: pb_grpc.DistillationServiceStub, spec: pb.JobSpec, address: str, server_pid: int, args: argparse.Namespace
) -> LoadedRun:
    """The job with the clients running from before it starts until its training ends."""
    context = mp.get_context("spawn")  # grpc does not survive fork() in a process that has used it
    job_ids, results, stop = context.Queue(), context.Queue(), context.Event()
    shares = [len(range(i, args.clients, args.client_processes)) for i in range(args.client_processes)]
    processes = [
        context.Process(target=run_clients, args=(address, share, args.think_ms / 1000, job_ids, stop, results), daemon=True)
        for share in shares
    ]
    for process in processes:
        process.start()
    for _ in processes:
        if results.get(timeout=120) != "ready":
            raise RuntimeError("a client process did not start")

    job = stub.CreateJob(pb.CreateJobRequest(spec=spec), timeout=RPC_TIMEOUT_S).job
    cpu_before, started = process_cpu_seconds(server_pid), time.perf_counter()
    for _ in processes:
        job_ids.put(job.id)
    wait_for_training_end(stub, job.id)
    stop.set()
    seconds, server_cpu = time.perf_counter() - started, process_cpu_seconds(server_pid) - cpu_before

    tally = Tally()
    for _ in processes:
        tally.merge(results.get(timeout=120))
    for process in processes:
        process.join()
    return LoadedRun(finish(stub, job.id), tally, seconds, server_cpu)


# ----------------------------------------------------------------- summary


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by the report's own interpolation; NaN for no values."""
    return benchmark.percentile(sorted(values), q / 100) if values else math.nan


def summary(
    args: argparse.Namespace, epochs: int, per_epoch_s: float, baselines: list[float], loaded: LoadedRun
) -> tuple[str, bool]:
    """The Markdown note, and whether every RPC succeeded."""
    tally, report = loaded.tally, loaded.report
    training_s = report.training.wall_seconds
    slowdown = training_s / statistics.mean(baselines)
    drift = baselines[-1] / baselines[0]
    steady = 1 / MAX_DRIFT <= drift <= MAX_DRIFT
    p99 = percentile(tally.get_job_ms, 99)
    errors = sum(tally.errors.values())
    error_cells = ", ".join(f"{name}: {n}" for name, n in sorted(tally.errors.items())) or "none"
    threads_flag = args.worker_threads or f"0 (server default: (cores - 1) / concurrent jobs = {report.environment.num_threads})"

    def ms(values: list[float]) -> str:
        return " / ".join(f"{percentile(values, q):.1f}" for q in (50, 90, 99)) + f" / {max(values, default=math.nan):.1f}"

    sizing = (
        f"calibrated: {per_epoch_s:.2f} s per epoch with no load, for about {args.seconds:g} s of training"
        if not math.isnan(per_epoch_s)
        else "from --epochs"
    )

    def verdict(ok: bool) -> str:
        return "met" if ok else "**not met**"

    lines = [
        f"# Load: {args.clients} clients against a training job",
        "",
        f"`{shlex.join([Path(sys.executable).name, *sys.argv])}`",
        "",
        f"Machine: {os.cpu_count()} cores ({platform.processor() or platform.machine()}, {platform.platform()}); "
        f"the server, its training worker and the clients all run on it. Server `--worker-threads` "
        f"{threads_flag}; training intra-op threads {report.environment.num_threads}; `--api-nice` {args.api_nice}.",
        "",
        f"Load: {args.clients} clients in {args.client_processes} process(es), each client a channel, a thread "
        f"calling GetJob then ListJobs (page_size 50) with {args.think_ms:g} ms between calls, and a thread holding a "
        f"WatchJob stream; from the loaded job's creation to the end of its training: {loaded.seconds:.1f} s. Job: KD "
        f"into lenet5_half, {args.train_size} generated images, {epochs} epochs ({sizing}).",
        "",
        "| measure | value | target |",
        "|---|---:|---|",
        f"| GetJob calls that succeeded | {len(tally.get_job_ms)} ({len(tally.get_job_ms) / loaded.seconds:.0f}/s) | |",
        f"| ListJobs calls that succeeded | {len(tally.list_jobs_ms)} ({len(tally.list_jobs_ms) / loaded.seconds:.0f}/s) | |",
        f"| WatchJob streams held / events received | {args.clients} / {tally.watch_events} | |",
        f"| errors (any RPC, by status code) | {error_cells} | 0: {verdict(errors == 0)} |",
        f"| GetJob latency p50 / p90 / p99 / max, ms | {ms(tally.get_job_ms)} | p99 < {TARGET_GETJOB_P99_MS:g}: "
        f"{verdict(p99 < TARGET_GETJOB_P99_MS)} |",
        f"| ListJobs latency p50 / p90 / p99 / max, ms | {ms(tally.list_jobs_ms)} | |",
        f"| training wall time, no load, s | {' / '.join(f'{b:.1f}' for b in baselines)} (before / after) | |",
        f"| training wall time, under load, s | {training_s:.1f} | |",
        f"| no-load drift (after / before) | {drift:.2f}x | within {MAX_DRIFT:.2f}x: {verdict(steady)} |",
        f"| slowdown (loaded / mean of no-load) | {slowdown:.2f}x | < {TARGET_SLOWDOWN:.2f}x: "
        f"{verdict(slowdown < TARGET_SLOWDOWN) if steady else 'not judged (drift)'} |",
        f"| CPU during the load: server process / client processes, s | {loaded.server_cpu_seconds:.1f} / "
        f"{tally.cpu_seconds:.1f} | |",
        "",
        "Latencies are measured in the clients, which share the cores with the server and the training worker: "
        "a client thread's own wait for a core (and for its process's GIL) is part of each latency it records, and "
        "the clients' CPU time is taken from the same cores the training uses. On a machine with few cores this "
        "makes both numbers worse than a deployment with clients elsewhere would see.",
        "",
    ]
    if not steady:
        lines += [
            f"The two no-load runs differ by more than {MAX_DRIFT:.2f}x: the machine's speed changed during the run "
            "(other work on it), so the slowdown above measures that as much as the load. Rerun on a quiet machine.",
            "",
        ]
    return "\n".join(lines), errors == 0


# -------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60.0, help="training time of the job with no load")
    parser.add_argument("--think-ms", type=float, default=50.0, help="each client's pause between calls")
    parser.add_argument("--client-processes", type=int, default=2, help="spread the client threads over processes")
    parser.add_argument("--epochs", type=int, help="skip the calibration: train this many epochs")
    parser.add_argument("--train-size", type=int, default=4000, help="generated training images")
    parser.add_argument("--worker-threads", type=int, default=0, help="the server's --worker-threads (0: its default)")
    parser.add_argument("--api-nice", type=int, default=10, help="the server's --api-nice (0: API and training at equal priority)")
    parser.add_argument("--out", type=Path, help="also write the summary here")
    args = parser.parse_args()
    if not 1 <= args.client_processes <= args.clients:
        parser.error("--client-processes must be between 1 and --clients")

    from service.client import Client  # torch and the server stay out of the spawned client processes
    from service.server import spawn_server, stop_server

    with tempfile.TemporaryDirectory(prefix="distillery-load-") as tmp:
        teacher_path = Path(tmp) / "teacher.pt"
        train_teacher(teacher_path)
        server, address = spawn_server(
            Path(tmp) / "data", ["--worker-threads", str(args.worker_threads), "--api-nice", str(args.api_nice)]
        )
        try:
            with Client(address) as client:
                teacher = client.upload(teacher_path, architecture="lenet5")
                epochs = args.epochs
                per_epoch_s = math.nan
                if epochs is None:
                    calibration = run_job(client.stub, job_spec(teacher.id, CALIBRATION_EPOCHS, args.train_size))
                    per_epoch_s = calibration.training.wall_seconds / CALIBRATION_EPOCHS
                    epochs = max(1, round(args.seconds / per_epoch_s))
                spec = job_spec(teacher.id, epochs, args.train_size)
                print(f"{epochs} epochs per job; baseline, loaded, baseline", file=sys.stderr)
                before = run_job(client.stub, spec).training.wall_seconds
                loaded = run_loaded_job(client.stub, spec, address, server.pid, args)
                after = run_job(client.stub, spec).training.wall_seconds
        finally:
            stop_server(server)

    text, clean = summary(args, epochs, per_epoch_s, [before, after], loaded)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    sys.exit(0 if clean else 1)


if __name__ == "__main__":
    main()
