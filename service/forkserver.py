"""The server's forkserver: job workers and upload inspections are forked from it, its imports already done.

A spawned worker imported torch, timm, onnx, optuna and the engine itself
before doing anything (about 3 s of every job on 2 cores); a child of the
forkserver starts with them imported. The forkserver holds no gRPC state:
neither this module nor anything it preloads imports gRPC (the worker
imports its own in the child). It exits when the server does, and a worker
asks to be killed when it does (worker._die_with_parent).

Children inherit the forkserver's nice value: the server starts it from the
thread that starts workers, before it lowers its API threads' priority.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import multiprocessing.forkserver
import os

# Not openvino: its import starts a thread pool, which a fork would leave behind in a broken state. Nor
# scikit-learn (the specialists method imports it when it runs).
PRELOAD = [
    "service.inspection",
    "torch._export.serde.serialize",  # torch.export's deserializer, imported lazily and slowly
    "distill.engine",
    "distill.search",
    "exporters.onnx_export",
    "exporters.quantize",
    "timm",
    "matplotlib.pyplot",
]


def context() -> multiprocessing.context.ForkServerContext:
    """The forkserver start method, with the preload set (it applies when the forkserver starts)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def start() -> None:
    """Start the forkserver now; it imports in the background, and the first child waits for it."""
    context()
    multiprocessing.forkserver.ensure_running()


def leave() -> None:
    """In a child: let go of the forkserver's liveness pipe, so that the forkserver exits when the server does.

    Every child inherits the pipe's write end (multiprocessing keeps the forkserver up while any holder lives),
    and a worker is killed when the forkserver exits (worker._die_with_parent): holding it, the two would keep
    each other alive after the server died. The attribute is multiprocessing's own (3.11 to 3.13).
    """
    server = multiprocessing.forkserver._forkserver
    fd = getattr(server, "_forkserver_alive_fd", None)
    if fd is not None:
        os.close(fd)
        server._forkserver_alive_fd = None
