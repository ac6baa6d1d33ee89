"""Data-free distillation: a generator synthesises the transfer set.

``dfad`` (Fang et al., 2019): the generator maximises the L1 distance between
teacher and student logits on its images; the student minimises it. We add
one term to the generator's side: the class balance of DAFL (Chen et al.,
2019), the entropy of the teacher's mean prediction over the batch. Without
it the generator drifts to the few classes where the student is wrong most
cheaply; with it, MNIST reaches 96% in 100 iterations instead of 33%.
``balance_weight=0`` gives the paper's pure form.

Both methods replay. The generator keeps moving to wherever the student is
wrong now, and a student trained only on its latest images forgets the
earlier ones: the final accuracy then depends on where the generator happened
to stop (MNIST: 97.9-98.4% over three seeds). So the student also trains on a
uniform sample of every image generated so far (a reservoir, kept with the
teacher's logits): 98.36-98.65% over five seeds, and a replayed step costs a
fifth of a fresh one (no generator, no teacher).

``bn_prior`` adds what a BatchNorm teacher knows about its training data:
each BN layer's running mean and variance. The generator is also asked to
make the batch statistics every teacher BN layer sees match them
(DeepInversion, Yin et al., 2020) and to make the teacher confident on each
image (DAFL's one-hot term). ``auto`` picks ``bn_prior`` for teachers with
BatchNorm layers and ``dfad`` for the rest.

Both run in the normalised input space the teacher expects: the generator
ends in a BatchNorm without affine parameters, so its images have zero mean
and unit variance per channel, as the teacher's normalised inputs do.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from distill import distributed
from distill.batchnorm import BatchNormTap
from distill.evaluate import near_chance
from distill.trainer import (
    CheckpointFn,
    Progress,
    ProgressFn,
    StopFn,
    TrainingDivergedError,
    _autocast,
    checkpoint_or_stop,
    predict,
    restore_rng,
    rng_state,
)

METHODS = ("auto", "dfad", "bn_prior")


@dataclass(frozen=True)
class DataFreeConfig:
    method: str = "auto"  # auto | dfad | bn_prior
    iterations: int = 2000  # generator steps
    student_steps: int = 2  # student steps per generator step on fresh images
    replay_steps: int = 10  # then student steps on images drawn from the replay memory
    replay_memory_mb: int = 128  # images (float16) and teacher logits kept for replay
    batch_size: int = 256
    student_lr: float = 0.1  # SGD, momentum 0.9, cosine to zero
    generator_lr: float = 1e-3  # Adam, cosine to zero
    weight_decay: float = 5e-4
    noise_dim: int = 256
    generator_width: int = 64  # channels of the generator's last block; earlier blocks double it
    # The generator's objective: adversarial + balance (both methods) + bn + confidence (bn_prior).
    adversarial_weight: float = 1.0
    bn_weight: float = 1.0
    confidence_weight: float = 0.1
    balance_weight: float = 5.0
    seed: int = 0
    checkpoint_interval_steps: int = 100
    device: str = "cpu"

    def __post_init__(self) -> None:
        checks = {
            f"method must be one of {', '.join(METHODS)}": self.method in METHODS,
            "iterations must be 1..1000000": 1 <= self.iterations <= 1_000_000,
            "student_steps must be 1..100": 1 <= self.student_steps <= 100,
            "replay_steps must be 0..100": 0 <= self.replay_steps <= 100,
            "replay_memory_mb must be 1..65536": 1 <= self.replay_memory_mb <= 65_536,
            "batch_size must be 2..65536 (BatchNorm needs two samples)": 2 <= self.batch_size <= 65_536,
            "student_lr must be in (0, 10]": 0 < self.student_lr <= 10,
            "generator_lr must be in (0, 1]": 0 < self.generator_lr <= 1,
            "weight_decay must be in [0, 1]": 0 <= self.weight_decay <= 1,
            "noise_dim must be 1..4096": 1 <= self.noise_dim <= 4096,
            "generator_width must be 4..1024": 4 <= self.generator_width <= 1024,
            "loss weights must be finite and not negative": all(
                0 <= w < math.inf  # written so that NaN fails too
                for w in (self.adversarial_weight, self.bn_weight, self.confidence_weight, self.balance_weight)
            ),
            "checkpoint_interval_steps must be >= 1": self.checkpoint_interval_steps >= 1,
        }
        failed = [message for message, ok in checks.items() if not ok]
        if failed:
            raise ValueError("; ".join(failed))


class Generator(nn.Module):
    """Noise -> image of the teacher's input shape (DCGAN-style, as in DFAD).

    A linear layer makes a small map (about 8 px a side), 2x upsampling
    blocks grow it to the target size or just past it, a centre crop trims
    the excess (odd sizes such as 28 or 224 work the same way).
    """

    def __init__(self, noise_dim: int, input_shape: tuple[int, int, int], width: int = 64) -> None:
        super().__init__()
        channels, height, width_px = input_shape
        self.input_shape = input_shape
        self.noise_dim = noise_dim
        self.width = width
        ups = max(1, round(math.log2(min(height, width_px) / 8)))
        self.start = (math.ceil(height / 2**ups), math.ceil(width_px / 2**ups))
        widths = [min(1024, width * 2 ** (ups - i)) for i in range(ups + 1)]  # e.g. 256, 128, 64
        self.project = nn.Linear(noise_dim, widths[0] * self.start[0] * self.start[1])
        layers: list[nn.Module] = [nn.BatchNorm2d(widths[0])]
        for i in range(ups):
            layers += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(widths[i], widths[i + 1], 3, padding=1, bias=False),
                nn.BatchNorm2d(widths[i + 1]),
                nn.LeakyReLU(0.2, inplace=True),
            ]
        layers += [nn.Conv2d(widths[-1], channels, 3, padding=1), nn.Tanh(), nn.BatchNorm2d(channels, affine=False)]
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.project(z).view(z.shape[0], -1, *self.start)
        x = self.body(x)
        _, height, width = self.input_shape
        top, left = (x.shape[2] - height) // 2, (x.shape[3] - width) // 2
        return x[:, :, top : top + height, left : left + width]

    def to_checkpoint(self) -> dict[str, Any]:
        return {"noise_dim": self.noise_dim, "input_shape": list(self.input_shape), "width": self.width, "state_dict": self.state_dict()}

    @staticmethod
    def from_checkpoint(saved: dict[str, Any]) -> Generator:
        """Rebuild a saved generator (e.g. the ``generator.pt`` artifact, to draw INT8 calibration data)."""
        generator = Generator(int(saved["noise_dim"]), tuple(saved["input_shape"]), int(saved["width"]))
        generator.load_state_dict(saved["state_dict"])
        return generator

    def sample(self, count: int, batch_size: int = 256) -> torch.Tensor:
        """``count`` fresh images in normalised space, on the CPU (e.g. INT8 calibration data)."""
        device = next(self.parameters()).device
        was_training = self.training
        self.train()  # the batch statistics are what the generator was trained with
        out = []
        with torch.no_grad():
            for start in range(0, count, batch_size):
                n = min(batch_size, count - start)
                out.append(self(torch.randn(max(n, 2), self.noise_dim, device=device))[:n].float().cpu())
        self.train(was_training)
        return torch.cat(out)


def batchnorm_layers(teacher: Callable[[torch.Tensor], torch.Tensor]) -> list[nn.Module]:
    """The teacher's BatchNorm layers with running statistics a hook can reach (empty for black boxes).

    BatchNorm2d modules of an eager teacher, or the taps ``batchnorm.reach_batchnorm``
    put into a TorchScript or torch.export teacher's graph.
    """
    if not isinstance(teacher, nn.Module):
        return []
    return [
        m for m in teacher.modules()
        if isinstance(m, BatchNormTap) or (isinstance(m, nn.BatchNorm2d) and m.running_mean is not None)
    ]


def resolve_method(method: str, teacher: Callable[[torch.Tensor], torch.Tensor]) -> str:
    if method == "auto":
        return "bn_prior" if batchnorm_layers(teacher) else "dfad"
    if method == "bn_prior" and not batchnorm_layers(teacher):
        raise ValueError("bn_prior needs a teacher with BatchNorm layers the server can reach; use dfad")
    return method


class _BatchNormPrior:
    """Forward pre-hooks that measure how far each BN input's batch statistics are from the running ones."""

    def __init__(self, layers: list[nn.BatchNorm2d]) -> None:
        self.terms: list[torch.Tensor] = []
        self.active = False
        self.handles = [layer.register_forward_pre_hook(self._hook) for layer in layers]

    def _hook(self, layer: nn.BatchNorm2d, inputs: tuple[torch.Tensor, ...]) -> None:
        if not self.active:
            return
        x = inputs[0].float()
        mean = x.mean(dim=(0, 2, 3))
        var = x.var(dim=(0, 2, 3), unbiased=False)
        self.terms.append(torch.linalg.vector_norm(mean - layer.running_mean) + torch.linalg.vector_norm(var - layer.running_var))

    def take(self) -> torch.Tensor:
        total = torch.stack(self.terms).sum() / len(self.terms)
        self.terms = []
        return total

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class ReplayMemory:
    """A uniform sample of every generated image the student has trained on, with the teacher's logits.

    Reservoir sampling: the n-th image offered replaces a random slot with
    probability capacity / n, so the memory always holds an even sample of
    the whole run so far, early images as likely as recent ones. Images are
    kept in float16 (half the bytes; they are normalised, so well in range).
    """

    def __init__(self, budget_bytes: int, image_shape: tuple[int, ...], device: str) -> None:
        self.budget_bytes = budget_bytes
        self.image_bytes = math.prod(image_shape) * 2  # float16
        self.device = device
        self.images: torch.Tensor | None = None  # allocated on the first batch, when the logits' size is known
        self.logits: torch.Tensor | None = None
        self.offered = 0

    def _allocate(self, capacity: int, image_shape: torch.Size, logits_shape: torch.Size) -> None:
        self.images = torch.empty(capacity, *image_shape, dtype=torch.float16, device=self.device)
        self.logits = torch.empty(capacity, *logits_shape, device=self.device)

    def __len__(self) -> int:
        return 0 if self.images is None else min(self.offered, len(self.images))

    def add(self, images: torch.Tensor, logits: torch.Tensor) -> None:
        if self.images is None:
            self._allocate(self.budget_bytes // (self.image_bytes + logits[0].numel() * 4), images.shape[1:], logits.shape[1:])
        assert self.images is not None and self.logits is not None
        capacity = len(self.images)
        number = self.offered + torch.arange(len(images), device=self.device)  # 0-based count of each image
        # float64: float32's 24 bits would leave slots unreachable once millions of images have been offered
        draw = (torch.rand(len(images), dtype=torch.float64, device=self.device) * (number + 1)).long()
        slot = torch.where(number < capacity, number, draw)
        kept = slot < capacity
        self.images[slot[kept]] = images[kept].to(torch.float16)
        self.logits[slot[kept]] = logits[kept].float()
        self.offered += len(images)

    def sample(self, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.images is not None and self.logits is not None
        index = torch.randint(len(self), (count,), device=self.device)
        return self.images[index].float().contiguous(memory_format=torch.channels_last), self.logits[index]

    def state_dict(self) -> dict[str, Any]:
        filled = len(self)
        return {
            "images": None if self.images is None else self.images[:filled].clone(),
            "logits": None if self.logits is None else self.logits[:filled].clone(),
            "capacity": 0 if self.images is None else len(self.images),
            "offered": self.offered,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.offered = int(state["offered"])
        if state["images"] is None:
            return
        saved_images, saved_logits = state["images"], state["logits"]
        self._allocate(state["capacity"], saved_images.shape[1:], saved_logits.shape[1:])
        assert self.images is not None and self.logits is not None
        self.images[: len(saved_images)] = saved_images.to(self.device)
        self.logits[: len(saved_logits)] = saved_logits.to(self.device)


@dataclass
class DataFreeResult:
    method: str
    iterations: int
    final_loss: float  # mean student L1 over the last 5% of iterations, across all ranks
    wall_seconds: float
    generator: Generator
    world_size: int = 1
    batchnorm: str = ""  # for the report: where the BatchNorm prior found the teacher's layers (set by the caller)


def distil_data_free(
    student: nn.Module,
    teacher: Callable[[torch.Tensor], torch.Tensor],
    input_shape: tuple[int, int, int],
    config: DataFreeConfig,
    on_progress: ProgressFn | None = None,
    on_checkpoint: CheckpointFn | None = None,
    resume_from: dict[str, Any] | None = None,
    stop_requested: StopFn | None = None,
) -> DataFreeResult:
    """Train ``student`` in place from ``teacher`` alone; returns when the iteration budget is spent.

    ``teacher`` stays in eval mode and is never updated (its BN layers keep
    their running statistics). One iteration is one generator step,
    ``config.student_steps`` student steps, each on a fresh generated batch,
    and ``config.replay_steps`` on batches from the replay memory.

    Under torch.distributed, each rank generates its share of every batch from
    its own noise and replays its share from its own memory; DDP averages the
    generator's gradients in generator steps and the student's in student
    steps, so both stay the same on every rank. Only the caller on rank 0
    should pass ``on_checkpoint`` (and ``resume_from``: the other ranks get
    rank 0's, its replay memory included).
    """
    device = config.device
    ranks = distributed.ranks()
    if config.batch_size < ranks.world:
        raise ValueError(f"batch_size {config.batch_size} is smaller than the {ranks.world} training processes")
    started = time.perf_counter()
    method = resolve_method(config.method, teacher)
    torch.manual_seed(config.seed)
    generator = Generator(config.noise_dim, input_shape, config.generator_width).to(device).train()
    student.to(device).train()
    if isinstance(teacher, nn.Module):
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)

    # NHWC is oneDNN's and cuDNN's fast layout for convolutions: 1.3x per iteration on
    # this CPU (MNIST, width 16); the teacher's convolutions follow their input's layout.
    for model in (generator, student):
        model.to(memory_format=torch.channels_last)

    student_opt = torch.optim.SGD(student.parameters(), lr=config.student_lr, momentum=0.9, weight_decay=config.weight_decay)
    generator_opt = torch.optim.Adam(generator.parameters(), lr=config.generator_lr, betas=(0.5, 0.999))
    cosine = lambda step: 0.5 * (1 + math.cos(math.pi * min(step, config.iterations) / config.iterations))  # noqa: E731
    schedules = [torch.optim.lr_scheduler.LambdaLR(opt, cosine) for opt in (student_opt, generator_opt)]

    step = 0
    resume_from = distributed.from_leader(resume_from)
    if resume_from is not None:
        student.load_state_dict(resume_from["student"])
        generator.load_state_dict(resume_from["generator"])
        student_opt.load_state_dict(resume_from["student_optimizer"])
        generator_opt.load_state_dict(resume_from["generator_optimizer"])
        for schedule, state in zip(schedules, resume_from["schedules"]):
            schedule.load_state_dict(state)
        step = int(resume_from["step"])
        started -= resume_from.get("wall_seconds", 0.0)  # the run's wall time counts what came before the resume
        restore_rng(resume_from, device)  # the generator's noise draws from it
    if ranks.active:  # each rank its own noise stream (a resumed run starts a fresh one)
        torch.manual_seed(config.seed * 1_000_003 + step * 1_009 + ranks.rank + 1)
    # What a step trains goes through DDP: the generator in generator steps, the student in student steps.
    generator_step_model, student_step_model = distributed.wrap(generator, device), distributed.wrap(student, device)
    share = distributed.batch_share(config.batch_size, ranks)

    memory = ReplayMemory(config.replay_memory_mb * 2**20, input_shape, device) if config.replay_steps else None
    if memory is not None and memory.budget_bytes // memory.image_bytes < share:
        raise ValueError(
            f"replay_memory_mb {config.replay_memory_mb} holds fewer images of shape {list(input_shape)} than a "
            f"batch ({share}); raise it or set replay_steps to 0"
        )
    if memory is not None and resume_from is not None and resume_from.get("replay"):  # older checkpoints have none
        memory.load_state_dict(resume_from["replay"])

    prior = _BatchNormPrior(batchnorm_layers(teacher)) if method == "bn_prior" else None
    tail = max(1, config.iterations // 20)
    window_loss, window_steps, last_report = 0.0, 0, time.perf_counter()
    tail_loss, tail_steps = 0.0, 0
    try:
        while step < config.iterations:
            _generator_step(generator_step_model, student, teacher, generator_opt, prior, method, config, share)
            loss = sum(
                _student_step(generator, student_step_model, teacher, student_opt, config, share, memory)
                for _ in range(config.student_steps)
            )
            if memory is not None and len(memory) >= share:
                for _ in range(config.replay_steps):
                    _replay_step(memory, student_step_model, student_opt, share)
            for schedule in schedules:
                schedule.step()
            step += 1
            # One sync per iteration: the mean loss over ranks, and whether any rank was asked to stop.
            agreed = distributed.sum_across(
                torch.tensor([loss, float(stop_requested is not None and stop_requested())], dtype=torch.float64)
            )
            loss = float(agreed[0]) / (config.student_steps * ranks.world)
            stop = bool(agreed[1] > 0)

            if not math.isfinite(loss):
                raise TrainingDivergedError(f"student loss became {loss} at iteration {step}; lower the learning rates")
            window_loss += loss
            window_steps += 1
            if step > config.iterations - tail:
                tail_loss += loss
                tail_steps += 1
            now = time.perf_counter()
            if on_progress and (now - last_report >= 0.5 or step == config.iterations):
                on_progress(Progress(step, config.iterations, epoch=0, loss=window_loss / window_steps))
                window_loss, window_steps, last_report = 0.0, 0, now
            checkpoint_or_stop(
                step,
                config.iterations,
                config.checkpoint_interval_steps,
                on_checkpoint,
                lambda: stop,
                lambda: {
                    "student": student.state_dict(),
                    "generator": generator.state_dict(),
                    "student_optimizer": student_opt.state_dict(),
                    "generator_optimizer": generator_opt.state_dict(),
                    "schedules": [s.state_dict() for s in schedules],
                    **rng_state(device),
                    "replay": None if memory is None else memory.state_dict(),
                    "wall_seconds": time.perf_counter() - started,
                },
            )
    finally:
        if prior is not None:
            prior.remove()
        student.to(memory_format=torch.contiguous_format)  # what export and the checkpoints expect
    for model in (student, generator):
        distributed.copy_leader_state(model)
    student.eval()
    return DataFreeResult(
        method=method,
        iterations=config.iterations,
        final_loss=tail_loss / max(1, tail_steps),
        wall_seconds=time.perf_counter() - started,
        generator=generator,
        world_size=ranks.world,
    )


def _generator_step(
    generator: nn.Module,
    student: nn.Module,
    teacher: Callable[[torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    prior: _BatchNormPrior | None,
    method: str,
    config: DataFreeConfig,
    batch_size: int,
) -> None:
    z = torch.randn(batch_size, config.noise_dim, device=config.device)
    with _autocast(config.device):
        x = generator(z)
        if prior is not None:
            prior.active = True
        teacher_logits = teacher(x).float()
        if prior is not None:
            prior.active = False
        student_logits = student(x).float()
        # Maximise the teacher-student gap: where the student is still wrong.
        loss = -config.adversarial_weight * F.l1_loss(student_logits, teacher_logits)
        # Spread the teacher's classes: the negative entropy of the batch's mean prediction.
        mean_probability = teacher_logits.softmax(dim=1).mean(dim=0)
        loss = loss + config.balance_weight * (mean_probability * mean_probability.clamp_min(1e-8).log()).sum()
        if method == "bn_prior":
            assert prior is not None
            confidence = F.cross_entropy(teacher_logits, teacher_logits.argmax(dim=1))
            loss = loss + config.bn_weight * prior.take() + config.confidence_weight * confidence
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    student.zero_grad(set_to_none=True)  # the student's gradients from this step are not its own to use


def _student_step(
    generator: nn.Module,
    student: nn.Module,
    teacher: Callable[[torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    config: DataFreeConfig,
    batch_size: int,
    memory: ReplayMemory | None,
) -> float:
    z = torch.randn(batch_size, config.noise_dim, device=config.device)
    with torch.no_grad(), _autocast(config.device):
        x = generator(z)
        teacher_logits = teacher(x).float()
    if memory is not None:
        memory.add(x, teacher_logits)
    return float(_fit(student, optimizer, x, teacher_logits, config.device))


def _replay_step(memory: ReplayMemory, student: nn.Module, optimizer: torch.optim.Optimizer, batch_size: int) -> None:
    x, teacher_logits = memory.sample(batch_size)
    _fit(student, optimizer, x, teacher_logits, memory.device)  # no loss read back: no device sync


def _fit(
    student: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, teacher_logits: torch.Tensor, device: str
) -> torch.Tensor:
    """One student step on the L1 distance to the teacher's logits; returns the loss, detached."""
    with _autocast(device):
        loss = F.l1_loss(student(x).float(), teacher_logits)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


@dataclass
class GeneratorCheck:
    """What fresh generated images say about the generator and the student."""

    samples: int
    class_histogram: list[int]  # the teacher's top-1 over the samples; a collapsed generator shows here
    agreement: float  # percent of samples where the student's top-1 equals the teacher's
    grid: torch.Tensor  # 3 x H x W in [0, 1]: one row per class, the teacher's most confident samples first


class DataFreeFailedError(RuntimeError):
    """A data-free student that cannot be trusted: it matches the teacher no better than chance,
    or the generator covers too few classes for it to have learnt the rest (FAILED_PRECONDITION)."""


def judge_data_free(class_histogram: list[int], agreement: float) -> str:
    """Why a data-free result must not ship, judged on fresh generated images; "" when it may.

    Without labels these two are all there is: the student's agreement with the
    teacher, and how many classes the teacher sees in the generator's images (a
    class seen in under a quarter of its fair share counts as missing).
    """
    num_classes, samples = len(class_histogram), sum(class_histogram)
    if not samples:
        return ""  # nothing was sampled: nothing to judge by
    fair = samples / num_classes
    covered = sum(1 for n in class_histogram if n >= fair / 4)
    if near_chance(agreement, num_classes):
        return (
            f"the student agrees with the teacher on {agreement:.1f}% of {samples} fresh generated images, "
            f"near chance ({100 / num_classes:.0f}%): it did not learn the teacher"
        )
    if covered < num_classes / 2:
        return (
            f"the generator covers {covered} of {num_classes} classes (the teacher puts at least a quarter of a fair "
            "share of fresh generated images in them): the student cannot have learnt the rest"
        )
    return ""


def check_generator(
    generator: Generator,
    teacher: Callable[[torch.Tensor], torch.Tensor],
    student: nn.Module,
    samples: int = 2048,
    per_class: int = 8,
    batch_size: int = 256,
) -> GeneratorCheck:
    """Sample the generator once; count the teacher's classes, score agreement, draw the grid."""
    device = str(next(generator.parameters()).device)
    images = generator.sample(samples, batch_size)
    teacher_logits = predict(teacher, images.split(batch_size), device)
    student_logits = predict(student.to(device).eval(), images.split(batch_size), device)
    predicted = teacher_logits.argmax(dim=1)
    num_classes = teacher_logits.shape[1]
    confidence = teacher_logits.softmax(dim=1).max(dim=1).values

    channels, height, width = images.shape[1:]
    rows = torch.zeros(num_classes, per_class, 3, height, width)
    for c in range(num_classes):
        members = (predicted == c).nonzero().flatten()
        best = members[confidence[members].argsort(descending=True)[:per_class]]
        shown = images[best, :3] if channels >= 3 else images[best].expand(-1, 3, -1, -1)
        # Stretch each image to [0, 1] on its own: generated images have no fixed range.
        low = shown.amin(dim=(1, 2, 3), keepdim=True)
        high = shown.amax(dim=(1, 2, 3), keepdim=True)
        rows[c, : len(shown)] = (shown - low) / (high - low).clamp_min(1e-6)
    grid = rows.permute(2, 0, 3, 1, 4).reshape(3, num_classes * height, per_class * width)
    return GeneratorCheck(
        samples=samples,
        class_histogram=predicted.bincount(minlength=num_classes).tolist(),
        agreement=100.0 * (student_logits.argmax(dim=1) == predicted).float().mean().item(),
        grid=grid,
    )
