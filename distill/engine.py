"""The engine's one call: a job in, a trained student and its measurements out, with no server.

    from distill import data, engine
    train, test = data.load_torchvision("MNIST", Path("../shared/datasets"))
    outcome = engine.run(engine.Job(teacher=teacher, student="lenet5_half", data=data.Splits(train, test)))
    outcome.evaluation.student.top1

``run`` finds the teacher's input convention (unless told it), builds the
student, distils it (with the data's labels, or data-free from a generator),
and scores teacher and student on the validation split. The service's worker
calls exactly this, with callbacks for progress, checkpoints and stopping,
and does the rest (export, benchmark, report) itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from distill import evaluate, models
from distill.batchnorm import reach_batchnorm
from distill.data import ImageData, Normalization, Split, Splits
from distill.datafree import DataFreeConfig, DataFreeResult, distil_data_free, resolve_method
from distill.input_convention import InputConvention, find_input_convention
from distill.loop import CheckpointFn, ProgressFn, StopFn
from distill.losses import MethodConfig, build_loss
from distill.methods import specialists as specialist_networks
from distill.streaming import ImageFiles
from distill.trainer import TrainConfig, distil, predict, predict_logits

StageFn = Callable[[str, str], None]  # (stage, what it is doing), e.g. ("distil", "kd(T=4, alpha=0.9)")


@dataclass(frozen=True)
class Job:
    """What to distil, validated by the dataclasses it is made of (the service builds one from a job spec)."""

    teacher: Callable[[torch.Tensor], torch.Tensor]  # in eval mode; an nn.Module for feature methods and bn_prior
    student: str | nn.Module  # a registry architecture (built with training.seed), or a module trained in place
    data: Splits | None = None  # labelled data; data-free jobs may bring it to be scored on
    methods: tuple[MethodConfig, ...] = (MethodConfig("kd"),)
    training: TrainConfig = field(default_factory=TrainConfig)
    data_free: DataFreeConfig | None = None  # set: no training data is used, a generator makes the inputs
    input_shape: tuple[int, int, int] | None = None  # the teacher's input (C, H, W); from the data when it has some
    normalization: Normalization | None = None  # the teacher's input convention if known; None: found from the data
    teacher_exposes_modules: bool = True  # False for graph teachers (.pt2, ONNX): no feature methods
    evaluate: bool = True  # score teacher and student on data.val at the end

    def __post_init__(self) -> None:
        if self.data is None and (self.data_free is None or self.input_shape is None):
            raise ValueError("a job without data must be data-free and name the teacher's input_shape")


@dataclass(frozen=True)
class TrainingSummary:
    method: str  # what was trained, e.g. "kd(T=4, alpha=0.9)" or "bn_prior(iterations=700, ...)"
    epochs: int  # 0 for data-free training
    steps: int
    final_loss: float
    wall_seconds: float
    device: str
    train_samples: int  # 0 for data-free training
    processes: int
    samples_seen: int  # training images a step trained on, over all processes (0 for data-free)
    data_loading: str = ""  # how the training split was read (empty for data-free)
    augmentation: str = ""  # the preset, and how the teacher saw it (empty for data-free)
    specialists: tuple[specialist_networks.Specialist, ...] = ()  # the specialists method's, by class index


@dataclass(frozen=True)
class Evaluation:
    teacher: evaluate.AccuracyResult
    student: evaluate.AccuracyResult  # its agreement is with the teacher's top-1


@dataclass
class Outcome:
    student: nn.Module  # trained, in eval mode, on the training device
    training: TrainingSummary
    evaluation: Evaluation | None  # None without validation data or with evaluate=False
    input_convention: InputConvention | None  # None when the job gave one, or has no data
    data_free: DataFreeResult | None  # the generator and what the run did, for data-free jobs


def run(
    job: Job,
    on_progress: ProgressFn | None = None,
    on_checkpoint: CheckpointFn | None = None,
    resume_from: dict | None = None,
    stop_requested: StopFn | None = None,
    on_stage: StageFn | None = None,
) -> Outcome:
    """Distil ``job.student`` from ``job.teacher``; see the module's notes. Resumes from a checkpoint it handed out."""
    device = job.training.device if job.data_free is None else job.data_free.device
    stage = on_stage or (lambda name, message: None)
    splits, convention = job.data, None
    input_shape = job.input_shape or splits.train.input_shape  # type: ignore[union-attr]
    num_classes = predict(job.teacher, [torch.zeros(2, *input_shape)], device).shape[1]
    if splits is not None:
        if num_classes != len(splits.train.classes):
            raise ValueError(f"the teacher has {num_classes} outputs but the dataset has {len(splits.train.classes)} classes")
        if job.normalization is None:  # every use of the data below takes the convention found here
            convention = find_input_convention(job.teacher, splits.train, num_classes, None, device)
            splits.normalization = convention.chosen.normalization
        else:
            splits.normalization = job.normalization

    student = job.student
    if isinstance(student, str):
        torch.manual_seed(job.training.seed)  # the same job gives the same student, init included
        student = models.build(student, num_classes, input_shape[0], input_shape[1])

    if job.data_free is not None:
        training, result = _distil_data_free(job, student, input_shape, stage, on_progress, on_checkpoint,
                                             resume_from, stop_requested)
    else:
        assert splits is not None
        (training, student), result = _distil_offline(job, student, splits, stage, on_progress, on_checkpoint,
                                                      resume_from, stop_requested), None

    evaluation = None
    if job.evaluate and splits is not None:
        stage("evaluate", "")
        teacher_logits = predict_logits(job.teacher, splits.val, splits.normalization, device)
        student_logits = predict_logits(student, splits.val, splits.normalization, device)
        evaluation = Evaluation(
            evaluate.accuracy(teacher_logits, splits.val.labels),
            evaluate.accuracy(student_logits, splits.val.labels, teacher_logits),
        )
    return Outcome(student, training, evaluation, convention, result)


def _distil_offline(
    job: Job,
    student: nn.Module,
    splits: Splits,
    stage: StageFn,
    on_progress: ProgressFn | None,
    on_checkpoint: CheckpointFn | None,
    resume_from: dict | None,
    stop_requested: StopFn | None,
) -> tuple[TrainingSummary, nn.Module]:
    """The training summary and the trained student: ``student`` itself, or the specialists method's ensemble."""
    teacher = job.teacher if isinstance(job.teacher, nn.Module) else None
    loss = build_loss(list(job.methods), teacher, student, splits.train.input_shape, job.teacher_exposes_modules)
    stage("distil", f"resuming from step {resume_from['step']}" if resume_from else str(loss))
    ensembling = [t for t in loss.terms if isinstance(t, specialist_networks.SpecialistNetworks)]
    if len(ensembling) > 1:
        raise ValueError("one specialists term at most: it trains the specialists of the one student")
    if ensembling:  # the student trained as the generalist, then its specialists: the ensemble is the student
        trained = specialist_networks.train(ensembling[0], student, job.teacher, loss, splits.train, splits.normalization,
                                            job.training, on_progress, on_checkpoint, resume_from, stop_requested)
        student, world, specialists, seen = trained.ensemble, 1, tuple(trained.specialists), trained.samples_seen
    else:
        trained = distil(student, job.teacher, loss, splits.train, splits.normalization, job.training,  # type: ignore[arg-type]
                         on_progress, on_checkpoint, resume_from, stop_requested)
        world, specialists = trained.world_size, ()
        seen = int(trained.visits.sum()) if trained.visits is not None else trained.samples_seen
    summary = TrainingSummary(
        method=str(loss),
        epochs=loss.pretrain_epochs + job.training.epochs,
        steps=trained.steps,
        final_loss=trained.final_loss,
        wall_seconds=trained.wall_seconds,
        device=torch.device(job.training.device).type,
        train_samples=len(splits.train),
        processes=world,
        samples_seen=seen,
        data_loading=describe_loading(splits.train),
        augmentation=describe_augmentation(job.training),
        specialists=specialists,
    )
    return summary, student


def describe_loading(split: Split) -> str:
    if isinstance(split, ImageData):
        return "in memory"
    source = "an image folder" if isinstance(split, ImageFiles) else f"{len(split.shards)} WebDataset shards"
    return f"streamed from {source} ({split.workers} loader processes)"


def describe_augmentation(config: TrainConfig) -> str:
    if config.augmentation == "none":
        return "none"
    if config.teacher_views:
        return f"{config.augmentation}, {config.teacher_views} cached teacher views"
    return f"{config.augmentation}, the teacher on every augmented batch"


def _distil_data_free(
    job: Job,
    student: nn.Module,
    input_shape: tuple[int, int, int],
    stage: StageFn,
    on_progress: ProgressFn | None,
    on_checkpoint: CheckpointFn | None,
    resume_from: dict | None,
    stop_requested: StopFn | None,
) -> tuple[TrainingSummary, DataFreeResult]:
    config = job.data_free
    assert config is not None
    # TorchScript and torch.export teachers hide their BatchNorm layers from hooks; reach them for the prior.
    reached = (
        reach_batchnorm(job.teacher, input_shape)
        if config.method != "dfad" and isinstance(job.teacher, nn.Module) else None
    )
    trained_against = reached.teacher if reached else job.teacher
    method = resolve_method(config.method, trained_against)

    def described(batch: int | str) -> str:
        return (
            f"{method}(iterations={config.iterations}, student_steps={config.student_steps}, "
            f"replay_steps={config.replay_steps}, batch_size={batch}, generator_width={config.generator_width})"
        )

    stage("distil", f"resuming from iteration {resume_from['step']}" if resume_from
          else described(config.batch_size or "from the teacher's classes"))
    trained = distil_data_free(student, trained_against, input_shape, config, on_progress, on_checkpoint,
                               resume_from, stop_requested)
    trained.batchnorm = reached.how if reached else ""  # where the layers were found, or why they were not
    summary = TrainingSummary(
        method=described(trained.batch_size),
        epochs=0,
        steps=trained.iterations,
        final_loss=trained.final_loss,
        wall_seconds=trained.wall_seconds,
        device=torch.device(config.device).type,
        train_samples=0,
        processes=trained.world_size,
        samples_seen=0,
    )
    return summary, trained
