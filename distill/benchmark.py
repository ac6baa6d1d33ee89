"""Latency and peak memory of any callable, and the size of a model.

The harness is runtime-agnostic: a PyTorch model and an onnxruntime session
are both just ``fn(batch)``, so they are measured the same way. Each
measurement warms up, then times single calls until both a minimum count and
a minimum time are reached; CUDA work is synchronised before the clock stops.
Variants measured together take turns, so they share the machine's state.
"""

from __future__ import annotations

import gc
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from distill import allocator

DEFAULT_BATCH_SIZES = (1, 8, 32, 128)


@dataclass(frozen=True)
class LatencyStats:
    batch_size: int
    runs: int
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    stdev_ms: float
    # Most memory the calls added above what was resident before (weights, sessions):
    # activations, workspaces, runtime arenas. Process RSS on CPU, allocator peak on CUDA.
    # None where the platform cannot tell.
    peak_memory_bytes: int | None = None

    @property
    def throughput_per_s(self) -> float:
        return 1000.0 * self.batch_size / self.p50_ms if self.p50_ms > 0 else 0.0


@dataclass(frozen=True)
class Runner:
    """One variant to time: ``open()`` gives the function, which takes what ``prepare`` makes of a CPU batch.

    ``open`` runs before each measurement so a runtime with its own memory
    arena (onnxruntime) can start from an empty one: its peak is then its own.
    """

    open: Callable[[], Callable[[Any], Any]]
    prepare: Callable[[torch.Tensor], Any]
    on_cuda: bool = False  # synchronise before reading the clock; CUDA memory stats
    max_batch: int | None = None  # a file exported for a fixed batch size takes no larger one


@dataclass(frozen=True)
class TimingPlan:
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    warmup_runs: int = 10
    min_runs: int = 30
    min_seconds: float = 1.0
    max_runs: int = 10_000


def measure_latency(
    fn: Callable[[Any], Any],
    batch: Any,
    batch_size: int,
    warmup_runs: int = 10,
    min_runs: int = 30,
    min_seconds: float = 1.0,
    max_runs: int = 10_000,
    on_cuda: bool = False,
) -> LatencyStats:
    """Warm up, then time ``fn(batch)`` until both ``min_runs`` and ``min_seconds`` are reached."""
    subject = _Subject(fn, batch, on_cuda)
    subject.warm_up(warmup_runs)
    _time_interleaved([subject], min_runs, min_seconds, max_runs)
    return subject.stats(batch_size)


def measure_runners(
    runners: dict[str, Runner],
    make_batch: Callable[[int], torch.Tensor],
    plan: TimingPlan,
    on_skip: Callable[[str, int, str], None] | None = None,
) -> dict[str, list[LatencyStats]]:
    """Every runner at every batch size; at each batch size the runners take turns.

    Turns of about 200 ms, round-robin, until every runner has its minimum
    runs and seconds (between turns the threads of the last runner are let
    go idle): on a shared machine whose speed drifts over seconds,
    all variants then sample the same stretch of time, so the ratios between
    them hold even when the absolute numbers move. A runner that runs out of
    memory at a batch size is not tried at larger ones (``on_skip(name,
    batch_size, reason)`` hears of it); the others go on.
    """
    results: dict[str, list[LatencyStats]] = {name: [] for name in runners}
    too_big: dict[str, int] = {}
    for batch_size in plan.batch_sizes:
        batch = make_batch(batch_size)
        subjects: dict[str, _Subject] = {}
        for name, runner in runners.items():
            if batch_size >= too_big.get(name, math.inf):
                continue
            if runner.max_batch is not None and batch_size > runner.max_batch:
                if on_skip:
                    on_skip(name, batch_size, f"it takes batches of {runner.max_batch} only (exported without a dynamic batch)")
                too_big[name] = batch_size
                continue
            subject = _Subject(runner.open(), runner.prepare(batch), runner.on_cuda)
            try:
                subject.warm_up(plan.warmup_runs)
            except Exception as error:
                if not is_out_of_memory(error):
                    raise
                too_big[name] = batch_size
                del subject
                if runner.on_cuda:
                    torch.cuda.empty_cache()
                if on_skip:
                    on_skip(name, batch_size, f"out of memory: {str(error).splitlines()[0][:200]}")
                continue
            subjects[name] = subject
        _time_interleaved(list(subjects.values()), plan.min_runs, plan.min_seconds, plan.max_runs)
        for name, subject in subjects.items():
            results[name].append(subject.stats(batch_size))
    return results


class _Subject:
    """One function on one input, with its timings so far."""

    def __init__(self, fn: Callable[[Any], Any], batch: Any, on_cuda: bool) -> None:
        self.fn, self.batch, self.on_cuda = fn, batch, on_cuda
        self.times_ms: list[float] = []
        self.timed_seconds = 0.0
        self.peak_memory_bytes: int | None = None

    def sync(self) -> None:
        if self.on_cuda:
            torch.cuda.synchronize()

    def warm_up(self, runs: int) -> None:
        """Warm-up calls (at least one), which are also where peak memory is read: a call's peak is the same
        warm or timed, and the first calls are where runtimes grow their arenas."""
        with _peak_memory(self.on_cuda) as peak:
            for _ in range(max(1, runs)):
                self.fn(self.batch)
            self.sync()
        self.peak_memory_bytes = peak.get("bytes")

    def time_for(self, seconds: float, pending: Callable[[_Subject], bool]) -> None:
        """One turn: timed calls for ``seconds``, or until the subject has what it needs."""
        turn_ends = time.perf_counter() + seconds
        while pending(self):
            start = time.perf_counter()
            self.fn(self.batch)
            self.sync()
            end = time.perf_counter()
            self.times_ms.append((end - start) * 1000.0)
            self.timed_seconds += end - start
            if end >= turn_ends:
                break

    def stats(self, batch_size: int) -> LatencyStats:
        times = sorted(self.times_ms)
        return LatencyStats(
            batch_size=batch_size,
            runs=len(times),
            p50_ms=percentile(times, 0.50),
            p90_ms=percentile(times, 0.90),
            p95_ms=percentile(times, 0.95),
            p99_ms=percentile(times, 0.99),
            mean_ms=statistics.fmean(times),
            stdev_ms=statistics.stdev(times) if len(times) > 1 else 0.0,
            peak_memory_bytes=self.peak_memory_bytes,
        )


def _time_interleaved(subjects: list[_Subject], min_runs: int, min_seconds: float, max_runs: int, turn_seconds: float = 0.2) -> None:
    """Round-robin turns until each subject has ``min_runs`` calls and ``min_seconds`` of timed calls."""

    def pending(s: _Subject) -> bool:
        return len(s.times_ms) < max_runs and (len(s.times_ms) < max(1, min_runs) or s.timed_seconds < min_seconds)

    collecting = gc.isenabled()
    gc.disable()  # as timeit does: a collection inside a timed call is not the model's cost
    try:
        while waiting := [s for s in subjects if pending(s)]:
            for subject in waiting:
                if len(subjects) > 1:
                    _wait_for_idle_threads()
                subject.time_for(turn_seconds, pending)
    finally:
        if collecting:
            gc.enable()


def _wait_for_idle_threads(probe_seconds: float = 0.005, max_seconds: float = 0.25) -> None:
    """Wait until this process's thread pools stop spinning (or ``max_seconds``).

    Runtimes keep their worker threads busy-waiting after a call, for the
    next one: onnxruntime's for about 50 ms, OpenMP's (PyTorch) for about 10
    ms, measured here. Started at once, the next variant's turn would share
    the cores with them (it measured 2x slower that way); a model served
    alone never meets another runtime's spinning threads.
    """
    deadline = time.perf_counter() + max_seconds
    while time.perf_counter() < deadline:
        cpu = time.process_time()
        time.sleep(probe_seconds)
        if time.process_time() - cpu < 0.2 * probe_seconds:  # under a fifth of one core: idle
            return


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA OOM, a failed host allocation, or onnxruntime's allocator giving up."""
    if isinstance(error, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    text = str(error).lower()
    return "out of memory" in text or "failed to allocate memory" in text or "bad_alloc" in text


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), on sorted input."""
    position = q * (len(sorted_values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


@contextmanager
def _peak_memory(on_cuda: bool) -> Iterator[dict[str, int]]:
    """Yields a dict that holds ``bytes`` (the peak added while the block ran) when it ends."""
    out: dict[str, int] = {}
    if on_cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        yield out
        torch.cuda.synchronize()
        out["bytes"] = max(0, torch.cuda.max_memory_allocated() - base)
        return
    base = _resident_bytes_after_reset()
    yield out
    peak = _status_kib("VmHWM")
    if base is not None and peak is not None:
        out["bytes"] = max(0, peak * 1024 - base)


def _resident_bytes_after_reset() -> int | None:
    """Trim freed heap pages, reset the kernel's resident high-water mark; the resident size now.

    Linux only: writing 5 to /proc/self/clear_refs resets VmHWM to the current RSS.
    """
    if not sys.platform.startswith("linux"):
        return None
    allocator.release_freed_memory()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    rss = _status_kib("VmRSS")
    return None if rss is None else rss * 1024


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def torch_runner(model: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model`` under inference_mode, as it would serve."""

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(x)

    return run


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: Callable[[torch.Tensor], torch.Tensor], input_shape: tuple[int, ...], device: str = "cpu") -> int:
    """Multiply-accumulates for one sample (torch's flop counter counts 2 per MAC).

    Attention is counted in full, as in the model's ONNX graph: nn.MultiheadAttention's
    inference fast path is one fused op the counter does not see (a ViT-B/16 would lose
    a third of its MACs), and the counter has no entry for CPU attention.
    """
    counter = FlopCounterMode(display=False, custom_mapping=_CPU_ATTENTION)
    fast_path = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with counter, torch.inference_mode():
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        torch.backends.mha.set_fastpath_enabled(fast_path)
    return counter.get_total_flops() // 2


def _attention_flops(query: Any, key: Any, value: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return sdpa_flop_count(query, key, value)  # the counter passes shapes


# A private aten op: looked up softly, so a torch without it loses the entry, not the import.
_CPU_ATTENTION_OP = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
_CPU_ATTENTION = {_CPU_ATTENTION_OP: _attention_flops} if _CPU_ATTENTION_OP is not None else {}
