"""The plumbing between a job's worker and its training processes (a distributed job).

The worker becomes torch.distributed's elastic agent for its node (what
torchrun runs); the ranks it starts train, and report how they ended in ways
the worker turns into a job's ending: a readable message and a status code
when one fails, a requeue when the server drains.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

from distill import distributed
from distill.loop import Interrupted
from service.errors import ServiceError, describe, status_code


class RankFailed(ServiceError):
    """A training process failed; carries the code its own error maps to."""

    def __init__(self, message: str, code: grpc.StatusCode) -> None:
        super().__init__(message)
        self.code = code


def _error_file(directory: Path, rank: int) -> Path:
    return directory / f"rank-{rank}.error.json"


@contextmanager
def reporting_errors(directory: Path, rank: int) -> Iterator[None]:
    """In a rank: leave the reason it failed where the worker will look (the exception still ends the rank)."""
    try:
        yield
    except Interrupted:
        raise  # the server is draining: not a failure
    except Exception as e:
        _error_file(directory, rank).write_text(json.dumps({"message": describe(e), "code": status_code(e).name}))
        raise


def run(plan: distributed.Launch, directory: Path, entrypoint: Callable[..., Any], *args: Any) -> dict[int, Any]:
    """``entrypoint(*args)`` on this node's ranks; their return values by global rank.

    Raises RankFailed with the failed rank's own message (one killed by a signal
    before the first to fail otherwise), or Interrupted
    when SIGTERM (the server draining) reached this process meanwhile.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("rank-*.error.json"):  # from an earlier attempt at the job
        stale.unlink()
    # The agent installs its own SIGTERM handler (it passes the signal on to the ranks); ours comes back after.
    previous = signal.getsignal(signal.SIGTERM)
    try:
        return distributed.launch(plan, entrypoint, *args)
    except SignalException as e:
        raise Interrupted("the server is shutting down") from e
    except ChildFailedError as e:
        # A process killed by a signal (the OOM killer, kill -9) is the cause: its peers then fail in a
        # collective with "connection closed", and their failures can carry an earlier timestamp.
        killed = sorted(r for r, f in e.failures.items() if f.exitcode < 0)
        rank, failure = (killed[0], e.failures[killed[0]]) if killed else e.get_first_failure()
        reported = _error_file(directory, rank)
        if reported.exists():
            error = json.loads(reported.read_text())
            raise RankFailed(f"training process {rank}: {error['message']}", grpc.StatusCode[error["code"]]) from None
        how = f"was killed by {failure.signal_name()}" if failure.exitcode < 0 else f"exited with code {failure.exitcode}"
        raise RankFailed(f"training process {rank} {how}", grpc.StatusCode.INTERNAL) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
