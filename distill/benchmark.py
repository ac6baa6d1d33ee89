"""Latency and peak memory of any callable, and the size of a model.

The harness is runtime-agnostic: a PyTorch model and an onnxruntime session
are both just ``fn(batch)``, so they are measured the same way. Each
measurement warms up, then times single calls until both a minimum count and
a minimum time are reached; CUDA work is synchronised before the clock stops.
"""

from __future__ import annotations

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
from torch.utils.flop_counter import FlopCounterMode

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
    sync = torch.cuda.synchronize if on_cuda else (lambda: None)
    times: list[float] = []
    with _peak_memory(on_cuda) as peak:
        for _ in range(warmup_runs):
            fn(batch)
        sync()
        deadline = time.perf_counter() + min_seconds
        while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() < deadline):
            start = time.perf_counter()
            fn(batch)
            sync()
            times.append((time.perf_counter() - start) * 1000.0)
    times.sort()
    return LatencyStats(
        batch_size=batch_size,
        runs=len(times),
        p50_ms=percentile(times, 0.50),
        p90_ms=percentile(times, 0.90),
        p95_ms=percentile(times, 0.95),
        p99_ms=percentile(times, 0.99),
        mean_ms=statistics.fmean(times),
        stdev_ms=statistics.stdev(times) if len(times) > 1 else 0.0,
        peak_memory_bytes=peak.get("bytes"),
    )


def measure_runners(
    runners: dict[str, Runner],
    make_batch: Callable[[int], torch.Tensor],
    plan: TimingPlan,
    on_skip: Callable[[str, int, str], None] | None = None,
) -> dict[str, list[LatencyStats]]:
    """Every runner at every batch size, batch sizes outermost so variants share conditions.

    A runner that runs out of memory at a batch size is not tried at larger
    ones (``on_skip(name, batch_size, reason)`` hears of it); the others go on.
    """
    results: dict[str, list[LatencyStats]] = {name: [] for name in runners}
    too_big: dict[str, int] = {}
    for batch_size in plan.batch_sizes:
        batch = make_batch(batch_size)
        for name, runner in runners.items():
            if batch_size >= too_big.get(name, math.inf):
                continue
            try:
                stats = measure_latency(
                    runner.open(),
                    runner.prepare(batch),
                    batch_size,
                    warmup_runs=plan.warmup_runs,
                    min_runs=plan.min_runs,
                    min_seconds=plan.min_seconds,
                    max_runs=plan.max_runs,
                    on_cuda=runner.on_cuda,
                )
            except Exception as error:
                if not is_out_of_memory(error):
                    raise
                too_big[name] = batch_size
                if runner.on_cuda:
                    torch.cuda.empty_cache()
                if on_skip:
                    on_skip(name, batch_size, f"out of memory: {str(error).splitlines()[0][:200]}")
                continue
            results[name].append(stats)
    return results


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
    """Multiply-accumulates for one sample (torch's flop counter counts 2 per MAC)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(torch.zeros(1, *input_shape, device=device))
    return counter.get_total_flops() // 2
