"""JobSpec (the API's words) -> a validated plan in the engine's terms.

CreateJob runs this to refuse a bad spec before it is queued; the worker runs
it again to get the plan it executes. Every range check lives here, and every
message names the field.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from distill import augment, data, distributed, losses, models, search
from distill.benchmark import DEFAULT_BATCH_SIZES, TimingPlan
from distill.datafree import DataFreeConfig
from distill.search import SearchConfig
from distill.streaming import ImageFiles, WebDatasetShards
from distill.trainer import TrainConfig
from exporters import onnx_export
from protos.distillery.v1 import distillery_pb2 as pb
from service.errors import FailedPrecondition, InvalidArgument


LOADINGS = {pb.DATA_LOADING_AUTO: "auto", pb.DATA_LOADING_IN_MEMORY: "in_memory", pb.DATA_LOADING_STREAMED: "streamed"}


@dataclass(frozen=True)
class DatasetPlan:
    kind: str  # torchvision | image_folder | webdataset | generated
    name: str = ""
    root: Path | None = None
    download: bool = False
    train_dir: Path | None = None
    val_dir: Path | None = None
    train_shards: tuple[Path, ...] = ()
    val_shards: tuple[Path, ...] = ()
    classes: tuple[str, ...] = ()  # shards' class names; empty: the labels as text
    image_size: int = 32
    channels: int = 3
    loading: str = "auto"  # image folders: auto | in_memory | streamed (LOADINGS)
    loader_workers: int = 0  # 0: streaming's default
    generated: dict[str, int] = field(default_factory=dict)
    max_train_samples: int = 0
    max_val_samples: int = 0
    seed: int = 0
    normalization: data.Normalization | None = None
    exclude_classes: tuple[int, ...] = ()

    def load(self) -> data.Splits:
        """Read (or generate, or list) the splits. Runs in the worker.

        Image folders and shards are listed and capped before anything is
        decoded; a folder is then decoded into memory if it fits (or as asked).
        """
        if self.kind == "generated":
            train, val = data.generated_splits(**self.generated)
        elif self.kind == "torchvision":
            assert self.root is not None
            train, val = data.load_torchvision(self.name, self.root, self.download)
        elif self.kind == "webdataset":
            train = WebDatasetShards.scan(list(self.train_shards), self.image_size, self.channels, list(self.classes) or None)
            val = WebDatasetShards.scan(list(self.val_shards), self.image_size, self.channels, train.classes)
        else:
            assert self.train_dir is not None and self.val_dir is not None
            train = ImageFiles.scan(self.train_dir, self.image_size, self.channels)
            val = ImageFiles.scan(self.val_dir, self.image_size, self.channels, classes=train.classes)
        if self.normalization and len(self.normalization.mean) != train.input_shape[0]:
            raise ValueError(
                f"dataset.mean/std give {len(self.normalization.mean)} channels, the images have {train.input_shape[0]}"
            )
        if any(not 0 <= c < len(train.classes) for c in self.exclude_classes):
            raise ValueError(f"dataset.exclude_classes must name classes 0..{len(train.classes) - 1}")
        if self.exclude_classes:
            assert not isinstance(train, WebDatasetShards)  # refused when planned
            train = train.without_classes(self.exclude_classes)
        train, val = train.subset(self.max_train_samples, self.seed), val.subset(self.max_val_samples, self.seed + 1)
        if isinstance(train, ImageFiles) and isinstance(val, ImageFiles):
            fits = data.decoded_bytes(train) + data.decoded_bytes(val) <= data.IN_MEMORY_BYTES
            if self.loading == "in_memory" or (self.loading == "auto" and fits):
                train, val = data.in_memory(train), data.in_memory(val)
        for split in (train, val):
            if self.loader_workers and not isinstance(split, data.ImageData):
                split.workers = self.loader_workers
        return data.Splits(train, val, self.normalization)


@dataclass(frozen=True)
class BenchmarkPlan:
    timing: TimingPlan = TimingPlan()
    num_threads: int = 0  # 0: the worker's threads


@dataclass(frozen=True)
class ExportPlan:
    opset: int = 18
    parity_tolerance: float = 1e-4  # absolute; with the relative one, judged as numpy.allclose does
    parity_relative_tolerance: float = 1e-4
    dynamic_batch: bool = True
    exporters: tuple[str, ...] = (onnx_export.DYNAMO, onnx_export.TORCHSCRIPT)  # tried in order
    int8: bool = True
    fp16: bool = True
    accuracy_budget: float = 1.0  # top-1 points a variant may lose against the FP32 student
    input_size: tuple[int, int] | None = None  # (height, width) of the ONNX input; None: the training size


@dataclass(frozen=True)
class DataFreePlan:
    config: DataFreeConfig
    input_shape: tuple[int, int, int] | None  # None: the dataset's


@dataclass(frozen=True)
class BenchmarkOnlyPlan:
    student_model_id: str
    input_shape: tuple[int, int, int] | None  # None: the dataset's


@dataclass(frozen=True)
class AutoStudentPlan:
    max_latency_ms: float  # 0 when the budget is a speedup
    min_speedup: float  # 0 when the budget is a latency
    batch_size: int
    runtime: str
    candidates: tuple[str, ...]

    def describe(self) -> str:
        bound = f"p50 <= {self.max_latency_ms:g} ms" if self.max_latency_ms else f">= {self.min_speedup:g}x the teacher's speed"
        return f"{bound} at batch {self.batch_size} in {self.runtime}"


@dataclass(frozen=True)
class LatencyPlan:
    """Where a two-objective search times its students."""

    batch_size: int
    runtime: str

    def describe(self) -> str:
        return f"p50 at batch {self.batch_size} in {self.runtime}"


# What student.auto considers by default: small to large, registry and timm; each is exported and timed per job.
AUTO_CANDIDATES = (
    "lenet5_half", "shallow_cnn", "resnet8_cifar", "resnet20_cifar", "lcnet_050", "mobilenetv3_small_050",
    "mobilenetv3_small_100", "mobilenetv4_conv_small", "ghostnet_100", "efficientvit_m0", "repvit_m0_9",
    "convnext_atto", "resnet18",
)
AUTO_RUNTIMES = ("onnxruntime", "openvino")


@dataclass(frozen=True)
class JobPlan:
    teacher_model_id: str
    student_architecture: str  # empty for benchmark-only jobs (the student is uploaded)
    dataset: DatasetPlan | None  # None only for data-free and benchmark-only jobs
    methods: list[losses.MethodConfig]
    training: TrainConfig
    export: ExportPlan
    benchmark: BenchmarkPlan
    data_free: DataFreePlan | None = None
    benchmark_only: BenchmarkOnlyPlan | None = None
    distributed: distributed.Launch | None = None  # None: train in the worker process itself
    student_init_model_id: str = ""  # uploaded weights the student starts from; empty: random init
    # Set: the worker picks student_architecture for this budget (service.student_pick) and stores the plan again
    # with the architecture and student_pick (pb.StudentPick as JSON) filled in, so a resumed run trains the same one.
    student_auto: AutoStudentPlan | None = None
    student_pick: str = ""
    student_model_id: str = ""  # an uploaded TorchScript module trained as the student (no architecture)
    # Set: the worker runs the search's trials first (service.search_job) and stores the plan again with the chosen
    # values, student and methods in place and search_result (pb.SearchSummary as JSON) filled in.
    search: SearchConfig | None = None
    search_latency: LatencyPlan | None = None  # set: latency is a search's second objective
    search_result: str = ""

    def on_device(self, device: str) -> JobPlan:
        """The same plan, training on ``device`` (one rank's GPU, cuda:N)."""
        data_free = self.data_free and replace(self.data_free, config=replace(self.data_free.config, device=device))
        return replace(self, training=replace(self.training, device=device), data_free=data_free)


def confine(path: str, roots: tuple[Path, ...], field_name: str) -> Path:
    """Resolve ``path`` (relative to the first root) and require it inside a root.

    Symlinks are resolved first, so a link that points out of the roots is refused too.
    """
    if not path:
        raise InvalidArgument(f"{field_name} is required")
    if "\x00" in path:
        raise InvalidArgument(f"{field_name} contains a NUL byte")
    candidate = Path(path)
    if not candidate.is_absolute():
        candidate = roots[0] / candidate
    resolved = candidate.resolve()
    if not any(resolved.is_relative_to(root) for root in roots):
        raise InvalidArgument(
            f"{field_name} {path!r} resolves to {resolved}, outside the server's data roots "
            f"({', '.join(map(str, roots))})"
        )
    return resolved


def _in_range(value: float, low: float, high: float, name: str) -> None:
    if not low <= value <= high:
        raise InvalidArgument(f"{name} must be in [{low:g}, {high:g}], got {value:g}")


def _digits(value: float) -> float:
    """Proto floats are float32: 0.9 arrives as 0.8999999761...; keep the digits the user wrote."""
    return float(f"{value:.7g}")


def _or_default(value: float, default: float) -> float:
    return value if value else default


def _search_plan(spec: pb.JobSpec, methods: list[losses.MethodConfig], seed: int) -> search.SearchConfig:
    for other in ("data_free", "distributed", "benchmark_only"):
        if spec.HasField(other):
            raise InvalidArgument(f"search cannot be combined with {other}")
    if spec.dataset.HasField("webdataset"):
        raise InvalidArgument("search holds part of the training split out: WebDataset shards cannot be cut; "
                              "use an image folder")
    s = spec.search
    if not 0 <= s.trials <= 200:
        raise InvalidArgument("search.trials must be 1..200 (0: 10)")
    parameters = tuple(search.Parameter(p.name, p.low, p.high, p.log) for p in s.parameters)
    if len({p.name for p in parameters}) != len(parameters):
        raise InvalidArgument("search.parameters: each name once")
    if len(s.students) > 50 or len(s.methods) > 20:
        raise InvalidArgument("search: at most 50 students and 20 methods to choose among")
    if s.HasField("latency") and len(s.students) < 2:
        raise InvalidArgument("search.latency is a second objective over students: name two or more in search.students")
    try:
        config = search.SearchConfig(
            parameters, tuple(s.students), tuple(s.methods), s.trials or 10, s.held_out_fraction or 0.2, seed,
            s.trial_epochs, s.max_minutes, not s.no_pruning,
            s.accuracy_tolerance if s.HasField("accuracy_tolerance") else 1.0,
        )
        search.check(tuple(methods), config)
    except ValueError as e:  # SearchError, or an unknown method among the choices
        raise InvalidArgument(f"search: {e}") from e
    return config


def _search_latency_plan(s: pb.SearchSpec) -> LatencyPlan:
    latency = s.latency
    runtime = latency.runtime or AUTO_RUNTIMES[0]
    if runtime not in AUTO_RUNTIMES:
        raise InvalidArgument(f"search.latency.runtime must be one of {', '.join(AUTO_RUNTIMES)}, not {runtime!r}")
    if not 0 <= latency.batch_size <= 4096:
        raise InvalidArgument("search.latency.batch_size must be 1..4096 (0: 1)")
    return LatencyPlan(latency.batch_size or 1, runtime)


def _auto_student_plan(student: pb.StudentSpec) -> AutoStudentPlan:
    auto = student.auto
    if student.architecture:
        raise InvalidArgument("set student.architecture or student.auto, not both")
    if student.init_model_id:
        raise InvalidArgument("student.init_model_id holds weights for one architecture; student.auto picks one")
    budget = auto.WhichOneof("budget")
    if budget is None:
        raise InvalidArgument("student.auto needs a budget: max_latency_ms or min_speedup")
    _in_range(getattr(auto, budget), 1e-6, 1e6, f"student.auto.{budget}")
    if auto.batch_size < 0 or auto.batch_size > 4096:
        raise InvalidArgument("student.auto.batch_size must be 1..4096 (0: 1)")
    runtime = auto.runtime or AUTO_RUNTIMES[0]
    if runtime not in AUTO_RUNTIMES:
        raise InvalidArgument(f"student.auto.runtime must be one of {', '.join(AUTO_RUNTIMES)}, not {runtime!r}")
    candidates = tuple(auto.candidates) or AUTO_CANDIDATES
    if len(candidates) > 50 or len(set(candidates)) != len(candidates):
        raise InvalidArgument("student.auto.candidates: at most 50, each once")
    for name in candidates:
        if not models.is_known(name):
            raise InvalidArgument(f"student.auto.candidates: {models.unknown_message(name)}")
    return AutoStudentPlan(auto.max_latency_ms, auto.min_speedup, auto.batch_size or 1, runtime, candidates)


def plan(spec: pb.JobSpec, data_roots: tuple[Path, ...], cuda_devices: int) -> JobPlan:
    """Validate ``spec`` and fill in defaults. Raises InvalidArgument or FailedPrecondition.

    ``cuda_devices``: how many GPUs this server sees (0: none).
    """
    cuda_available = cuda_devices > 0
    if not spec.teacher_model_id:
        raise InvalidArgument("teacher_model_id is required (upload the teacher with UploadModel first)")
    benchmark_only = _benchmark_only_plan(spec) if spec.HasField("benchmark_only") else None
    arch = spec.student.architecture
    auto = _auto_student_plan(spec.student) if spec.student.HasField("auto") else None
    own = spec.student.model_id
    if own and (arch or auto or spec.student.init_model_id or benchmark_only):
        raise InvalidArgument("student.model_id is the whole student: set it alone (no architecture, auto or "
                              "init_model_id), and not in a benchmark-only job (benchmark_only.student_model_id)")
    searched_students = spec.HasField("search") and bool(spec.search.students)
    if searched_students and (arch or auto or own or spec.student.init_model_id):
        raise InvalidArgument("search.students chooses the student: leave student unset (no architecture, auto, "
                              "model_id or init_model_id)")
    if benchmark_only is None and auto is None and not own and not searched_students and not models.is_known(arch):
        raise InvalidArgument(f"student.architecture: {models.unknown_message(arch)}")
    if spec.student.init_model_id and benchmark_only is not None:
        raise InvalidArgument("student.init_model_id starts a student to train; a benchmark-only job trains none")
    if auto is not None and benchmark_only is not None:
        raise InvalidArgument("student.auto picks a student to train; a benchmark-only job trains none")
    if spec.device == pb.DEVICE_CUDA and not cuda_available:
        raise FailedPrecondition("device CUDA was asked for, but this server has no CUDA device")
    device = "cuda" if cuda_available and spec.device != pb.DEVICE_CPU else "cpu"

    t = spec.training
    for name in ("epochs", "batch_size", "checkpoint_interval_steps"):
        if getattr(t, name) < 0:
            raise InvalidArgument(f"training.{name} must not be negative")
    try:
        training = TrainConfig(
            epochs=t.epochs or 10,
            batch_size=t.batch_size or 128,
            optimizer="adam" if t.optimizer == pb.OPTIMIZER_ADAM else "sgd",
            learning_rate=t.learning_rate or None,
            weight_decay=t.weight_decay or None,
            lr_schedule="constant" if t.lr_schedule == pb.LR_SCHEDULE_CONSTANT else "cosine",
            seed=t.seed,
            checkpoint_interval_steps=t.checkpoint_interval_steps or 200,
            max_grad_norm=t.max_grad_norm or 5.0,
            augmentation=_augmentation(t),
            teacher_views=_teacher_views(spec),
            device=device,
        )
    except ValueError as e:
        raise InvalidArgument(f"training: {e}") from e

    data_free = None
    if spec.HasField("data_free"):
        data_free = _data_free_plan(spec, training)
        methods = []
    else:
        default_kd = [pb.LossTerm(kd=pb.KnowledgeDistillation())]
        methods = [_method(i, term) for i, term in enumerate(spec.losses or default_kd)]

    searched = _search_plan(spec, methods, t.seed) if spec.HasField("search") else None
    chosen_among = [losses.MethodConfig(name) for choice in searched.methods for name in choice.split("+")] if searched else []
    _check_augmentation(spec, training, methods + chosen_among, data_free is not None)
    _check_specialists(spec, methods + chosen_among)
    if own and spec.HasField("distributed"):
        raise InvalidArgument("a TorchScript student (student.model_id) trains in one process: drop distributed")
    export = _export_plan(spec.export)

    b = spec.benchmark
    batch_sizes = tuple(b.batch_sizes) or DEFAULT_BATCH_SIZES
    for size in batch_sizes:
        _in_range(size, 1, 4096, "benchmark.batch_sizes[]")
    _in_range(b.warmup_runs, 0, 1000, "benchmark.warmup_runs")
    _in_range(b.min_runs, 0, 100_000, "benchmark.min_runs")
    _in_range(b.min_seconds, 0, 60, "benchmark.min_seconds")
    _in_range(b.num_threads, 0, 1024, "benchmark.num_threads")
    defaults = TimingPlan()
    timing = TimingPlan(
        batch_sizes=batch_sizes,
        warmup_runs=b.warmup_runs or defaults.warmup_runs,
        min_runs=b.min_runs or defaults.min_runs,
        min_seconds=b.min_seconds or defaults.min_seconds,
    )
    benchmark = BenchmarkPlan(timing, b.num_threads)

    return JobPlan(
        teacher_model_id=spec.teacher_model_id,
        student_architecture=arch,
        dataset=(
            _dataset_plan(spec.dataset, data_roots, t.seed)
            if spec.HasField("dataset") or not (data_free or benchmark_only)
            else None
        ),
        methods=methods,
        training=training,
        export=export,
        benchmark=benchmark,
        data_free=data_free,
        benchmark_only=benchmark_only,
        distributed=_distributed_plan(spec, device, cuda_devices) if spec.HasField("distributed") else None,
        student_init_model_id=spec.student.init_model_id,
        student_auto=auto,
        student_model_id=own,
        search=searched,
        search_latency=_search_latency_plan(spec.search) if spec.search.HasField("latency") else None,
    )


_AUGMENTATIONS = {pb.AUGMENTATION_NONE: "none", pb.AUGMENTATION_STANDARD: "standard", pb.AUGMENTATION_STRONG: "strong"}


def _augmentation(t: pb.TrainingSpec) -> str:
    if t.augmentation == pb.AUGMENTATION_AUTO:
        return augment.preset_for(t.epochs or 10)
    if t.augmentation not in _AUGMENTATIONS:
        raise InvalidArgument(f"training.augmentation {t.augmentation} is unknown")
    return _AUGMENTATIONS[t.augmentation]


# Methods that read only the teacher's logits: its outputs can be cached per augmented view.
_LOGIT_METHODS = ("kd", "dkd", "cross_entropy", "specialists")
_TEACHER_LOGIT_METHODS = ("kd", "dkd", "specialists")  # those of them that read the teacher


def _teacher_views(spec: pb.JobSpec) -> int:
    """The spec's, or for ``standard`` on data and methods that allow it, the default (cached views win the
    augmentation benchmark: the same accuracy in less time)."""
    t = spec.training
    if t.HasField("teacher_views"):
        return t.teacher_views
    allowed = (
        _augmentation(t) == "standard"
        and not spec.HasField("data_free")
        and spec.dataset.WhichOneof("source") != "webdataset"
        and all(term.WhichOneof("method") in _LOGIT_METHODS for term in spec.losses)
        and (not spec.losses or any(term.WhichOneof("method") in _TEACHER_LOGIT_METHODS for term in spec.losses))
        and all(set(c.split("+")) <= set(_LOGIT_METHODS) and set(c.split("+")) & set(_TEACHER_LOGIT_METHODS)
                for c in spec.search.methods)
    )
    return augment.DEFAULT_TEACHER_VIEWS if allowed else 0


def _check_augmentation(spec: pb.JobSpec, training: TrainConfig, methods: list[losses.MethodConfig], data_free: bool) -> None:
    t = spec.training
    if data_free and (t.augmentation not in (pb.AUGMENTATION_AUTO, pb.AUGMENTATION_NONE) or t.teacher_views):
        raise InvalidArgument("training.augmentation and teacher_views apply to training data; data-free generates its inputs")
    names = {m.method for m in methods}
    if training.augmentation == "strong" and "dkd" in names:
        raise InvalidArgument("training.augmentation STRONG mixes images (MixUp/CutMix); dkd needs one class per image: use STANDARD")
    if training.teacher_views:
        if training.augmentation == "strong":
            raise InvalidArgument("training.teacher_views need one teacher output per image; STRONG mixes images: use STANDARD")
        live = names - set(_LOGIT_METHODS)
        if live:
            raise InvalidArgument(f"training.teacher_views cache the teacher's logits; {', '.join(sorted(live))} need it live")
        if not names & set(_TEACHER_LOGIT_METHODS):
            raise InvalidArgument("training.teacher_views cache the teacher's logits; these losses use no teacher")
        if spec.dataset.WhichOneof("source") == "webdataset":
            raise InvalidArgument("training.teacher_views need random access to the images; WebDataset shards are streams")


def _check_specialists(spec: pb.JobSpec, methods: list[losses.MethodConfig]) -> None:
    """The specialists method ships an ensemble, trained one network after another on subsets of the images."""
    count = sum(m.method == "specialists" for m in methods)
    if not count:
        return
    refusals = [
        (spec.HasField("distributed"), "specialists train one after another in one process: drop distributed"),
        (spec.HasField("search"), "a search scores and times one network per trial; the specialists ensemble is "
                                  "several: leave specialists out of the search"),
        (spec.student.HasField("auto"), "student.auto picks one network for a latency budget; the specialists "
                                        "ensemble runs 1 + specialists of them: name student.architecture"),
        (spec.dataset.HasField("webdataset"), "specialists read a group's images by label: not from WebDataset "
                                              "shards (use an image folder)"),
        (count > 1, "losses: one specialists term at most (it trains the specialists of the one student)"),
    ]
    for refused, message in refusals:
        if refused:
            raise InvalidArgument(message)


_EXPORTERS = {
    pb.ONNX_EXPORTER_UNSPECIFIED: (onnx_export.DYNAMO, onnx_export.TORCHSCRIPT),
    pb.ONNX_EXPORTER_DYNAMO: (onnx_export.DYNAMO,),
    pb.ONNX_EXPORTER_TORCHSCRIPT: (onnx_export.TORCHSCRIPT,),
}


def _export_plan(e: pb.ExportSpec) -> ExportPlan:
    opset = e.opset or 18
    _in_range(opset, 13, 23, "export.opset")
    tolerance = _or_default(e.parity_tolerance, 1e-4)
    _in_range(tolerance, 1e-8, 1.0, "export.parity_tolerance")
    relative = _digits(e.parity_relative_tolerance) if e.HasField("parity_relative_tolerance") else 1e-4
    _in_range(relative, 0.0, 1.0, "export.parity_relative_tolerance")
    if e.exporter not in _EXPORTERS:
        raise InvalidArgument(f"export.exporter {e.exporter} is unknown")
    budget = _digits(e.accuracy_budget) if e.HasField("accuracy_budget") else 1.0
    _in_range(budget, 0, 100, "export.accuracy_budget")
    input_size = None
    if e.HasField("input_size"):
        _in_range(e.input_size.height, 8, 1024, "export.input_size.height")
        _in_range(e.input_size.width, 8, 1024, "export.input_size.width")
        input_size = (e.input_size.height, e.input_size.width)
    return ExportPlan(
        opset=opset,
        parity_tolerance=tolerance,
        parity_relative_tolerance=relative,
        dynamic_batch=e.dynamic_batch if e.HasField("dynamic_batch") else True,
        exporters=_EXPORTERS[e.exporter],
        int8=e.int8 if e.HasField("int8") else True,
        fp16=e.fp16 if e.HasField("fp16") else True,
        accuracy_budget=budget,
        input_size=input_size,
    )


_RUN_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _distributed_plan(spec: pb.JobSpec, device: str, cuda_devices: int) -> distributed.Launch:
    d = spec.distributed
    if spec.HasField("benchmark_only"):
        raise InvalidArgument("distributed does not apply to a benchmark-only job (it trains nothing)")
    if spec.dataset.WhichOneof("source") == "webdataset":
        raise InvalidArgument("distributed training reads an image folder; WebDataset shards train in one process")
    _in_range(d.processes_per_node, 0, 256, "distributed.processes_per_node")
    _in_range(d.nodes, 0, 1024, "distributed.nodes")
    processes, nodes = d.processes_per_node or 1, d.nodes or 1
    # One GPU per process; on CPU, more processes than cores would only thrash.
    room, unit = (cuda_devices, "GPUs") if device == "cuda" else (os.cpu_count() or 1, "CPU cores")
    if processes > room:
        raise FailedPrecondition(
            f"distributed.processes_per_node {processes} is more than this server's {room} {unit}"
        )
    endpoint = d.rendezvous_endpoint or "localhost:0"
    host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535 or any(c.isspace() for c in endpoint):
        raise InvalidArgument(f"distributed.rendezvous_endpoint {endpoint!r} must be host:port")
    if nodes > 1 and (not d.rendezvous_endpoint or int(port) == 0):
        raise InvalidArgument("distributed.rendezvous_endpoint (host:port, a fixed port) is required when nodes > 1")
    if d.run_id and not _RUN_ID.fullmatch(d.run_id):
        raise InvalidArgument("distributed.run_id must be 1-64 letters, digits, '.', '_' or '-'")
    world = processes * nodes
    batch = (spec.data_free.batch_size or 256) if spec.HasField("data_free") else (spec.training.batch_size or 128)
    if batch < world:
        raise InvalidArgument(f"the batch size ({batch}) must be at least the number of training processes ({world})")
    # Identical submissions to every node must meet: the default id is the spec's own digest.
    run_id = d.run_id or "job-" + hashlib.sha256(spec.SerializeToString(deterministic=True)).hexdigest()[:16]
    return distributed.Launch(processes_per_node=processes, nodes=nodes, rendezvous_endpoint=endpoint, run_id=run_id)


def _benchmark_only_plan(spec: pb.JobSpec) -> BenchmarkOnlyPlan:
    b = spec.benchmark_only
    if not b.student_model_id:
        raise InvalidArgument("benchmark_only.student_model_id is required (upload the second model first)")
    unused = [name for name in ("student", "training", "data_free") if spec.HasField(name)]
    if spec.losses:
        unused.append("losses")
    if unused:
        raise InvalidArgument(f"a benchmark_only job trains nothing: leave {', '.join(unused)} unset")
    if spec.export.HasField("input_size"):
        raise InvalidArgument("export.input_size does not apply to a benchmark_only job: it times the models as given")
    if not b.HasField("input_shape") and not spec.HasField("dataset"):
        raise InvalidArgument("benchmark_only.input_shape is required when there is no dataset to take it from")
    shape = _input_shape(b.input_shape, "benchmark_only.input_shape") if b.HasField("input_shape") else None
    return BenchmarkOnlyPlan(b.student_model_id, shape)


def _input_shape(shape: pb.InputShape, name: str) -> tuple[int, int, int]:
    if shape.channels not in (1, 3, 4):
        raise InvalidArgument(f"{name}.channels must be 1, 3 or 4")
    _in_range(shape.height, 8, 1024, f"{name}.height")
    _in_range(shape.width, 8, 1024, f"{name}.width")
    return (shape.channels, shape.height, shape.width)


_DATA_FREE_METHODS = {
    pb.DATA_FREE_METHOD_UNSPECIFIED: "auto",
    pb.DATA_FREE_METHOD_DFAD: "dfad",
    pb.DATA_FREE_METHOD_BN_PRIOR: "bn_prior",
}


def _data_free_plan(spec: pb.JobSpec, training: TrainConfig) -> DataFreePlan:
    d = spec.data_free
    if spec.losses:
        raise InvalidArgument("losses must be empty for a data-free job (it trains on the teacher-student L1 gap)")
    t = spec.training
    for name in ("epochs", "batch_size", "learning_rate", "weight_decay", "optimizer", "lr_schedule"):
        if getattr(t, name):
            raise InvalidArgument(f"training.{name} does not apply to a data-free job; set it in data_free")
    if d.method not in _DATA_FREE_METHODS:
        raise InvalidArgument(f"data_free.method {d.method} is unknown")
    input_shape = None
    if d.HasField("input_shape"):
        input_shape = _input_shape(d.input_shape, "data_free.input_shape")
    elif not spec.HasField("dataset"):
        raise InvalidArgument("data_free.input_shape is required when there is no dataset to take it from")
    explicit = {  # optional fields: an explicit 0 means 0, not the default
        name: getattr(d, name)
        for name in ("adversarial_weight", "bn_weight", "confidence_weight", "balance_weight", "target_weight", "logit_bound")
        if d.HasField(name)
    }
    default = DataFreeConfig()
    try:
        config = DataFreeConfig(
            method=_DATA_FREE_METHODS[d.method],
            iterations=d.iterations or default.iterations,
            student_steps=d.student_steps or default.student_steps,
            replay_steps=d.replay_steps if d.HasField("replay_steps") else default.replay_steps,
            replay_memory_mb=d.replay_memory_mb or default.replay_memory_mb,
            batch_size=d.batch_size or default.batch_size,
            student_lr=_digits(d.student_learning_rate) or default.student_lr,
            generator_lr=_digits(d.generator_learning_rate) or default.generator_lr,
            generator_width=d.generator_width or (64 if training.device == "cuda" else 16),
            seed=training.seed,
            checkpoint_interval_steps=t.checkpoint_interval_steps or 100,
            device=training.device,
            **{name: _digits(value) for name, value in explicit.items()},
        )
    except ValueError as e:
        raise InvalidArgument(f"data_free: {e}") from e
    return DataFreePlan(config, input_shape)


def _method(index: int, term: pb.LossTerm) -> losses.MethodConfig:
    """One loss term, checked against what its method declares in the registry (parameters, layer pairs)."""
    name = term.WhichOneof("method")
    where = f"losses[{index}]"
    if name is None:
        raise InvalidArgument(f"{where} names no method; known: {', '.join(losses.REGISTRY)}")
    method, message = losses.method(name), getattr(term, name)
    params = {}
    for param, bounds in method.params.items():
        # Zero means the default, unless the field is optional and set (then zero is a value).
        value = _digits(getattr(message, param))
        if not value and not (message.DESCRIPTOR.fields_by_name[param].has_presence and message.HasField(param)):
            value = bounds.default
        _in_range(value, bounds.low, bounds.high, f"{where}.{name}.{param}")
        params[param] = value
    weight = _or_default(term.weight, 1.0)
    _in_range(weight, 1e-6, 1000, f"{where}.weight")
    named: list[pb.LayerPair] = []
    for descriptor in message.DESCRIPTOR.fields:  # fitnet's `hint`, the others' `layers`
        if descriptor.message_type is pb.LayerPair.DESCRIPTOR:
            value = getattr(message, descriptor.name)
            named += list(value) if descriptor.is_repeated else [value] if message.HasField(descriptor.name) else []
    for pair in named:
        if not pair.teacher or not pair.student:
            raise InvalidArgument(f"{where}.{name}: a layer pair needs both a teacher and a student module path")
    low, high = method.layer_pairs
    if named and not low <= len(named) <= high:
        wanted = f"at least {low}" if math.isinf(high) else f"{low} to {high:g}" if low != high else f"{low}"
        raise InvalidArgument(f"{where}.{name} takes {wanted} layer pairs (or none, to pair stages by size); got {len(named)}")
    return losses.MethodConfig(name, weight, params, tuple((p.teacher, p.student) for p in named))


def _dataset_plan(spec: pb.DatasetSpec, roots: tuple[Path, ...], seed: int) -> DatasetPlan:
    _in_range(spec.max_train_samples, 0, 100_000_000, "dataset.max_train_samples")
    _in_range(spec.max_val_samples, 0, 100_000_000, "dataset.max_val_samples")
    normalization = None
    if spec.mean or spec.std:
        if len(spec.mean) != len(spec.std) or len(spec.mean) not in (1, 3):
            raise InvalidArgument("dataset.mean and dataset.std need one value per channel (1 or 3 each)")
        if any(not 1e-6 < s < 1e3 for s in spec.std) or any(not -1e3 < m < 1e3 for m in spec.mean):
            raise InvalidArgument("dataset.std must be in (1e-6, 1e3) and dataset.mean in (-1e3, 1e3)")
        normalization = data.Normalization(list(spec.mean), list(spec.std))
    if any(c < 0 for c in spec.exclude_classes):
        raise InvalidArgument("dataset.exclude_classes must be class indices (0 or more)")
    limits = {
        "max_train_samples": spec.max_train_samples,
        "max_val_samples": spec.max_val_samples,
        "seed": seed,
        "normalization": normalization,
        "exclude_classes": tuple(spec.exclude_classes),
    }
    source = spec.WhichOneof("source")
    if source == "generated":
        g = spec.generated
        params = {
            "num_classes": g.num_classes or 10,
            "image_size": g.image_size or 28,
            "channels": g.channels or 1,
            "train_size": g.train_size or 6000,
            "val_size": g.val_size or 1000,
            "seed": g.seed,
        }
        _in_range(params["num_classes"], 2, len(data.SHAPES), "dataset.generated.num_classes")
        _in_range(params["image_size"], 16, 64, "dataset.generated.image_size")
        _in_range(params["train_size"], 10, 1_000_000, "dataset.generated.train_size")
        _in_range(params["val_size"], 10, 1_000_000, "dataset.generated.val_size")
        if params["channels"] not in (1, 3):
            raise InvalidArgument("dataset.generated.channels must be 1 or 3")
        if any(c >= params["num_classes"] for c in spec.exclude_classes):
            raise InvalidArgument(f"dataset.exclude_classes must name classes 0..{params['num_classes'] - 1}")
        return DatasetPlan(kind="generated", generated=params, **limits)
    if source == "torchvision":
        tv = spec.torchvision
        if tv.name not in data.TORCHVISION_DATASETS:
            raise InvalidArgument(
                f"dataset.torchvision.name {tv.name!r} is unknown; known: {', '.join(data.TORCHVISION_DATASETS)}"
            )
        root = confine(tv.root, roots, "dataset.torchvision.root")
        return DatasetPlan(kind="torchvision", name=tv.name, root=root, download=tv.download, **limits)
    _in_range(spec.loader_workers, 0, 64, "dataset.loader_workers")
    if source == "image_folder":
        f = spec.image_folder
        if f.loading not in LOADINGS:
            raise InvalidArgument(f"dataset.image_folder.loading {f.loading} is unknown")
        return DatasetPlan(
            kind="image_folder",
            train_dir=confine(f.train_dir, roots, "dataset.image_folder.train_dir"),
            val_dir=confine(f.val_dir, roots, "dataset.image_folder.val_dir"),
            loading=LOADINGS[f.loading],
            loader_workers=spec.loader_workers,
            **_image_format(f.image_size, f.channels, "dataset.image_folder"),
            **limits,
        )
    if source == "webdataset":
        w = spec.webdataset
        if spec.exclude_classes:
            raise InvalidArgument("dataset.exclude_classes is not supported for WebDataset shards (a stream is not filtered)")
        if len(w.classes) > 100_000 or any(not c or len(c) > 200 for c in w.classes):
            raise InvalidArgument("dataset.webdataset.classes: at most 100,000 names of 1 to 200 characters")
        return DatasetPlan(
            kind="webdataset",
            train_shards=_shards(w.train_shards, roots, "dataset.webdataset.train_shards"),
            val_shards=_shards(w.val_shards, roots, "dataset.webdataset.val_shards"),
            classes=tuple(w.classes),
            loader_workers=spec.loader_workers,
            **_image_format(w.image_size, w.channels, "dataset.webdataset"),
            **limits,
        )
    raise InvalidArgument("dataset is required: one of torchvision, image_folder, webdataset, generated")


def _image_format(image_size: int, channels: int, where: str) -> dict[str, int]:
    image_size, channels = image_size or 32, channels or 3
    _in_range(image_size, 8, 1024, f"{where}.image_size")
    if channels not in (1, 3):
        raise InvalidArgument(f"{where}.channels must be 1 or 3")
    return {"image_size": image_size, "channels": channels}


def _shards(paths: typing.Sequence[str], roots: tuple[Path, ...], field_name: str) -> tuple[Path, ...]:
    """Shard files inside the data roots: local paths only (never a URL, so never webdataset's ``pipe:``)."""
    if not paths:
        raise InvalidArgument(f"{field_name} needs at least one shard")
    if len(paths) > 100_000:
        raise InvalidArgument(f"{field_name}: at most 100,000 shards")
    return tuple(confine(p, roots, f"{field_name}[{i}]") for i, p in enumerate(paths))


# ------------------------------------------------------------ stored plans
#
# CreateJob resolves the plan once and stores it with the job; the worker and every rank run that one, so a job runs
# what was accepted even if the server's environment (GPUs, defaults) changed before it ran. JSON, never pickle.


def plan_to_json(plan: JobPlan) -> str:
    return json.dumps(_encode(plan), sort_keys=True)


def plan_from_json(text: str) -> JobPlan:
    return _decode(JobPlan, json.loads(text))


def _encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store a {type(value).__name__} in a plan")


def _decode(kind: Any, value: Any) -> Any:
    """``value`` (from JSON) as ``kind``, a type hint: dataclasses, X | None, tuple[...], list[...], dict, Path, scalars."""
    if value is None:
        return None
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (types.UnionType, typing.Union):
        return _decode(next(a for a in args if a is not type(None)), value)
    if dataclasses.is_dataclass(kind):
        hints = typing.get_type_hints(kind)
        return kind(**{f.name: _decode(hints[f.name], value[f.name]) for f in dataclasses.fields(kind) if f.name in value})
    if origin is tuple:
        item = args[0] if args else Any
        return tuple(_decode(item, v) for v in value)
    if origin is list:
        return [_decode(args[0], v) for v in value]
    if origin is dict:
        return {k: _decode(args[1], v) for k, v in value.items()}
    if kind is Path:
        return Path(value)
    if kind is float:
        return float(value)
    return value
