"""Latency of any callable on a fixed input, and the size of a model.

The timing harness is runtime-agnostic: a PyTorch model and an onnxruntime
session are both just ``fn(batch)``, so they are measured the same way.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class LatencyStats:
    batch_size: int
    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    stdev_ms: float

    @property
    def throughput_per_s(self) -> float:
        return 1000.0 * self.batch_size / self.p50_ms if self.p50_ms > 0 else 0.0


def measure_latency(
    fn: Callable[[Any], Any],
    batch: Any,
    batch_size: int,
    warmup_runs: int = 10,
    min_runs: int = 30,
    min_seconds: float = 1.0,
    max_runs: int = 10_000,
    synchronize: Callable[[], None] | None = None,
) -> LatencyStats:
    """Warm up, then time ``fn(batch)`` until both ``min_runs`` and ``min_seconds`` are reached."""
    for _ in range(warmup_runs):
        fn(batch)
    if synchronize:
        synchronize()
    times: list[float] = []
    deadline = time.perf_counter() + min_seconds
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() < deadline):
        start = time.perf_counter()
        fn(batch)
        if synchronize:
            synchronize()
        times.append((time.perf_counter() - start) * 1000.0)
    times.sort()

    def percentile(q: float) -> float:
        return times[min(len(times) - 1, round(q * (len(times) - 1)))]

    return LatencyStats(
        batch_size=batch_size,
        runs=len(times),
        p50_ms=statistics.median(times),
        p90_ms=percentile(0.90),
        p99_ms=percentile(0.99),
        mean_ms=statistics.fmean(times),
        stdev_ms=statistics.stdev(times) if len(times) > 1 else 0.0,
    )


def torch_runner(model: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model`` under inference_mode, as it would serve."""

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(x)

    return run


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: Callable[[torch.Tensor], torch.Tensor], input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates for one sample (torch's flop counter counts 2 per MAC)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(torch.zeros(1, *input_shape))
    return counter.get_total_flops() // 2
