"""Can the latency numbers be trusted? Two checks, one run.

1. Stability: the harness (distill.benchmark) times the same models three
   times; the p50 spread (max - min over the median) per variant and batch
   size should stay under 10% on this machine. Measured both ways: copies
   taking turns in one call (how a report's variants are measured) and whole
   measurements one after another (adds the machine's drift).
2. Agreement: a finished job's report (report.json) is checked against an
   independent timing of its own student.onnx: a fresh onnxruntime session
   and a plain ``timeit`` loop, none of the harness's code; each p50 should
   agree within 15%.

    make demo                                     # leaves demo-output/report.json and student.onnx
    python bench/latency_stability.py --report-dir demo-output

Writes bench/results/latency-stability.md and prints it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import timeit
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from distill import allocator, benchmark, models
from distill.benchmark import Runner, TimingPlan
from exporters import onnx_export
from exporters.runtimes import onnxruntime as ort_runtime

RESULTS = Path(__file__).resolve().parent / "results"


def stability(repeats: int, threads: int, tmp: Path) -> list[str]:
    """The same models measured ``repeats`` times: together (taking turns) and one after another."""
    torch.set_num_threads(threads)
    teacher, student = (models.build(name, 10, 1).eval() for name in ("lenet5", "lenet5_half"))
    onnx_path = onnx_export.export_onnx(student, torch.randn(2, 1, 28, 28), tmp / "student.onnx").path
    runners = {
        "teacher / pytorch": Runner(open=lambda: benchmark.torch_runner(teacher), prepare=lambda b: b),
        "student / pytorch": Runner(open=lambda: benchmark.torch_runner(student), prepare=lambda b: b),
        "student / onnxruntime": Runner(
            open=lambda: ort_runtime.runner(ort_runtime.session(onnx_path, threads)), prepare=lambda b: b.numpy()
        ),
    }
    plan = TimingPlan(batch_sizes=(1, 8, 32, 128))
    batches = {n: torch.randn(n, 1, 28, 28) for n in plan.batch_sizes}
    # As a report measures variants: copies of each model in one call, taking turns.
    copies = {f"{name} #{i}": runner for name, runner in runners.items() for i in range(repeats)}
    together = benchmark.measure_runners(copies, batches.__getitem__, plan)
    # One full measurement after another: adds the machine's drift between them.
    apart = [benchmark.measure_runners(runners, batches.__getitem__, plan) for _ in range(repeats)]

    lines = [
        f"## 1. Stability: each model timed {repeats} times in one run ({threads} threads)",
        "",
        "Spread: (max - min) / median of the p50s. *Together*: the copies measured in one harness call, taking "
        "turns, as a report's variants are. *Apart*: whole measurements one after another.",
        "",
        "| variant | batch | p50 ms, together | spread | p50 ms, apart | spread |",
        "|---|---:|---|---:|---|---:|",
    ]
    worst = {"together": 0.0, "apart": 0.0}
    for name in runners:
        for i, batch_size in enumerate(plan.batch_sizes):
            cells = []
            for kind, p50s in (
                ("together", [together[f"{name} #{r}"][i].p50_ms for r in range(repeats)]),
                ("apart", [run[name][i].p50_ms for run in apart]),
            ):
                spread = (max(p50s) - min(p50s)) / statistics.median(p50s)
                worst[kind] = max(worst[kind], spread)
                cells += [" / ".join(f"{p:.3f}" for p in p50s), f"{100 * spread:.1f}%"]
            lines.append(f"| {name} | {batch_size} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Worst spread: {100 * worst['together']:.1f}% together, {100 * worst['apart']:.1f}% apart "
        "(target: under 10%).",
        "",
    ]
    return lines


def agreement(report_dir: Path, seconds: float) -> list[str]:
    """The report's onnxruntime p50s against a timeit loop over a fresh session of the same file."""
    report = json.loads((report_dir / "report.json").read_text())
    threads = int(report["environment"]["num_threads"])
    shape = [int(n) for n in report["student"]["input_shape"]]
    variant = next(v for v in report["variants"] if v["name"] == "student / onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(report_dir / "student.onnx"), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    lines = [
        f"## 2. The report against an independent timing of its own student.onnx ({threads} threads)",
        "",
        f"Report: job {report['job_id']}. {report.get('summary', '')}.",
        "",
        "| batch | report p50 ms | timeit median ms | ratio | within 15% |",
        "|---:|---:|---:|---:|---|",
    ]
    for lat in variant["latency"]:
        batch_size = int(lat["batch_size"])
        feed = {input_name: np.random.default_rng(0).standard_normal((batch_size, *shape), dtype=np.float32)}
        call = lambda: session.run(None, feed)  # noqa: E731
        call()
        once = timeit.timeit(call, number=5) / 5
        number = max(1, int(0.05 / max(once, 1e-7)))  # ~50 ms per timing, many timings
        repeat = max(5, int(seconds / max(once * number, 1e-7)))
        ours = 1000 * statistics.median(t / number for t in timeit.repeat(call, number=number, repeat=repeat))
        theirs = float(lat["p50_ms"])
        ratio = theirs / ours
        lines.append(
            f"| {batch_size} | {theirs:.3f} | {ours:.3f} | {ratio:.2f} | {'yes' if abs(ratio - 1) <= 0.15 else '**no**'} |"
        )
    if "student_lowest_latency" in report:
        low, high = report["student_lowest_latency"], report["student_highest_throughput"]
        lines += [
            "",
            f"The report names {low['variant']} at batch {low['batch_size']} as the student's lowest latency and "
            f"{high['variant']} at batch {high['batch_size']} as its highest throughput.",
        ]
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--report-dir", type=Path, help="a job's downloaded artifacts (report.json, student.onnx)")
    parser.add_argument("--seconds", type=float, default=2.0, help="timeit budget per batch size")
    args = parser.parse_args()
    allocator.keep_freed_memory()  # as the worker does: no mmap/munmap churn per call at large batch sizes

    with tempfile.TemporaryDirectory() as tmp:
        lines = ["# Latency harness: stability and agreement", ""] + stability(args.repeats, args.threads, Path(tmp))
    if args.report_dir:
        lines += agreement(args.report_dir, args.seconds)
    text = "\n".join(lines)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latency-stability.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
