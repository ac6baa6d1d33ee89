"""Upload inspection in a child process: bounded in memory and time, never on the event loop.

``model_formats.inspect`` reads archive directories, scans pickles and loads
the model as a job would. Run in the server it could stall every RPC or take
the process down (a zip bomb, a protobuf that declares gigabytes, a parser
that crashes). Here it runs in a process forked from the server's forkserver
(service/forkserver.py), torch and onnx imported already (a few ms a start,
not seconds), under RLIMIT_DATA and a deadline, at the API's priority; the
calling thread only waits.

Nothing in this module imports gRPC: the forkserver preloads this module and
stays free of gRPC's threads and sockets.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import os
import signal
from multiprocessing.connection import Connection
from pathlib import Path

from distill import allocator
from distill.model_checks import ArchiveLimits, ModelFileError
from service import forkserver, model_formats

# The runtime a child starts from is not counted; what inspection itself may allocate is this plus 4x the file
# (onnxruntime holds the parsed protobuf, the initializers and an optimised copy at once).
BASE_MEMORY_BYTES = 1 << 30
MEMORY_PER_FILE_BYTE = 4


class InspectionLimitError(Exception):
    """Inspecting the file needed more memory or time than this server allows it (RESOURCE_EXHAUSTED)."""


def memory_budget(file_bytes: int) -> int:
    return BASE_MEMORY_BYTES + MEMORY_PER_FILE_BYTE * file_bytes


class Inspector:
    """Runs ``model_formats.inspect`` in bounded child processes, at most ``concurrency`` at a time.

    Its own threads wait on the children, so a burst of uploads queues here
    instead of taking the threads other RPCs hand blocking work to.
    """

    def __init__(self, limits: ArchiveLimits, timeout_s: float, concurrency: int = 2, nice: int = 0) -> None:
        self.limits = limits
        self.timeout_s = timeout_s
        self.nice = nice  # how much nicer than the forkserver (the workers' priority) a child runs
        self._context = forkserver.context()
        self._waiters = concurrent.futures.ThreadPoolExecutor(concurrency, thread_name_prefix="inspect")

    async def run(self, path: Path) -> int:
        """``inspect`` on one of this inspector's threads; the event loop keeps serving meanwhile."""
        return await asyncio.get_running_loop().run_in_executor(self._waiters, self.inspect, path)

    def inspect(self, path: Path) -> int:
        """The file's ModelFormat. Blocks until the child answers, dies or runs out of time.

        Raises ModelFileError (a bad file, INVALID_ARGUMENT) or InspectionLimitError
        (over the memory or time limit, RESOURCE_EXHAUSTED); both say which limit.
        """
        budget = memory_budget(path.stat().st_size)
        receiver, sender = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_inspect_in_child, args=(sender, str(path), self.limits, budget, self.timeout_s, self.nice),
            name="distillery-inspect", daemon=True,
        )
        process.start()
        sender.close()
        try:
            reply = receiver.recv() if receiver.poll(self.timeout_s) else None
        except EOFError:  # the child died before answering
            reply = ()
        finally:
            receiver.close()
            if process.is_alive():
                process.kill()
            process.join()
        if reply is None:
            raise InspectionLimitError(f"inspecting the file took longer than this server's limit of {self.timeout_s:g} s (--inspect-timeout)")
        if not reply:
            raise _crashed(process.exitcode, budget)
        kind, value = reply
        if kind == "format":
            return value
        if kind == "memory":
            raise InspectionLimitError(
                f"inspecting the file needed more memory than its limit of {budget >> 20} MiB "
                f"(1 GiB + {MEMORY_PER_FILE_BYTE}x the file's size): {value}"
            )
        raise ModelFileError(value)


def _crashed(exitcode: int | None, budget: int) -> Exception:
    if exitcode == -signal.SIGKILL:
        return InspectionLimitError(f"inspecting the file was killed, likely for memory (limit {budget >> 20} MiB)")
    if exitcode == -signal.SIGALRM:
        return InspectionLimitError("inspecting the file ran past its deadline (--inspect-timeout)")
    how = f"exit code {exitcode}"
    if exitcode is not None and exitcode < 0:
        try:
            how = f"signal {signal.Signals(-exitcode).name}"
        except ValueError:  # a signal number Python has no name for
            how = f"signal {-exitcode}"
    return ModelFileError(f"the model loader crashed on this file ({how}); it is malformed")


def _inspect_in_child(reply: Connection, path: str, limits: ArchiveLimits, budget: int, timeout_s: float,
                      nice: int) -> None:
    signal.alarm(math.ceil(timeout_s) + 5)  # a second deadline, should the server die and leave this child behind
    forkserver.leave()
    if nice:
        os.nice(nice)  # API work: it yields to training, as the server's API threads do
    allocator.limit_memory(budget)
    try:
        answer = ("format", model_formats.inspect(Path(path), limits))
    except ModelFileError as e:
        answer = ("invalid", str(e))
    except BaseException as e:  # whatever a loader raises on a hostile file is the file's fault, not the server's
        if allocator.out_of_memory(e):
            answer = ("memory", allocator.out_of_memory(e)[:500])
        else:
            answer = ("invalid", f"cannot load the file: {_one_line(e)}")
    reply.send(answer)
    reply.close()


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:500] or type(error).__name__
