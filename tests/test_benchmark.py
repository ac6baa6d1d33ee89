"""The latency harness: percentiles, peak memory, out-of-memory batch sizes."""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest
import torch

from distill import benchmark
from distill.benchmark import Runner, TimingPlan


def test_percentiles_match_numpy() -> None:
    values = sorted(np.random.default_rng(0).exponential(size=101).tolist())
    for q in (0.5, 0.9, 0.95, 0.99):
        assert benchmark.percentile(values, q) == pytest.approx(np.percentile(values, 100 * q))


def test_measure_latency_orders_its_statistics() -> None:
    stats = benchmark.measure_latency(lambda x: x @ x, torch.randn(64, 64), 1, warmup_runs=2, min_runs=50, min_seconds=0.0)
    assert stats.runs == 50
    assert 0 < stats.p50_ms <= stats.p90_ms <= stats.p95_ms <= stats.p99_ms
    assert stats.throughput_per_s == pytest.approx(1000 / stats.p50_ms)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS is read from /proc")
def test_peak_memory_sees_what_each_call_allocates() -> None:
    def allocate_64mb(_: object) -> float:
        block = torch.ones(16 * 1024 * 1024)  # 64 MiB, touched
        return float(block[-1])

    big = benchmark.measure_latency(allocate_64mb, None, 1, warmup_runs=1, min_runs=3, min_seconds=0.0)
    small = benchmark.measure_latency(lambda _: 1 + 1, None, 1, warmup_runs=1, min_runs=3, min_seconds=0.0)
    assert big.peak_memory_bytes is not None and small.peak_memory_bytes is not None
    assert big.peak_memory_bytes >= 60 * 2**20
    assert small.peak_memory_bytes < 8 * 2**20


def test_a_runner_out_of_memory_skips_that_batch_size_and_larger_ones() -> None:
    def needs_little_memory(batch: torch.Tensor) -> torch.Tensor:
        if len(batch) >= 8:
            raise MemoryError("std::bad_alloc")
        return batch.sum()

    skipped: list[tuple[str, int]] = []
    plan = TimingPlan(batch_sizes=(1, 8, 32), warmup_runs=1, min_runs=3, min_seconds=0.0)
    results = benchmark.measure_runners(
        {
            "small": Runner(open=lambda: needs_little_memory, prepare=lambda b: b),
            "fine": Runner(open=lambda: torch.sum, prepare=lambda b: b),
        },
        lambda n: torch.zeros(n, 4),
        plan,
        on_skip=lambda name, batch_size, why: skipped.append((name, batch_size)),
    )
    assert [s.batch_size for s in results["small"]] == [1]
    assert [s.batch_size for s in results["fine"]] == [1, 8, 32]
    assert skipped == [("small", 8)]


def test_other_errors_are_not_taken_for_out_of_memory() -> None:
    def broken(_: torch.Tensor) -> None:
        raise ValueError("shape mismatch")

    with pytest.raises(ValueError, match="shape mismatch"):
        benchmark.measure_runners(
            {"broken": Runner(open=lambda: broken, prepare=lambda b: b)}, torch.zeros, TimingPlan(batch_sizes=(1,))
        )


def test_runners_measured_together_take_turns() -> None:
    calls: list[str] = []
    plan = TimingPlan(batch_sizes=(1,), warmup_runs=0, min_runs=1, min_seconds=0.3)
    benchmark.measure_runners(
        {name: Runner(open=lambda name=name: lambda _: (calls.append(name), time.sleep(0.001)), prepare=lambda b: b)
         for name in "ab"},
        torch.zeros,
        plan,
    )
    # Both sample the whole stretch of time: a's timed calls do not all come before b's.
    assert calls.index("b") < len(calls) - 1 - calls[::-1].index("a")
    assert sum(1 for x, y in zip(calls, calls[1:]) if x != y) >= 4  # several turns each, not one block each
