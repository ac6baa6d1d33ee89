"""The training loop: a student learns from a teacher (or from labels alone).

Tensor-native: an in-memory split stays a uint8 tensor (on the GPU when it
fits) and batches are index slices; a streamed one (``distill.streaming``)
arrives as uint8 batches decoded by worker processes. Either way
normalisation happens on the device. The teacher runs in eval mode under
inference_mode; with no data augmentation its logits for a sample never
change, so they are computed once before training instead of once per epoch
(not for shards: a stream has no sample index to cache them by).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from distill import augment, distributed, features
from distill.data import ImageData, Normalization, Split, Splits, inference_batch_size
from distill.streaming import Batch, WebDatasetShards
from distill.loop import CheckpointFn, ProgressFn, StepLoop, StopFn, autocast
from distill.losses import Step, WeightedLoss
from distill.methods import CrossEntropy


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"  # sgd | adam
    learning_rate: float | None = None  # None: 0.05 for SGD, 1e-3 for Adam
    weight_decay: float | None = None  # None: 5e-4 for SGD, 0 for Adam
    lr_schedule: str = "cosine"  # cosine | constant
    seed: int = 0
    checkpoint_interval_steps: int = 200
    # Clip the global gradient norm: KD's T^2-scaled loss on a confident
    # teacher can kick a ReLU student into dead units in its first steps.
    max_grad_norm: float = 5.0
    augmentation: str = "none"  # augment.PRESETS
    # 0: the teacher runs on every augmented batch. K: its logits for K seeded augmented views of every image are
    # computed before training, and epoch e trains on view e % K (FKD-style; needs an indexed split, not shards).
    teacher_views: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        checks = {
            "epochs must be 1..10000": 1 <= self.epochs <= 10_000,
            "batch_size must be 1..65536": 1 <= self.batch_size <= 65_536,
            "optimizer must be sgd or adam": self.optimizer in ("sgd", "adam"),
            "lr_schedule must be cosine or constant": self.lr_schedule in ("cosine", "constant"),
            "learning_rate must be in (0, 10]": self.learning_rate is None or 0 < self.learning_rate <= 10,
            "weight_decay must be in [0, 1]": self.weight_decay is None or 0 <= self.weight_decay <= 1,
            "checkpoint_interval_steps must be >= 1": self.checkpoint_interval_steps >= 1,
            "max_grad_norm must be in (0, 1e6]": 0 < self.max_grad_norm <= 1e6,
            f"augmentation must be one of {', '.join(augment.PRESETS)}": self.augmentation in augment.PRESETS,
            "teacher_views must be 0..1000": 0 <= self.teacher_views <= 1000,
            "teacher_views need an augmentation to take views of": not self.teacher_views or self.augmentation != "none",
        }
        failed = [message for message, ok in checks.items() if not ok]
        if failed:
            raise ValueError("; ".join(failed))

    @property
    def lr(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 0.05 if self.optimizer == "sgd" else 1e-3

    @property
    def wd(self) -> float:
        if self.weight_decay is not None:
            return self.weight_decay
        return 5e-4 if self.optimizer == "sgd" else 0.0


@dataclass(frozen=True)
class TrainResult:
    steps: int
    final_loss: float  # mean loss over the last epoch, across all ranks
    wall_seconds: float
    # Per training sample: how many times a step trained on it (summed over ranks;
    # a resumed run counts the steps before its checkpoint too). None for shards: a stream has no sample index.
    visits: torch.Tensor | None
    samples_seen: int  # training samples this process's steps read (a resumed run counts those before its checkpoint)
    world_size: int = 1


# Teacher logits are cached when they take at most this much memory.
_LOGIT_CACHE_BYTES = 1 << 30
# Splits up to this size move to the GPU whole.
_DEVICE_DATA_BYTES = 2 << 30


def predict_logits(
    model: Callable[[torch.Tensor], torch.Tensor],
    data: Split,
    normalization: Normalization,
    device: str = "cpu",
    batch_size: int = 0,
    rows: range | None = None,
) -> torch.Tensor:
    """Logits for every sample (or those in ``rows``; not for shards), in order, as float32 on the CPU.

    ``batch_size`` 0: ``data.inference_batch_size`` of the images.
    """
    pin = device.startswith("cuda")
    batch_size = batch_size or inference_batch_size(data.input_shape)
    if rows is None:
        read = data.batches(batch_size, pin)
    else:
        assert not isinstance(data, WebDatasetShards), "shards are read whole, in order"
        read = data.read(torch.arange(rows.start, rows.stop).split(batch_size), pin)
    return predict(model, (normalization.apply(b.images.to(device, non_blocking=True)) for b in read), device)


def predict(
    model: Callable[[torch.Tensor], torch.Tensor], batches: Iterable[torch.Tensor], device: str = "cpu"
) -> torch.Tensor:
    """Logits for every batch of normalised inputs, concatenated, as float32 on the CPU."""
    outputs = []
    with torch.inference_mode():
        for x in batches:
            with autocast(device):
                outputs.append(model(x.to(device, non_blocking=True)).float().cpu())
    return torch.cat(outputs)


def distil(
    student: nn.Module,
    teacher: Callable[[torch.Tensor], torch.Tensor] | None,
    loss_fn: WeightedLoss,
    train: Split,
    normalization: Normalization,
    config: TrainConfig,
    on_progress: ProgressFn | None = None,
    on_checkpoint: CheckpointFn | None = None,
    resume_from: dict[str, Any] | None = None,
    stop_requested: StopFn | None = None,
) -> TrainResult:
    """Train ``student`` in place; returns when the step budget is spent.

    Methods with a first stage (FitNets, FSP) get ``loss_fn.pretrain_epochs``
    epochs of their stage-one loss before ``config.epochs`` of the full loss.

    Under torch.distributed, every rank takes its shard of each global batch
    of ``config.batch_size``; the step is the one a single process would take
    on the whole batch. Only the caller on rank 0 should pass ``on_checkpoint``
    (and ``resume_from``: the other ranks get rank 0's).
    """
    if loss_fn.needs_teacher and teacher is None:
        raise ValueError(f"{loss_fn} needs a teacher")
    device = config.device
    ranks = distributed.ranks()
    if config.batch_size < ranks.world:
        raise ValueError(f"batch_size {config.batch_size} is smaller than the {ranks.world} training processes")
    if isinstance(train, WebDatasetShards) and ranks.world > 1:
        raise ValueError("WebDataset shards train in one process; use an image folder to train on several GPUs")
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    student.to(device).train()
    loss_fn.to(device).train()
    if device.startswith("cuda"):
        student.to(memory_format=torch.channels_last)

    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    pretrain_steps = steps_per_epoch * loss_fn.pretrain_epochs
    total_steps = pretrain_steps + steps_per_epoch * config.epochs
    trained = [*student.parameters(), *loss_fn.parameters()]  # adapters learn with the student
    optimizer = _optimizer(student, loss_fn, config)
    schedule = _schedule(optimizer, config, [pretrain_steps, total_steps - pretrain_steps])

    resident = train
    if isinstance(train, ImageData) and device != "cpu" and train.images.numel() <= _DEVICE_DATA_BYTES:
        resident = ImageData(train.images.to(device), train.labels.to(device), train.classes)
    teacher_layers, student_layers = loss_fn.teacher_layers(), loss_fn.student_layers()
    augmentation = augment.Augmentation(config.augmentation, _num_outputs(student, train, device))
    views = augment.CachedViews(augmentation, config.teacher_views, config.seed, len(train)) if config.teacher_views else None
    # Teacher logits are fixed per sample (per view, with cached views), unless the teacher must run anyway
    # (for its features) or sees distorted or freshly augmented inputs. Each rank computes a block of them.
    teacher_logits = None
    cacheable = (
        teacher is not None
        and not teacher_layers
        and loss_fn.views == 1
        and loss_fn.needs_teacher
        and not isinstance(train, WebDatasetShards)
        and (config.augmentation == "none" or views is not None)
    )
    if views is not None and not cacheable:
        raise ValueError("teacher_views cache the teacher's logits: not for shards, feature methods or self-distillation")
    copies = views.views if views is not None else 1
    if cacheable and copies * len(train) * 4 * augmentation.num_classes <= _LOGIT_CACHE_BYTES:
        rows = distributed.rows_of(len(train), ranks)
        teacher_logits = torch.stack([
            distributed.gather_rows(_teacher_block(teacher, train, normalization, device, rows, views, view, augmentation.num_classes).to(device), len(train))
            for view in range(copies)
        ])  # views x samples x classes
    elif views is not None:
        raise ValueError(f"teacher_views {views.views} of {len(train)} images would take more than {_LOGIT_CACHE_BYTES >> 20} MB")

    loop = StepLoop(
        total_steps, config.checkpoint_interval_steps, device, on_progress, on_checkpoint, stop_requested, started=started
    )
    resume_from = loop.resume(resume_from)
    if resume_from is not None:
        student.load_state_dict(resume_from["student"])
        loss_fn.load_state_dict(resume_from["loss"])
        optimizer.load_state_dict(resume_from["optimizer"])
        schedule.load_state_dict(resume_from["schedule"])
    step = loop.step

    student_store: dict[str, torch.Tensor] = {}
    teacher_store: dict[str, torch.Tensor] = {}
    indexed = not isinstance(train, WebDatasetShards)
    visits = torch.zeros(len(train), dtype=torch.int32) if indexed else None
    if visits is not None and step and ranks.rank == 0:  # the steps before the checkpoint, counted once over all ranks
        visits += _visits_before(step, len(train), config.batch_size, config.seed)
    samples_seen = len(train) * (step // steps_per_epoch) + (step % steps_per_epoch) * config.batch_size  # before a resume
    epoch_loss, final_loss = 0.0, math.nan
    with features.tap(student, student_layers, student_store) as run_student, (
        features.tap(teacher, teacher_layers, teacher_store) if teacher_layers else nullcontext(teacher)
    ) as run_teacher:
        learner = distributed.wrap(
            _Learner(student, run_student, loss_fn, run_teacher, student_store, teacher_store),
            device,
            # Stage one (hints, flow) leaves the student's head and the other terms' adapters idle.
            find_unused_parameters=loss_fn.pretrain_epochs > 0 or any(True for _ in loss_fn.parameters()),
        )
        while step < total_steps:
            epoch, offset = divmod(step, steps_per_epoch)
            pretraining = step < pretrain_steps
            epoch_loss = 0.0
            for batch, share in _epoch_batches(resident, epoch, offset, config, ranks):
                if batch.index is not None:
                    visits.index_add_(0, batch.index.cpu(), torch.ones(len(batch.index), dtype=torch.int32))
                samples_seen += len(batch.labels)
                images = batch.images.to(device, non_blocking=True)
                view = epoch % views.views if views is not None else 0
                images = views.images(images, batch.index, view) if views is not None else augmentation.images(images)
                x, y = augmentation.mix(normalization.apply(images), batch.labels.to(device, non_blocking=True))
                if device.startswith("cuda"):
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast(device):
                    cached = teacher_logits[view][batch.index.to(device)] if teacher_logits is not None else None
                    stage_progress = step / pretrain_steps if pretraining else 1.0
                    loss = learner(x, y, cached, pretraining, stage_progress) * share
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trained, config.max_grad_norm)
                optimizer.step()
                schedule.step()
                step_loss = loop.finish_step(
                    loss,
                    lambda: {
                        "student": student.state_dict(),
                        "loss": loss_fn.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "schedule": schedule.state_dict(),
                    },
                    epoch,
                    pretraining,
                    boundary=step + 1 == pretrain_steps,
                    epoch_end=(step + 1) % steps_per_epoch == 0,
                )
                step = loop.step
                epoch_loss += step_loss
                if step == pretrain_steps and pretraining:
                    break  # stage one ends here, mid-epoch if need be
            final_loss = epoch_loss / max(1, steps_per_epoch - offset)
    distributed.copy_leader_state(student)
    student.eval()
    return TrainResult(
        steps=total_steps,
        final_loss=final_loss,
        wall_seconds=loop.seconds,
        visits=distributed.sum_across(visits) if visits is not None else None,
        samples_seen=samples_seen,  # one process: shards train in one
        world_size=ranks.world,
    )


def _teacher_block(
    teacher: Callable[[torch.Tensor], torch.Tensor],
    train: Split,
    normalization: Normalization,
    device: str,
    rows: range,
    views: augment.CachedViews | None,
    view: int,
    num_classes: int,
) -> torch.Tensor:
    """The teacher's logits for ``rows`` of the split (their view ``view`` with cached views), float32 on the CPU."""
    if not rows:
        return torch.zeros(0, num_classes)
    if views is None:
        return predict_logits(teacher, train, normalization, device, rows=rows)
    read = train.read(torch.arange(rows.start, rows.stop).split(inference_batch_size(train.input_shape)), device.startswith("cuda"))
    return predict(teacher, (normalization.apply(views.images(b.images.to(device), b.index, view)) for b in read), device)


def _epoch_batches(train: Split, epoch: int, offset: int, config: TrainConfig, ranks: distributed.Ranks) -> Iterator[tuple[Batch, float]]:
    """This rank's batches of ``epoch`` from batch ``offset`` on, each with its share of the global batch.

    The share weights the rank's loss so that DDP's mean over ranks is the
    global batch's mean. The order depends on (seed, epoch) only, so a resumed
    run, and every rank, sees the same batches.
    """
    pin = config.device.startswith("cuda")
    if isinstance(train, WebDatasetShards):
        for batch in train.stream(config.batch_size, config.seed, epoch, offset, pin):
            yield batch, 1.0
        return
    order = _epoch_order(len(train), config.seed, epoch)[offset * config.batch_size :]
    global_batches = order.split(config.batch_size)
    shards = [distributed.shard(b, ranks) for b in global_batches]
    for batch, shard, whole in zip(train.read(shards, pin), shards, global_batches):
        yield batch, len(shard) * ranks.world / len(whole)


class _Learner(nn.Module):
    """What trains, the student and the loss terms' adapters, as one module: DDP averages all their gradients.

    Its forward is one batch's loss. The teacher, what runs the models with
    their taps (features.tap) and the feature stores sit in a tuple,
    unregistered, so DDP neither broadcasts nor syncs the teacher.
    """

    def __init__(
        self,
        student: nn.Module,
        run_student: Callable[[torch.Tensor], torch.Tensor],
        loss_fn: WeightedLoss,
        teacher: Callable[[torch.Tensor], torch.Tensor] | None,
        student_store: dict[str, torch.Tensor],
        teacher_store: dict[str, torch.Tensor],
    ) -> None:
        super().__init__()
        self.student, self.loss_fn = student, loss_fn
        self.frozen = (run_student, teacher, student_store, teacher_store)

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, cached_teacher_logits: torch.Tensor | None, pretraining: bool,
        stage_progress: float = 1.0,
    ) -> torch.Tensor:
        run_student, teacher, student_store, teacher_store = self.frozen
        batch = _forward(run_student, teacher, self.loss_fn, x, y, cached_teacher_logits, student_store, teacher_store)
        batch.stage_progress = stage_progress
        return self.loss_fn(batch, pretraining=pretraining)


def _forward(
    student: Callable[[torch.Tensor], torch.Tensor],
    teacher: Callable[[torch.Tensor], torch.Tensor] | None,
    loss_fn: WeightedLoss,
    x: torch.Tensor,
    y: torch.Tensor,
    cached_teacher_logits: torch.Tensor | None,
    student_store: dict[str, torch.Tensor],
    teacher_store: dict[str, torch.Tensor],
) -> Step:
    """Run the models on one batch and gather what the losses read (the taps fill the stores)."""
    if loss_fn.views == 2:  # self-distillation: two distortions, no clean view
        x, second = distort(x), distort(x)
    step = Step(student_logits=student(x), labels=y, student_features=dict(student_store))
    if loss_fn.views == 2:
        step.second_logits = student(second)
        step.second_features = dict(student_store)
    if cached_teacher_logits is not None:
        step.teacher_logits = cached_teacher_logits
    elif teacher is not None and loss_fn.needs_teacher:
        with torch.no_grad():
            step.teacher_logits = teacher(x)
        step.teacher_features = dict(teacher_store)
    return step


def distort(x: torch.Tensor) -> torch.Tensor:
    """A random label-preserving distortion per image: rotation up to 10 degrees, scale 0.9-1.1, shift up to 10%.

    One batched affine warp on the device (no per-sample Python).
    """
    n = x.shape[0]
    angle = (torch.rand(n, device=x.device) * 2 - 1) * math.radians(10)
    scale = 0.9 + 0.2 * torch.rand(n, device=x.device)
    shift = (torch.rand(n, 2, device=x.device) * 2 - 1) * 0.2  # grid units: 2 = the whole image
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def train_from_labels(model: nn.Module, splits: Splits, config: TrainConfig) -> TrainResult:
    """Plain supervised training (cross-entropy on the labels): how users make teachers."""
    return distil(model, None, WeightedLoss([(1.0, CrossEntropy())]), splits.train, splits.normalization, config)


def _epoch_order(samples: int, seed: int, epoch: int) -> torch.Tensor:
    """The epoch's sample order: it depends on (seed, epoch) only, so a resumed run sees the same batches."""
    return torch.randperm(samples, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def _visits_before(step: int, samples: int, batch_size: int, seed: int) -> torch.Tensor:
    """Per sample, how many of the first ``step`` steps trained on it (every epoch covers each sample once)."""
    epochs, offset = divmod(step, math.ceil(samples / batch_size))
    visits = torch.full((samples,), epochs, dtype=torch.int32)
    visits[_epoch_order(samples, seed, epochs)[: offset * batch_size]] += 1
    return visits


def _num_outputs(model: nn.Module, data: Split, device: str) -> int:
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        n = model(torch.zeros(1, *data.input_shape, device=device)).shape[-1]
    model.train(was_training)
    return int(n)


def _optimizer(model: nn.Module, loss_fn: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    # No weight decay on biases and norm parameters (standard practice; it
    # only shrinks them without regularising anything).
    params = [*model.parameters(), *loss_fn.parameters()]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.wd}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "adam":
        return torch.optim.AdamW(groups, lr=config.lr)
    return torch.optim.SGD(groups, lr=config.lr, momentum=0.9, nesterov=True)


def _schedule(optimizer: torch.optim.Optimizer, config: TrainConfig, stage_steps: list[int]) -> torch.optim.lr_scheduler.LRScheduler:
    """Constant, or a cosine from the base rate to zero over each stage."""
    if config.lr_schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

    def factor(step: int) -> float:
        for length in stage_steps:
            if step < length:
                return 0.5 * (1 + math.cos(math.pi * step / length))
            step -= length
        return 0.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
