"""The evaluate, export and benchmark stages: every model in every runtime, scored and timed on the same inputs."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from distill.benchmark import LatencyStats, Runner, count_macs, count_parameters, measure_runners, torch_runner
from distill.data import Normalization, Split, inference_batch_size, resize
from distill.evaluate import AccuracyResult, accuracy
from distill.methods import SpecialistEnsemble
from distill.trainer import predict
from exporters import onnx_export, onnx_teacher, quantize, runtimes
from exporters.runtimes.onnxruntime import CPU_EP
from protos.distillery.v1 import distillery_pb2 as pb
from service import specs
from service.job_context import JobContext

log = logging.getLogger("distillery.worker")

PARITY_SAMPLES = 1000
CALIBRATION_SAMPLES = 512  # INT8 activation ranges: min/max over this many evaluation inputs


@dataclass
class EvalInputs:
    """What evaluation, export parity and benchmarks run on: the validation split, or generated images.

    Generated images are already normalised and carry no labels.
    """

    val: Split | torch.Tensor
    normalization: Normalization | None = None
    size: tuple[int, int] | None = None  # (height, width) to resize to; None: as they are

    def resized(self, size: tuple[int, int]) -> EvalInputs:
        return EvalInputs(self.val, self.normalization, size)

    def fit(self, batch: torch.Tensor) -> torch.Tensor:
        """A batch of the native inputs at this view's size."""
        return resize(batch, self.size) if self.size else batch

    @property
    def labels(self) -> torch.Tensor | None:
        return None if isinstance(self.val, torch.Tensor) else self.val.labels

    def __len__(self) -> int:
        return len(self.val)

    def take(self, index: torch.Tensor) -> torch.Tensor:
        """A few inputs (a streamed split decodes them here)."""
        if isinstance(self.val, torch.Tensor):
            return self.fit(self.val[index])
        assert self.normalization is not None
        return self.fit(self.normalization.apply(self.val.take(index)))

    def first(self, count: int) -> torch.Tensor:
        return self.take(torch.arange(min(count, len(self))))

    def batches(self, batch_size: int = 0) -> Iterator[torch.Tensor]:
        """Every input once, in order (a streamed split is decoded by worker processes); ``batch_size`` 0: as
        ``data.inference_batch_size`` sizes them for the native inputs."""
        batch_size = batch_size or inference_batch_size(tuple(self.val.shape[1:]) if isinstance(self.val, torch.Tensor) else self.val.input_shape)
        if isinstance(self.val, torch.Tensor):
            yield from (self.fit(x) for x in self.val.split(batch_size))
            return
        assert self.normalization is not None
        for batch in self.val.batches(batch_size):
            yield self.fit(self.normalization.apply(batch.images))

    def score(self, logits: torch.Tensor, teacher_logits: torch.Tensor) -> AccuracyResult | None:
        return accuracy(logits, self.labels, teacher_logits) if self.labels is not None else None


@dataclass
class Variant:
    """One model in one runtime, as the report's side-by-side table shows it."""

    model: str  # teacher | student
    runtime: str  # pytorch, or one of exporters.runtimes (onnxruntime, openvino)
    runner: Runner
    logits: torch.Tensor  # on the evaluation inputs
    file_size: int
    parameters: int
    macs: int
    device: str
    execution_provider: str = ""  # the runtime's target: an onnxruntime execution provider, an OpenVINO device
    precision: str = "fp32"  # fp32 | int8 static | int8 dynamic | fp16
    artifact: str = ""  # the shipped file it runs from
    parity: onnx_export.ParityResult | None = None  # a student's ONNX variant against the PyTorch FP32 student
    label: str = ""  # a target other than the runtime's default CPU one, e.g. "CUDA"

    @property
    def name(self) -> str:
        precision = f" {self.precision}" if self.precision != "fp32" else ""
        suffix = f" ({self.label})" if self.label else ""
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
        macs = macs_or_zero(lambda: onnx_teacher.mac_count(model, shape))
    else:
        parameters, macs = count_parameters(model), macs_or_zero(lambda: count_macs(model, shape, device))
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
    variants: list[Variant] = field(default_factory=list)  # the student's, in every runtime
    notes: list[str] = field(default_factory=list)  # what was skipped and why, for the report


def export(
    ctx: JobContext, plan: specs.JobPlan, model: torch.nn.Module, inputs: EvalInputs, fp32: Variant
) -> Exported:
    """student.onnx (checked against PyTorch in onnxruntime), its reduced precisions, and the student in every runtime.

    ``fp32``: the student's PyTorch variant. A distilled student must export.
    An uploaded PyTorch student that will not is still benchmarked in
    PyTorch; the notes say why not in the runtimes.
    """
    options = plan.export
    parity_inputs = inputs.first(PARITY_SAMPLES)
    path = ctx.output("student.onnx")
    try:
        exported = onnx_export.export_onnx(model, parity_inputs[:2], path, options.opset, options.dynamic_batch,
                                           options.exporters)
        parity = onnx_export.validate_file(path, model, parity_inputs, options.parity_tolerance,
                                           options.parity_relative_tolerance, ctx.threads)
    except (onnx_export.ExportError, onnx_export.ParityError) as e:
        if not plan.benchmark_only:
            raise
        ctx.outputs.pop("student.onnx")
        return Exported(None, notes=[f"the uploaded student was not measured in the ONNX runtimes: {e}"])
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
    files = {"fp32": path}
    reduced = []  # a benchmark-only job measures the models it was given, nothing more
    if options.int8 and not plan.benchmark_only:
        reduced += [(quantize.STATIC, "student.int8.onnx"), (quantize.DYNAMIC, "student.int8-dynamic.onnx")]
    if options.fp16 and not plan.benchmark_only:
        reduced.append((quantize.FP16, "student.fp16.onnx"))
    # Calibration (static INT8): the inputs the student is evaluated on (generated ones for a data-free job).
    calibration = [x.numpy() for x in inputs.first(CALIBRATION_SAMPLES).split(64)]
    # A specialists ensemble combines probabilities down to 1e-12 after its networks: 8 bits would erase them,
    # so only the networks' layers are quantized.
    only_ops = ("Conv", "MatMul", "Gemm") if isinstance(model, SpecialistEnsemble) else ()
    for kind, name in reduced:
        try:
            quantize.reduce_precision(path, ctx.workdir / name, kind, calibration, only_ops)
        except Exception as e:  # an op the quantizer cannot convert: ship the rest, say why
            log.warning("%s failed", kind, exc_info=True)
            result.notes.append(f"no {kind} variant: {str(e).splitlines()[0][:300]}")
            continue
        files[kind] = ctx.output(name)
    # Each variant's parity is against the student in PyTorch on the CPU (on a GPU, TF32 convolutions alone differ by ~1e-3).
    reference = fp32.logits if fp32.device == "cpu" else predict(model, inputs.batches(), "cpu")
    for runtime in runtimes.available():
        for offer in runtime.offers(files):
            variant = _runtime_variant(ctx, plan, runtime, offer, "student", fp32, inputs)
            variant.artifact = offer.file.name
            variant.parity = onnx_export.compare(variant.logits.numpy(), reference.float().numpy(),
                                                 options.parity_tolerance, options.parity_relative_tolerance)
            result.variants.append(variant)
    return result


def teacher_in_runtimes(
    ctx: JobContext, plan: specs.JobPlan, teacher: torch.nn.Module, in_pytorch: Variant, inputs: EvalInputs
) -> tuple[list[Variant], str]:
    """The teacher exported to ONNX and run on the CPU of every runtime, so that the student is compared like for like.

    Not shipped. A teacher that does not export, or whose file does not match it, is timed in PyTorch only;
    the returned note says why.
    """
    options = plan.export
    path = ctx.workdir / "teacher.onnx"
    parity_inputs = inputs.first(PARITY_SAMPLES)
    try:
        onnx_export.export_onnx(teacher, parity_inputs[:2], path, options.opset, True, options.exporters)
        onnx_export.validate_file(path, teacher, parity_inputs, options.parity_tolerance,
                                  options.parity_relative_tolerance, ctx.threads)
    except (onnx_export.ExportError, onnx_export.ParityError) as e:
        return [], f"the teacher was timed in PyTorch only, not in the ONNX runtimes: {str(e)[:300]}"
    return [
        _runtime_variant(ctx, plan, runtime, offer, "teacher", in_pytorch, inputs)
        for runtime in runtimes.available()
        for offer in runtime.offers({"fp32": path})
        if offer.device == "cpu"
    ], ""


def _runtime_variant(
    ctx: JobContext, plan: specs.JobPlan, runtime: runtimes.Runtime, offer: runtimes.Offer, role: str, in_pytorch: Variant,
    inputs: EvalInputs,
) -> Variant:
    """A file in one runtime: its logits on ``inputs`` (the view its PyTorch twin ran on), and how to time it."""
    session = runtime.open(offer, ctx.threads)
    logits = torch.from_numpy(runtimes.predict(session, (x.numpy() for x in inputs.batches())))
    timing_threads = plan.benchmark.num_threads or ctx.threads
    # A student file with a static batch (export.dynamic_batch false) is timed at that batch only. A teacher
    # exported for a static batch runs any batch in chunks of it, as the teacher does in PyTorch.
    chunked = role == "teacher" and session.static_batch is not None
    runner = Runner(
        open=lambda: _chunked(runtime.open(offer, timing_threads)) if chunked else runtime.open(offer, timing_threads).run,
        prepare=lambda batch: inputs.fit(batch).numpy(),  # the benchmark hands native inputs
        max_batch=None if chunked else session.static_batch,
    )
    return Variant(role, runtime.name, runner, logits, offer.file.stat().st_size, in_pytorch.parameters,
                   in_pytorch.macs, offer.device, offer.target, offer.precision, label=offer.label)


def _chunked(session: runtimes.Session) -> Callable[[np.ndarray], np.ndarray]:
    return lambda batch: runtimes.predict(session, [batch])


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


def macs_or_zero(count: Callable[[], int]) -> int:
    """The count, or 0 ("-" in the report): a number in a table must not fail the job."""
    try:
        return count()
    except Exception:  # an opaque model may not run under the flop counter, an odd graph may not parse
        log.warning("could not count MACs", exc_info=True)
        return 0
