"""The evaluate, export and benchmark stages: every model in every runtime, scored and timed on the same inputs."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import onnxruntime
import torch

from distill.benchmark import LatencyStats, Runner, count_macs, count_parameters, measure_runners, torch_runner
from distill.data import ImageData, Normalization, resize
from distill.evaluate import AccuracyResult, accuracy
from distill.trainer import predict
from exporters import onnx_export, onnx_teacher, quantize
from protos.distillery.v1 import distillery_pb2 as pb
from service import specs
from service.job_context import JobContext

log = logging.getLogger("distillery.worker")

PARITY_SAMPLES = 1000
CALIBRATION_SAMPLES = 512  # INT8 activation ranges: min/max over this many evaluation inputs
CPU_EP, CUDA_EP = "CPUExecutionProvider", "CUDAExecutionProvider"


@dataclass
class EvalInputs:
    """What evaluation, export parity and benchmarks run on: the validation split, or generated images.

    Generated images are already normalised and carry no labels.
    """

    val: ImageData | torch.Tensor
    normalization: Normalization | None = None
    size: tuple[int, int] | None = None  # (height, width) to resize to; None: as they are

    def resized(self, size: tuple[int, int]) -> EvalInputs:
        return EvalInputs(self.val, self.normalization, size)

    def fit(self, batch: torch.Tensor) -> torch.Tensor:
        """A batch of the native inputs at this view's size."""
        return resize(batch, self.size) if self.size else batch

    @property
    def labels(self) -> torch.Tensor | None:
        return self.val.labels if isinstance(self.val, ImageData) else None

    def __len__(self) -> int:
        return len(self.val)

    def take(self, index: torch.Tensor) -> torch.Tensor:
        if isinstance(self.val, ImageData):
            assert self.normalization is not None
            return self.fit(self.normalization.apply(self.val.images[index]))
        return self.fit(self.val[index])

    def first(self, count: int) -> torch.Tensor:
        return self.take(torch.arange(min(count, len(self))))

    def batches(self, batch_size: int = 512) -> Iterator[torch.Tensor]:
        for start in range(0, len(self), batch_size):
            yield self.take(torch.arange(start, min(start + batch_size, len(self))))

    def score(self, logits: torch.Tensor, teacher_logits: torch.Tensor) -> AccuracyResult | None:
        return accuracy(logits, self.labels, teacher_logits) if self.labels is not None else None


@dataclass
class Variant:
    """One model in one runtime, as the report's side-by-side table shows it."""

    model: str  # teacher | student
    runtime: str  # pytorch | onnxruntime
    runner: Runner
    logits: torch.Tensor  # on the evaluation inputs
    file_size: int
    parameters: int
    macs: int
    device: str
    execution_provider: str = ""
    precision: str = "fp32"  # fp32 | int8 static | int8 dynamic
    artifact: str = ""  # the shipped file it runs from
    parity: onnx_export.ParityResult | None = None  # a student's ONNX variant against the PyTorch FP32 student

    @property
    def name(self) -> str:
        precision = f" {self.precision}" if self.precision != "fp32" else ""
        suffix = " (CUDA)" if self.execution_provider == CUDA_EP else ""
        return f"{self.model} / {self.runtime}{precision}{suffix}"


def torch_variant(
    role: str,
    model: torch.nn.Module,
    logits: torch.Tensor,
    file_size: int,
    shape: tuple[int, int, int],
    device: str,
    onnx: bool = False,
    artifact: str = "",
    inputs: EvalInputs | None = None,
) -> Variant:
    """A model as loaded: PyTorch, or an uploaded ONNX file run by onnxruntime behind a module.

    ``inputs``: the view of the evaluation inputs it is timed on, when not the native one.
    """
    if onnx:
        parameters, device = onnx_teacher.parameter_count(model), "cpu"
        macs = _macs(lambda: onnx_teacher.mac_count(model, shape))
    else:
        parameters, macs = count_parameters(model), _macs(lambda: count_macs(model, shape, device))
    runner = Runner(
        open=lambda: torch_runner(model),
        prepare=lambda batch: (inputs.fit(batch) if inputs else batch).to(device),
        on_cuda=device.startswith("cuda"),
    )
    return Variant(role, "onnxruntime" if onnx else "pytorch", runner, logits, file_size, parameters, macs, device,
                   CPU_EP if onnx else "", artifact=artifact)


@dataclass
class Exported:
    summary: pb.ExportSummary | None  # None: an uploaded student that onnxruntime could not take (see notes)
    variants: list[Variant] = field(default_factory=list)  # the student's, in onnxruntime
    notes: list[str] = field(default_factory=list)  # what was skipped and why, for the report


def export(
    ctx: JobContext, plan: specs.JobPlan, model: torch.nn.Module, inputs: EvalInputs, fp32: Variant
) -> Exported:
    """student.onnx, checked against PyTorch, and its onnxruntime variants (CPU, and CUDA when present).

    ``fp32``: the student's PyTorch variant. A distilled student must export.
    An uploaded PyTorch student that will not is still benchmarked in
    PyTorch; the notes say why not in onnxruntime.
    """
    options = plan.export
    parity_inputs = inputs.first(PARITY_SAMPLES)
    path = ctx.output("student.onnx")
    try:
        exported = onnx_export.export_onnx(model, parity_inputs[:2], path, options.opset, options.dynamic_batch,
                                           options.exporters)
        session = onnx_export.session(path, num_threads=ctx.threads)
        parity = onnx_export.validate(session, model, parity_inputs, options.parity_tolerance,
                                      options.parity_relative_tolerance)
    except (onnx_export.ExportError, onnx_export.ParityError) as e:
        if not plan.benchmark_only:
            raise
        ctx.outputs.pop("student.onnx")
        return Exported(None, notes=[f"the uploaded student was not measured in onnxruntime: {e}"])
    timing_threads = plan.benchmark.num_threads or ctx.threads
    # Each variant's parity is against the student in PyTorch on the CPU (on a GPU, TF32 convolutions alone differ by ~1e-3).
    reference = fp32.logits if fp32.device == "cpu" else predict(model, inputs.batches(), "cpu")
    providers = [CPU_EP] + ([CUDA_EP] if CUDA_EP in onnxruntime.get_available_providers() else [])
    result = Exported(pb.ExportSummary(
        opset=exported.opset,
        exporter=exported.exporter,
        parity_max_abs_diff=parity.max_abs_diff,
        parity_max_rel_diff=parity.max_rel_diff,
        parity_top1_mismatch=100 * parity.top1_mismatch,
        parity_tolerance=parity.tolerance,
        parity_relative_tolerance=parity.relative_tolerance,
        parity_samples=parity.samples,
        dynamic_batch=options.dynamic_batch,
        accuracy_budget=options.accuracy_budget,
        input_shape=parity_inputs.shape[1:],
    ))
    result.variants += [_onnx_variant(ctx, options, fp32, reference, "student.onnx", inputs, p, timing_threads) for p in providers]
    reduced = []  # a benchmark-only job measures the models it was given, nothing more
    if options.int8 and not plan.benchmark_only:
        reduced += [(quantize.STATIC, "student.int8.onnx"), (quantize.DYNAMIC, "student.int8-dynamic.onnx")]
    if options.fp16 and not plan.benchmark_only:
        reduced.append((quantize.FP16, "student.fp16.onnx"))
    # Calibration (static INT8): the inputs the student is evaluated on (generated ones for a data-free job).
    calibration = [x.numpy() for x in inputs.first(CALIBRATION_SAMPLES).split(64)]
    for kind, name in reduced:
        try:
            quantize.reduce_precision(path, ctx.workdir / name, kind, calibration)
        except Exception as e:  # an op onnxruntime cannot convert: ship the rest, say why
            log.warning("%s failed", kind, exc_info=True)
            result.notes.append(f"no {kind} variant: {str(e).splitlines()[0][:300]}")
            continue
        ctx.output(name)
        result.variants.append(_onnx_variant(ctx, options, fp32, reference, name, inputs, CPU_EP, timing_threads, precision=kind))
    return result


def teacher_in_onnxruntime(
    ctx: JobContext, plan: specs.JobPlan, teacher: torch.nn.Module, in_pytorch: Variant, inputs: EvalInputs
) -> tuple[Variant | None, str]:
    """The teacher exported to ONNX and run by onnxruntime (CPU), so that the student is compared like for like.

    Not shipped. A teacher that does not export, or whose file does not match it, is timed in PyTorch only;
    the returned note says why.
    """
    options = plan.export
    path = ctx.workdir / "teacher.onnx"
    parity_inputs = inputs.first(PARITY_SAMPLES)
    try:
        onnx_export.export_onnx(teacher, parity_inputs[:2], path, options.opset, True, options.exporters)
        session = onnx_export.session(path, num_threads=ctx.threads)
        onnx_export.validate(session, teacher, parity_inputs, options.parity_tolerance, options.parity_relative_tolerance)
    except (onnx_export.ExportError, onnx_export.ParityError) as e:
        return None, f"the teacher was timed in PyTorch only, not in onnxruntime: {str(e)[:300]}"
    logits = torch.from_numpy(onnx_export.predict(session, (x.numpy() for x in inputs.batches())))
    timing_threads = plan.benchmark.num_threads or ctx.threads
    runner = Runner(
        open=lambda: onnx_export.runner(onnx_export.session(path, timing_threads, [CPU_EP])),
        prepare=lambda batch: batch.numpy(),
        max_batch=onnx_export.static_batch(session),
    )
    return Variant("teacher", "onnxruntime", runner, logits, path.stat().st_size, in_pytorch.parameters,
                   in_pytorch.macs, "cpu", CPU_EP), ""


def _onnx_variant(
    ctx: JobContext, options: specs.ExportPlan, fp32: Variant, reference: torch.Tensor, name: str, inputs: EvalInputs,
    provider: str, timing_threads: int, precision: str = "fp32",
) -> Variant:
    """A shipped ONNX file in onnxruntime: its logits and parity on the evaluation inputs, and how to time it."""
    path = ctx.outputs[name]
    session = onnx_export.session(path, ctx.threads, [provider])
    logits = torch.from_numpy(onnx_export.predict(session, (x.numpy() for x in inputs.batches())))
    runner = Runner(
        open=lambda: onnx_export.runner(onnx_export.session(path, timing_threads, [provider])),
        prepare=lambda batch: inputs.fit(batch).numpy(),
        max_batch=onnx_export.static_batch(session),
    )
    device = "cuda" if provider == CUDA_EP else "cpu"
    parity = onnx_export.compare(logits.numpy(), reference.float().numpy(), options.parity_tolerance,
                                 options.parity_relative_tolerance)
    return Variant("student", "onnxruntime", runner, logits, path.stat().st_size, fp32.parameters, fp32.macs, device,
                   provider, precision, name, parity)


def benchmark(
    ctx: JobContext, plan: specs.BenchmarkPlan, variants: list[Variant], inputs: EvalInputs
) -> tuple[dict[str, list[LatencyStats]], list[str]]:
    """Latency of every variant at every batch size, on real inputs, with the same threads; and what was skipped."""
    torch.set_num_threads(plan.num_threads or ctx.threads)
    notes: list[str] = []
    latency = measure_runners(
        {v.name: v.runner for v in variants},
        lambda batch_size: inputs.take(torch.arange(batch_size) % len(inputs)),
        plan.timing,
        on_skip=lambda name, batch_size, why: notes.append(f"{name} skipped batch {batch_size} and larger: {why}"),
    )
    return latency, notes


def _macs(count: Callable[[], int]) -> int:
    """The count, or 0 ("-" in the report): a number in a table must not fail the job."""
    try:
        return count()
    except Exception:  # an opaque model may not run under the flop counter, an odd graph may not parse
        log.warning("could not count MACs", exc_info=True)
        return 0
