"""INT8 against FP32 in onnxruntime, side by side: top-1 and latency, one run.

The model is a trained network from bench/.cache (see bench/quality.py):
  --case cifar10: ResNet-20 (CIFAR-10, 0.27M parameters, 41M MACs), the
                  larger student;
  --case mnist:   LeNet-5 (MNIST).
Each is exported to ONNX, quantized the way a job does it (static QDQ
calibrated on 512 training images; dynamic), scored on the test split and
timed with the service's harness (variants taking turns).

    python bench/quality.py --case cifar10 --train-samples 10000 --seeds 1   # once, caches the model
    python bench/int8.py --case cifar10

Writes bench/results/int8-<case>.md and prints it.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from distill import allocator, benchmark, evaluate, models
from distill.benchmark import Runner, TimingPlan
from exporters import onnx_export, quantize
from exporters.runtimes import onnxruntime as ort_runtime

HERE = Path(__file__).resolve().parent
CASES = {"cifar10": ("resnet20_cifar", "teacher-cifar10-resnet20_cifar-10000.pt"), "mnist": ("lenet5", "teacher-mnist-lenet5-all.pt")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=CASES, default="cifar10")
    parser.add_argument("--test-samples", type=int, default=2000)
    args = parser.parse_args()
    allocator.keep_freed_memory()

    import quality  # bench/quality.py: the cached data and splits

    architecture, cached = CASES[args.case]
    splits = quality.load_case_data(args.case, 10_000 if args.case == "cifar10" else 0, args.test_samples)
    model = models.build(architecture, len(splits.train.classes), splits.train.input_shape[0])
    model.load_state_dict(torch.load(HERE / ".cache" / cached, weights_only=True))
    model.eval()
    test = splits.normalization.apply(splits.val.images)
    calibration = [x.numpy() for x in splits.normalization.apply(splits.train.images[:512]).split(64)]

    with tempfile.TemporaryDirectory() as tmp:
        files = {"fp32": onnx_export.export_onnx(model, test[:2], Path(tmp) / "fp32.onnx").path}
        for kind in (quantize.STATIC, quantize.DYNAMIC):
            files[kind] = quantize.reduce_precision(files["fp32"], Path(tmp) / f"{kind.replace(' ', '-')}.onnx", kind, calibration)
        threads = torch.get_num_threads()
        top1 = {}
        for name, path in files.items():
            logits = ort_runtime.predict(ort_runtime.session(path, threads), (x.numpy() for x in test.split(256)))
            top1[name] = evaluate.accuracy(torch.from_numpy(logits), splits.val.labels).top1
        runners = {
            name: Runner(open=lambda path=path: ort_runtime.runner(ort_runtime.session(path, threads)), prepare=lambda b: b.numpy())
            for name, path in files.items()
        }
        latency = benchmark.measure_runners(runners, lambda n: test[:n], TimingPlan(batch_sizes=(1, 32), min_seconds=3.0))
        sizes = {name: path.stat().st_size for name, path in files.items()}

    lines = [
        f"# INT8 vs FP32 in onnxruntime: {architecture} ({args.case})",
        "",
        f"{benchmark.count_parameters(model):,} parameters, {benchmark.count_macs(model, splits.train.input_shape) / 1e6:.1f}M MACs; "
        f"top-1 on {len(splits.val)} test images; p50 over at least 3 s per variant and batch size, the variants "
        f"taking turns; {threads} threads; `python bench/int8.py --case {args.case}`.",
        "",
        "| variant | top-1 % | Δ vs FP32 | file | p50 batch 1 ms | p50 batch 32 ms | batch-32 latency vs FP32 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    base = latency["fp32"][1].p50_ms
    for name in files:
        one, thirty_two = latency[name]
        lines.append(
            f"| {name} | {top1[name]:.2f} | {top1[name] - top1['fp32']:+.2f} | {sizes[name] / 1024:.0f} KB "
            f"| {one.p50_ms:.3f} | {thirty_two.p50_ms:.3f} | {thirty_two.p50_ms / base:.2f}x |"
        )
    text = "\n".join(lines) + "\n"
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / f"int8-{args.case}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
