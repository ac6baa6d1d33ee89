"""Server lifecycle: build the grpc.aio server, serve, shut down cleanly on a signal."""

from __future__ import annotations

import asyncio
import logging
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from protos.distillery.v1 import distillery_pb2 as pb
from protos.distillery.v1 import distillery_pb2_grpc as pb_grpc
from service.auth import BearerTokenInterceptor, read_token
from service.config import ServerConfig
from service.servicer import DistillationServicer
from service.store import Store, StoreThread
from service.supervisor import Supervisor

log = logging.getLogger("distillery.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["DistillationService"].full_name
# The line a launcher waits for; the port follows it.
READY_PREFIX = "distillery listening on port "


def lower_api_priority(nice: int) -> None:
    """Make this thread, and every thread it starts from now on (gRPC's, asyncio's), ``nice`` nicer.

    On Linux the nice value belongs to a thread, and a new thread or process
    inherits its creator's. Under a flood of RPCs the API, not the training,
    waits: 50 clients polling every 5 ms slowed training 2.19x at equal
    priority and 1.08x at nice 10, GetJob p99 47.7 and 45.7 ms
    (bench/load.py --think-ms 5 --seconds 30, 2 cores).
    """
    if nice and sys.platform.startswith("linux"):
        os.nice(nice)


async def serve(config: ServerConfig) -> None:
    """Serve until SIGTERM or SIGINT, then drain: health NOT_SERVING, requeue running jobs, stop."""
    config.make_dirs()
    store = StoreThread(Store(config.db_path))  # SQLite off the event loop, on one thread of its own
    supervisor = Supervisor(config, store)  # its worker-starting thread keeps the original priority
    supervisor.recover()
    supervisor.start_forkserver()  # from that thread too: workers inherit the forkserver's priority
    lower_api_priority(config.api_nice)

    message_limit = config.max_message_bytes
    interceptors = [BearerTokenInterceptor(read_token(config.auth_token_file))] if config.auth_token_file else []
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", message_limit),
            ("grpc.max_send_message_length", message_limit),
        ],
    )
    servicer = DistillationServicer(config, store, supervisor)
    pb_grpc.add_DistillationServiceServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    address = f"{config.host}:{config.port}"
    if config.tls_cert and config.tls_key:
        credentials = grpc.ssl_server_credentials([(config.tls_key.read_bytes(), config.tls_cert.read_bytes())])
        port = server.add_secure_port(address, credentials)
    else:
        port = server.add_insecure_port(address)
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    supervisor_task = asyncio.create_task(supervisor.run())
    print(f"{READY_PREFIX}{port}", flush=True)
    log.info(
        "serving on %s:%d (%s, %s), data in %s",
        config.host,
        port,
        "TLS" if config.tls_cert else "plaintext",
        "bearer token required" if interceptors else "no authentication",
        config.data_dir,
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()

    log.info("shutting down")
    supervisor.accepting = False  # before health flips: a client that sees NOT_SERVING gets UNAVAILABLE too
    await health_servicer.enter_graceful_shutdown()
    await supervisor.shutdown()
    await supervisor_task
    await server.stop(grace=5)
    store.close()


def spawn_server(data_dir: Path, extra_args: list[str] | None = None, timeout: float = 60) -> tuple[subprocess.Popen, str]:
    """Start ``distillery serve`` as a child process on a free port; returns (process, address).

    For the demo and the tests: a real server process on a real port.
    """
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--data-dir", str(data_dir), "--port", "0", "--host", "127.0.0.1", *(extra_args or [])],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    line = process.stdout.readline() if ready else ""
    if not line.startswith(READY_PREFIX):
        process.kill()
        raise RuntimeError(f"the server did not start within {timeout} s (said {line!r})")
    return process, f"127.0.0.1:{int(line[len(READY_PREFIX):])}"


def stop_server(process: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM, and wait for the drain; a server that outlives ``timeout`` is killed, and the error raised."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise
