"""``distillery``: run the server, or talk to one.

Every command but ``serve`` is a gRPC client; none reaches into the engine.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import grpc
import yaml
from google.protobuf import json_format

from protos.distillery.v1 import distillery_pb2 as pb

DEFAULT_ADDRESS = os.environ.get("DISTILLERY_ADDRESS", "localhost:50051")


def _client(args: argparse.Namespace):
    from service.auth import read_token
    from service.client import Client

    token = read_token(Path(args.token_file)) if args.token_file else ""
    tls_ca = Path(args.tls_ca).read_bytes() if args.tls_ca else None
    return Client(args.address, token=token, tls_ca=tls_ca)


# ---------------------------------------------------------------- commands


def cmd_serve(args: argparse.Namespace) -> int:
    from service.config import ServerConfig
    from service.server import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = ServerConfig(
        data_dir=args.data_dir,
        port=args.port,
        host=args.host,
        data_roots=tuple(args.data_root or ()),
        max_concurrent_jobs=args.max_concurrent_jobs,
        max_queued_jobs=args.max_queued_jobs,
        max_upload_bytes=args.max_upload_bytes,
        worker_threads=args.worker_threads,
        max_message_bytes=args.max_message_bytes,
        job_time_limit_s=args.job_time_limit,
        drain_timeout_s=args.drain_timeout,
        job_memory_limit_bytes=args.job_memory_limit,
        inspect_timeout_s=args.inspect_timeout,
        auth_token_file=args.auth_token_file,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        api_nice=args.api_nice,
    )
    asyncio.run(serve(config))
    return 0


def cmd_upload(args: argparse.Namespace) -> int:
    fmt = pb.ModelFormat.Value(f"MODEL_FORMAT_{args.format.upper()}") if args.format else 0
    with _client(args) as client:
        model = client.upload(Path(args.path), args.name, args.architecture, fmt)
    print(f"uploaded {model.id} ({pb.ModelFormat.Name(model.format)}, {model.size_bytes} bytes)", file=sys.stderr)
    print(model.id)
    return 0


def build_spec(args: argparse.Namespace) -> pb.JobSpec:
    """A JobSpec from a YAML/JSON file, then the flags on top of it."""
    spec = pb.JobSpec()
    if args.spec:
        _read_into(spec, args.spec, "job spec")
    if args.search:  # a search block of its own, e.g. one kept for several jobs
        _read_into(spec.search, args.search, "search block (SearchSpec)")
    elif args.search is not None and not spec.HasField("search"):
        raise SystemExit(f"error: --search: {args.spec or 'the spec'} has no search block; give one: --search FILE")
    if args.trials is not None:
        spec.search.trials = args.trials
    if args.teacher:
        spec.teacher_model_id = args.teacher
    if args.student:
        spec.student.architecture = args.student
    if args.student_init:
        spec.student.init_model_id = args.student_init
    if args.dataset == "generated":
        spec.dataset.generated.SetInParent()
    elif args.dataset:
        spec.dataset.torchvision.name = args.dataset
        spec.dataset.torchvision.root = args.data_path or "."  # torchvision's root holds MNIST/, CIFAR10/, ...
    for field, value in (("epochs", args.epochs), ("batch_size", args.batch_size), ("learning_rate", args.lr)):
        if value is not None:
            setattr(spec.training, field, value)
    if args.temperature is not None or args.alpha is not None:
        if not spec.losses:
            spec.losses.add(kd=pb.KnowledgeDistillation())
        kd = spec.losses[0].kd
        kd.temperature = args.temperature if args.temperature is not None else kd.temperature
        kd.alpha = args.alpha if args.alpha is not None else kd.alpha
    if args.data_free:
        spec.data_free.method = pb.DataFreeMethod.Value(
            "DATA_FREE_METHOD_UNSPECIFIED" if args.data_free == "auto" else f"DATA_FREE_METHOD_{args.data_free.upper()}"
        )
    if args.benchmark_only:
        spec.benchmark_only.student_model_id = args.benchmark_only
    if args.input_shape:
        try:
            channels, height, width = (int(n) for n in args.input_shape.split(","))
        except ValueError:
            raise SystemExit(f"error: --input-shape wants C,H,W (e.g. 1,28,28), got {args.input_shape!r}") from None
        shape = pb.InputShape(channels=channels, height=height, width=width)
        (spec.benchmark_only if spec.HasField("benchmark_only") else spec.data_free).input_shape.CopyFrom(shape)
    if args.iterations is not None:
        spec.data_free.iterations = args.iterations
    if args.device:
        spec.device = pb.Device.Value(f"DEVICE_{args.device.upper()}")
    for field, value in (
        ("processes_per_node", args.processes_per_node),
        ("nodes", args.nodes),
        ("rendezvous_endpoint", args.rendezvous_endpoint),
        ("run_id", args.run_id),
    ):
        if value is not None:
            setattr(spec.distributed, field, value)
    return spec


def _read_into(message: Any, path: str, what: str) -> None:
    try:
        json_format.ParseDict(yaml.safe_load(Path(path).read_text()) or {}, message)
    except (json_format.ParseError, yaml.YAMLError) as e:
        raise SystemExit(f"error: {path} is not a valid {what}: {e}") from e


def cmd_submit(args: argparse.Namespace) -> int:
    from service.client import ProgressBar

    spec = build_spec(args)
    with _client(args) as client:
        job = client.create_job(spec, args.request_id or uuid.uuid4().hex)
        print(job.id)
        if not args.wait:
            return 0
        job = client.wait(job.id, ProgressBar().update)
    return _print_outcome(job)


def _print_outcome(job: pb.Job) -> int:
    state = pb.JobState.Name(job.state).removeprefix("JOB_STATE_")
    if job.state == pb.JOB_STATE_SUCCEEDED:
        print(f"job {job.id} {state}", file=sys.stderr)
        return 0
    print(f"job {job.id} {state}: {job.error.message}", file=sys.stderr)
    return 1


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.get_job(args.job_id)
    print(json_format.MessageToJson(job, preserving_proto_field_name=True))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    state = pb.JobState.Value(f"JOB_STATE_{args.state.upper()}") if args.state else 0
    with _client(args) as client:
        for job in client.list_jobs(state):
            name = pb.JobState.Name(job.state).removeprefix("JOB_STATE_")
            minutes, seconds = divmod(job.run_time.seconds, 60)
            ran = f"{minutes}m{seconds:02d}s"
            print(f"{job.id}  {name:<10} {job.stage:<14} {100 * job.progress:5.1f}%  {ran:>8}  {job.spec.display_name}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.cancel(args.job_id)
    print(f"{job.id} {pb.JobState.Name(job.state).removeprefix('JOB_STATE_')}")
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    from service.client import ProgressBar

    with _client(args) as client:
        job = client.retry(args.job_id)
        print(f"{job.id} {pb.JobState.Name(job.state).removeprefix('JOB_STATE_')}")
        if not args.wait:
            return 0
        job = client.wait(job.id, ProgressBar().update)
    return _print_outcome(job)


def cmd_report(args: argparse.Namespace) -> int:
    from service.report import to_markdown
    from service.report_html import to_html

    with _client(args) as client:
        report = client.report(args.job_id)
    fmt = "html" if args.open else args.format
    if fmt == "json":
        text = json_format.MessageToJson(report, preserving_proto_field_name=True) + "\n"
    elif fmt == "html":
        text = to_html(report)
    else:
        text = to_markdown(report)
    if args.output is None and not args.open:
        sys.stdout.write(text)
        return 0
    path = Path(args.output or f"report-{args.job_id}.html")
    path.write_text(text)
    print(path, file=sys.stderr)
    if args.open:
        import webbrowser

        if not webbrowser.open(path.resolve().as_uri()):
            print(f"no browser found; open {path.resolve()}", file=sys.stderr)
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    out = Path(args.output)
    with _client(args) as client:
        names = args.names or [a.name for a in client.get_job(args.job_id).artifacts]
        if len(names) > 1 or not args.names:
            out.mkdir(parents=True, exist_ok=True)
        for name in names:
            print(client.download(args.job_id, name, out))
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with _client(args) as client:  # the same TLS settings as every other command
        status = health_pb2_grpc.HealthStub(client.channel).Check(health_pb2.HealthCheckRequest(), timeout=args.timeout).status
    print(health_pb2.HealthCheckResponse.ServingStatus.Name(status))
    return 0 if status == health_pb2.HealthCheckResponse.SERVING else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from service.demo import run_demo

    return run_demo(Path(args.output))


# -------------------------------------------------------------------- main


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="distillery", description=__doc__)
    p.add_argument("--address", default=DEFAULT_ADDRESS, help="server address (env DISTILLERY_ADDRESS)")
    p.add_argument("--token-file", default=os.environ.get("DISTILLERY_TOKEN_FILE"),
                   help="send the bearer token in this file (env DISTILLERY_TOKEN_FILE)")
    p.add_argument("--tls-ca", default=os.environ.get("DISTILLERY_TLS_CA"),
                   help="connect with TLS, trusting this PEM CA or self-signed certificate (env DISTILLERY_TLS_CA)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the server")
    s.add_argument("--data-dir", required=True, type=Path, help="database, artifacts, checkpoints, logs")
    s.add_argument("--port", type=int, default=50051, help="0 picks a free port")
    s.add_argument("--host", default="[::]")
    s.add_argument("--data-root", action="append", type=Path, help="where dataset paths may point (repeatable); default DATA_DIR/datasets")
    s.add_argument("--max-concurrent-jobs", type=int, default=1)
    s.add_argument("--max-queued-jobs", type=int, default=100)
    s.add_argument("--max-upload-bytes", type=int, default=2 << 30)
    s.add_argument("--worker-threads", type=int, default=0, help="intra-op threads per job; 0: (cores - 1) / concurrent jobs")
    s.add_argument("--max-message-bytes", type=int, default=8 << 20, help="largest gRPC message; files stream in 1 MiB chunks")
    s.add_argument("--job-time-limit", type=float, default=24 * 3600, help="seconds a job may run; 0: no limit")
    s.add_argument("--drain-timeout", type=float, default=20.0, help="on SIGTERM, seconds running jobs get to checkpoint")
    s.add_argument("--job-memory-limit", type=int, default=0,
                   help="bytes a job may allocate beyond its runtime (~0.8 GB); 0: 3/4 of the machine's memory / concurrent jobs")
    s.add_argument("--inspect-timeout", type=float, default=300.0, help="seconds an upload's safety checks and trial load may take")
    s.add_argument("--api-nice", type=int, default=10, help="the API threads' nice value above the workers' (0-19)")
    s.add_argument("--auth-token-file", type=Path, help="require this bearer token on every RPC but health")
    s.add_argument("--tls-cert", type=Path, help="serve TLS with this PEM certificate (with --tls-key)")
    s.add_argument("--tls-key", type=Path, help="the certificate's PEM private key")
    s.set_defaults(fn=cmd_serve)

    s = sub.add_parser("upload", help="upload a teacher, a student, or a student's pretrained weights; prints its model id")
    s.add_argument("path")
    s.add_argument("--name", default="")
    s.add_argument("--architecture", default="", help="registry or timm name; required for weights (state_dict, safetensors)")
    s.add_argument("--format", choices=["torchscript", "exported_program", "state_dict", "safetensors", "onnx"], help="default: detected")
    s.set_defaults(fn=cmd_upload)

    s = sub.add_parser("submit", help="create a job from a spec file and/or flags; prints its id")
    s.add_argument("spec", nargs="?", help="job spec, YAML or JSON (see README)")
    s.add_argument("--teacher", help="teacher model id")
    s.add_argument("--student", help="student architecture (registry or timm name)")
    s.add_argument("--student-init", help="model id of uploaded weights the student starts from (pretrained)")
    s.add_argument("--dataset", help="generated, or a torchvision name (MNIST, CIFAR10, ...)")
    s.add_argument("--data-path", help="torchvision root, relative to the server's data root (default: the data root)")
    s.add_argument("--epochs", type=int)
    s.add_argument("--batch-size", type=int)
    s.add_argument("--lr", type=float)
    s.add_argument("--temperature", type=float)
    s.add_argument("--alpha", type=float)
    s.add_argument("--data-free", choices=["auto", "dfad", "bn_prior"], help="distil without training data")
    s.add_argument("--input-shape", help="data-free or benchmark-only without a dataset: the input as C,H,W (e.g. 1,28,28)")
    s.add_argument("--iterations", type=int, help="data-free: generator iterations")
    s.add_argument("--benchmark-only", metavar="STUDENT_MODEL_ID", help="no training: report the teacher against this uploaded model")
    s.add_argument("--device", choices=["cpu", "cuda"])
    s.add_argument("--processes-per-node", type=int, help="distributed: training processes per node (one per GPU)")
    s.add_argument("--nodes", type=int, help="distributed: nodes training together (submit to each node's server)")
    s.add_argument("--rendezvous-endpoint", metavar="HOST:PORT", help="distributed, several nodes: where they meet")
    s.add_argument("--run-id", help="distributed: nodes with the same id train together (default: from the spec)")
    s.add_argument("--search", nargs="?", const="", metavar="FILE",
                   help="a search job: the spec's search block, or the one in FILE (YAML or JSON, see README)")
    s.add_argument("--trials", type=int, help="search: how many trials")
    s.add_argument("--request-id", help="idempotency key (default: random)")
    s.add_argument("--wait", action="store_true", help="follow the job with a progress bar until it ends")
    s.set_defaults(fn=cmd_submit)

    s = sub.add_parser("status", help="a job, as JSON")
    s.add_argument("job_id")
    s.set_defaults(fn=cmd_status)

    s = sub.add_parser("list", help="jobs, newest first")
    s.add_argument("--state", choices=["queued", "running", "succeeded", "failed", "cancelled"])
    s.set_defaults(fn=cmd_list)

    s = sub.add_parser("cancel", help="cancel a queued or running job")
    s.add_argument("job_id")
    s.set_defaults(fn=cmd_cancel)

    s = sub.add_parser("retry", help="queue a failed job again: after training when its student.pt exists, else from its checkpoint")
    s.add_argument("job_id")
    s.add_argument("--wait", action="store_true", help="follow it to the end; exit 1 unless it succeeds")
    s.set_defaults(fn=cmd_retry)

    s = sub.add_parser("report", help="a finished job's report")
    s.add_argument("job_id")
    s.add_argument("--format", choices=["md", "json", "html"], default="md")
    s.add_argument("-o", "--output", help="write to this file instead of stdout")
    s.add_argument("--open", action="store_true", help="write the HTML report (to --output or report-JOB.html) and open it in a browser")
    s.set_defaults(fn=cmd_report)

    s = sub.add_parser("download", help="download artifacts (all when none are named)")
    s.add_argument("job_id")
    s.add_argument("names", nargs="*")
    s.add_argument("-o", "--output", default=".")
    s.set_defaults(fn=cmd_download)

    s = sub.add_parser("health", help="exit 0 when the server reports SERVING (grpc.health.v1)")
    s.add_argument("--timeout", type=float, default=5.0)
    s.set_defaults(fn=cmd_health)

    s = sub.add_parser("demo", help="train a teacher, distil it through a real server, print the report")
    s.add_argument("-o", "--output", default="demo-output")
    s.set_defaults(fn=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.fn(args)
    except grpc.RpcError as e:
        print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as e:  # bad flags, missing files: a message, not a traceback
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
