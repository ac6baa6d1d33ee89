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

Both start in the normalised input space most teachers expect: the
generator ends in a BatchNorm, so its images have zero mean and unit variance
per channel. Under ``bn_prior`` that BatchNorm has a learnt scale and shift:
a teacher that normalises inside (``Normalize`` as its first op, inputs in
[0, 1]) has first-layer statistics that pull the images into its range.
Under ``dfad`` nothing would hold a learnt range, and the adversarial term
would stretch it without end, so the range stays fixed.

Under ``bn_prior`` the generator first warms up alone (``warmup_steps``,
iterations / 20, 20 to 100) on the prior, the balance and the confidence
terms: until its range has settled, the teacher's logits on its images are
extreme (issue 19's teacher: every logit at the bound), and a student trained
on them, or a replay memory filled with them, learns nothing of use. On that
teacher the warm-up took a LeNet-5-half student from 10% (dead) to 30% after
60 iterations, and a BatchNorm weight of 10 instead of 1 to 48%.

A teacher trained elsewhere can make the generator collapse: its images drift
to the few classes it finds easiest, the teacher's logits on them run away,
and the student learns nothing (issue 19: one class 57% of the images, six
never seen, L1 729, a 10% student). Four guards:

- The teacher's logits are centred (softmax ignores a shared offset) and
  clamped to ``logit_bound`` wherever they are a target or part of the
  adversarial gap: past the bound the generator gains nothing, and the
  student's logits stay in the teacher's normal range.
- ``CoverageWatch`` counts the teacher's classes on the generator's fresh
  images, window by window. When classes vanish it acts, in steps: it turns
  on class-conditional targets (the generator takes a class label; a
  cross-entropy term asks the teacher to see that class, as CMI and NAYER
  do), weighted towards the missing classes; then doubles the balance weight
  while classes stay missing; then re-seeds the generator. Each action is an
  event and is listed in the report.
- The batch follows the number of classes (``batch_size`` 0: 16 images a
  class, 256 to 1024), so each class can appear in every batch.
- ``GradientGuard`` caps the student's gradient norm at three times its
  recent average, so one strange batch cannot switch off all its ReLUs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from distill import distributed
from distill.batchnorm import BatchNormTap
from distill.evaluate import near_chance
from distill.loop import CheckpointFn, ProgressFn, StepLoop, StopFn, autocast
from distill.trainer import predict

METHODS = ("auto", "dfad", "bn_prior")


@dataclass(frozen=True)
class DataFreeConfig:
    method: str = "auto"  # auto | dfad | bn_prior
    iterations: int = 2000  # generator steps
    student_steps: int = 2  # student steps per generator step on fresh images
    replay_steps: int = 10  # then student steps on images drawn from the replay memory
    replay_memory_mb: int = 128  # images (float16) and teacher logits kept for replay
    batch_size: int = 0  # 0: from the teacher's classes (see recipe_batch_size)
    student_lr: float = 0.1  # SGD, momentum 0.9, cosine to zero
    generator_lr: float = 1e-3  # Adam, cosine to zero
    weight_decay: float = 5e-4
    noise_dim: int = 256
    generator_width: int = 64  # channels of the generator's last block; earlier blocks double it
    # The generator's objective: adversarial + balance (both methods) + bn + confidence (bn_prior).
    adversarial_weight: float = 1.0
    bn_weight: float = 10.0  # issue 19's teacher, 60 iterations: 48% at 10, 30% at 1 (30: the same as 10)
    confidence_weight: float = 0.1
    balance_weight: float = 5.0
    target_weight: float = 1.0  # class-conditional targets, once the watch has turned them on
    logit_bound: float = 30.0  # |centred teacher logit| beyond which nothing is learnt or rewarded
    coverage_window: int = 0  # iterations per class-coverage verdict; 0: iterations / 40, at least 10
    warmup_steps: int = -1  # bn_prior: generator-only steps before the student trains; -1: iterations / 20, 20 to 100
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
            "batch_size must be 0 (from the teacher) or 2..65536 (BatchNorm needs two samples)": (
                self.batch_size == 0 or 2 <= self.batch_size <= 65_536
            ),
            "student_lr must be in (0, 10]": 0 < self.student_lr <= 10,
            "generator_lr must be in (0, 1]": 0 < self.generator_lr <= 1,
            "weight_decay must be in [0, 1]": 0 <= self.weight_decay <= 1,
            "noise_dim must be 1..4096": 1 <= self.noise_dim <= 4096,
            "generator_width must be 4..1024": 4 <= self.generator_width <= 1024,
            "loss weights must be finite and not negative": all(
                0 <= w < math.inf  # written so that NaN fails too
                for w in (
                    self.adversarial_weight, self.bn_weight, self.confidence_weight, self.balance_weight, self.target_weight
                )
            ),
            "logit_bound must be in (0, 10000]": 0 < self.logit_bound <= 10_000,
            "coverage_window must be 0..100000": 0 <= self.coverage_window <= 100_000,
            "warmup_steps must be -1 (from the iterations) or 0..100000": -1 <= self.warmup_steps <= 100_000,
            "checkpoint_interval_steps must be >= 1": self.checkpoint_interval_steps >= 1,
        }
        failed = [message for message, ok in checks.items() if not ok]
        if failed:
            raise ValueError("; ".join(failed))


class Generator(nn.Module):
    """Noise (and a class label) -> image of the teacher's input shape (DCGAN-style, as in DFAD).

    A linear layer makes a small map (about 8 px a side), 2x upsampling
    blocks grow it to the target size or just past it, a centre crop trims
    the excess (odd sizes such as 28 or 224 work the same way).

    With ``num_classes`` the noise is shifted by a learnt embedding of the
    label. It starts at zero, and until class-conditional targets are turned
    on nothing asks the images to depend on it (only the adversarial and
    balance terms move it). ``learn_range`` gives the last
    BatchNorm a learnt per-channel scale and shift (see the module's notes).
    """

    def __init__(
        self, noise_dim: int, input_shape: tuple[int, int, int], width: int = 64, num_classes: int = 0, learn_range: bool = False
    ) -> None:
        super().__init__()
        channels, height, width_px = input_shape
        self.input_shape = input_shape
        self.noise_dim = noise_dim
        self.width = width
        self.num_classes = num_classes
        self.learn_range = learn_range
        self.label_embedding = nn.Embedding(num_classes, noise_dim) if num_classes else None
        if self.label_embedding is not None:
            nn.init.zeros_(self.label_embedding.weight)
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
        layers += [nn.Conv2d(widths[-1], channels, 3, padding=1), nn.Tanh(), nn.BatchNorm2d(channels, affine=learn_range)]
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if labels is not None and self.label_embedding is not None:
            z = z + self.label_embedding(labels)
        x = self.project(z).view(z.shape[0], -1, *self.start)
        x = self.body(x)
        _, height, width = self.input_shape
        top, left = (x.shape[2] - height) // 2, (x.shape[3] - width) // 2
        return x[:, :, top : top + height, left : left + width]

    def to_checkpoint(self) -> dict[str, Any]:
        return {
            "noise_dim": self.noise_dim,
            "input_shape": list(self.input_shape),
            "width": self.width,
            "num_classes": self.num_classes,
            "learn_range": self.learn_range,
            "state_dict": self.state_dict(),
        }

    @staticmethod
    def from_checkpoint(saved: dict[str, Any]) -> Generator:
        """Rebuild a saved generator (e.g. the ``generator.pt`` artifact, to draw INT8 calibration data)."""
        generator = Generator(
            int(saved["noise_dim"]),
            tuple(saved["input_shape"]),
            int(saved["width"]),
            int(saved.get("num_classes", 0)),  # generators saved before labels and ranges were learnt have neither
            bool(saved.get("learn_range", False)),
        )
        generator.load_state_dict(saved["state_dict"])
        return generator

    def sample(self, count: int, batch_size: int = 256) -> torch.Tensor:
        """``count`` fresh images in the teacher's input space, on the CPU (e.g. INT8 calibration data).

        A conditional generator is asked for every class in turn, so the sample is balanced.
        """
        device = next(self.parameters()).device
        was_training = self.training
        self.train()  # the batch statistics are what the generator was trained with
        out = []
        with torch.no_grad():
            for start in range(0, count, batch_size):
                n = max(min(batch_size, count - start), 2)
                labels = (torch.arange(start, start + n, device=device) % self.num_classes) if self.num_classes else None
                out.append(self(torch.randn(n, self.noise_dim, device=device), labels)[: count - start].float().cpu())
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
    """Forward pre-hooks that measure how far each BN input's batch statistics are from the running ones.

    The statistics are summed over every call a layer gets in one teacher
    forward and compared in ``take``: a torch.export teacher with a static
    batch runs a batch in chunks (``StaticBatchModule``), and the batch's
    statistics, not a chunk's, are what the prior is about (issue 19's .pt2
    teacher was exported for batch 2: per-chunk variances of two images).
    """

    def __init__(self, layers: list[nn.BatchNorm2d]) -> None:
        self.layers = layers
        self.sums: dict[int, tuple[int, torch.Tensor, torch.Tensor]] = {}  # id(layer) -> (count, sum, sum of squares)
        self.active = False
        self.handles = [layer.register_forward_pre_hook(self._hook) for layer in layers]

    def _hook(self, layer: nn.BatchNorm2d, inputs: tuple[torch.Tensor, ...]) -> None:
        if not self.active:
            return
        x = inputs[0].float()
        count = x.shape[0] * x.shape[2] * x.shape[3]
        total, squares = x.sum(dim=(0, 2, 3)), x.square().sum(dim=(0, 2, 3))
        if id(layer) in self.sums:
            seen, seen_total, seen_squares = self.sums[id(layer)]
            count, total, squares = count + seen, total + seen_total, squares + seen_squares
        self.sums[id(layer)] = (count, total, squares)

    def take(self) -> torch.Tensor:
        terms = []
        for layer in self.layers:
            count, total, squares = self.sums[id(layer)]
            mean = total / count
            var = (squares / count - mean.square()).clamp_min(0)
            terms.append(torch.linalg.vector_norm(mean - layer.running_mean) + torch.linalg.vector_norm(var - layer.running_var))
        self.sums = {}
        return torch.stack(terms).mean()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def bounded_logits(logits: torch.Tensor, bound: float) -> torch.Tensor:
    """Logits centred on their mean (softmax ignores a shared offset) and clamped to [-bound, bound]."""
    return (logits - logits.mean(dim=1, keepdim=True)).clamp(-bound, bound)


def recipe_batch_size(num_classes: int) -> int:
    """16 generated images a class per batch, so every class can show in each one; 256 to 1024."""
    return min(1024, max(256, 16 * num_classes))


STUDENT_WITHOUT_BATCHNORM = (
    "the student has no BatchNorm layers: from a BatchNorm teacher's generated images such students learnt little "
    "(issue 19's MNIST CNN, 98.25%: LeNet-5-half 53-75%, cnn_bn_16 96.2%); prefer a student with BatchNorm"
)


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def describe_recipe(config: DataFreeConfig, requested_batch: int, num_classes: int, method: str, student_has_bn: bool) -> str:
    """For the report: what the run chose for this teacher, and why."""
    batch = (
        f"batch {config.batch_size} (set in the spec)" if requested_batch
        else f"batch {config.batch_size} (16 images a class for {num_classes} classes, 256 to 1024)"
    )
    output_range = (
        "output range learnt (bn_prior: the teacher's BatchNorm statistics say where its inputs lie)"
        if method == "bn_prior" else "output range fixed at zero mean, unit variance (dfad: nothing would hold a learnt one)"
    )
    warmup = (
        f"; generator warmed up for {config.warmup_steps} steps on the BatchNorm prior before the student trains"
        if config.warmup_steps else ""
    )
    student = f"; {STUDENT_WITHOUT_BATCHNORM}" if method == "bn_prior" and not student_has_bn else ""
    return (
        f"{batch}; class coverage judged every {config.coverage_window} iterations; {output_range}{warmup}; "
        f"teacher logits centred and bounded at {config.logit_bound:g}; student gradient norm capped at "
        f"{GradientGuard.FACTOR:g}x its recent average{student}"
    )


class CoverageWatch:
    """The teacher's classes on the generator's fresh images, window by window, and what is done when some vanish.

    A class the teacher sees in under a quarter of its fair share of a
    window's images counts as missing (``judge_data_free`` uses the same
    rule on the final sample). Actions, one per window, in this order:
    turn on class-conditional targets favouring the missing classes; while
    classes stay missing, double the balance weight (up to 8x); after
    ``RESEED_AFTER`` windows more, re-seed the generator (twice at most, in the run's first half).
    """

    RESEED_AFTER = 4
    MAX_BALANCE_SCALE = 8.0
    MAX_RESEEDS = 2
    MISSING_BOOST = 4.0  # a missing class is drawn as a target this many times as often as a covered one

    def __init__(self, num_classes: int, device: str) -> None:
        self.num_classes = num_classes
        self.device = device
        self.counts = torch.zeros(num_classes, dtype=torch.float64, device=device)
        self.targets_on = False
        self.balance_scale = 1.0
        self.missing: list[int] = []
        self.stuck_windows = 0  # windows with classes missing since the balance weight reached its cap (or the last re-seed)
        self.reseeds = 0
        self.events: list[str] = []

    def observe(self, teacher_logits: torch.Tensor) -> None:
        self.counts += teacher_logits.argmax(dim=1).bincount(minlength=self.num_classes).to(self.counts)

    @property
    def target_weights(self) -> torch.Tensor:
        """How often each class is drawn as a label: missing classes ``MISSING_BOOST`` times as often."""
        weights = torch.ones(self.num_classes, device=self.device)
        weights[self.missing] = self.MISSING_BOOST
        return weights

    def labels(self, count: int) -> torch.Tensor:
        """Class labels for a batch: uniform, with missing classes boosted."""
        return torch.multinomial(self.target_weights, count, replacement=True)

    def judge(self, step: int, total_steps: int, counts: torch.Tensor) -> str:
        """Close a window (``counts`` summed over all ranks); returns the action to take: "", "targets", "balance", "reseed"."""
        self.counts.zero_()
        total = float(counts.sum())
        if not total:
            return ""
        fair = total / self.num_classes
        missing = [c for c in range(self.num_classes) if counts[c] < fair / 4]
        share = lambda c: f"{c} ({100 * float(counts[c]) / total:.1f}%)"  # noqa: E731
        if not missing:
            if self.missing:
                self.events.append(f"iteration {step}: every class is covered again")
            self.missing, self.stuck_windows = [], 0
            return ""
        self.missing = missing
        seen = f"iteration {step}: the teacher saw {len(missing)} of {self.num_classes} classes rarely or never in the last {int(total)} generated images ({', '.join(share(c) for c in missing[:10])}{', ...' if len(missing) > 10 else ''})"
        if not self.targets_on:
            self.targets_on = True
            self.events.append(f"{seen}: class-conditional targets on, the missing classes drawn {self.MISSING_BOOST:g}x as often")
            return "targets"
        if self.balance_scale < self.MAX_BALANCE_SCALE:
            self.balance_scale *= 2
            self.events.append(f"{seen}: class-balance weight raised to {self.balance_scale:g}x")
            return "balance"
        self.stuck_windows += 1
        # A generator re-seeded late has no time to learn again: only in the first half of the run.
        if self.stuck_windows >= self.RESEED_AFTER and self.reseeds < self.MAX_RESEEDS and step <= total_steps / 2:
            self.reseeds += 1
            self.stuck_windows = 0
            self.events.append(f"{seen}: generator re-seeded ({self.reseeds} of at most {self.MAX_RESEEDS})")
            return "reseed"
        return ""

    def state_dict(self) -> dict[str, Any]:
        return {
            "counts": self.counts.cpu(), "targets_on": self.targets_on, "balance_scale": self.balance_scale,
            "missing": self.missing, "stuck_windows": self.stuck_windows, "reseeds": self.reseeds,
            "events": list(self.events),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.counts.copy_(state["counts"])
        self.targets_on, self.balance_scale = bool(state["targets_on"]), float(state["balance_scale"])
        self.missing, self.stuck_windows = list(state["missing"]), int(state["stuck_windows"])
        self.reseeds, self.events = int(state["reseeds"]), list(state["events"])


class GradientGuard:
    """Caps the student's gradient norm at ``FACTOR`` times its recent average.

    A student without BatchNorm can die in one step: on images the teacher
    finds strange its gradient can double step after step until one update
    switches every ReLU off for good (issue 19's teacher: norm 0.4 to 77 in
    five steps, then a constant student at chance). A cap relative to the
    run's own average needs no scale per model. All on the device: no sync.
    """

    FACTOR = 3.0
    DECAY = 0.9

    def __init__(self, device: str) -> None:
        self.average = torch.zeros((), device=device)  # 0 until the first step

    def clip(self, parameters: list[nn.Parameter]) -> None:
        parameters = [p for p in parameters if p.grad is not None]
        norm = torch.nn.utils.get_total_norm([p.grad for p in parameters])
        cap = torch.where(self.average > 0, self.FACTOR * self.average, norm)
        torch.nn.utils.clip_grads_with_norm_(parameters, cap, norm)
        kept = torch.minimum(norm, cap)
        self.average = torch.where(self.average > 0, self.DECAY * self.average + (1 - self.DECAY) * kept, kept)

    def state_dict(self) -> dict[str, Any]:
        return {"average": self.average.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.average = state["average"].to(self.average.device)


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
    batch_size: int = 0  # as run: the config's, or the one chosen from the teacher's classes
    logit_bound: float = 0.0
    interventions: list[str] = field(default_factory=list)  # what the coverage watch saw and did, in order
    recipe: str = ""  # what was adapted to the teacher, and why
    missing_classes: list[int] = field(default_factory=list)  # classes still missing in the last window


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
    started = time.perf_counter()
    method = resolve_method(config.method, teacher)
    if isinstance(teacher, nn.Module):
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    with torch.no_grad():
        num_classes = teacher(torch.zeros(2, *input_shape, device=device)).shape[1]
    requested_batch = config.batch_size
    config = replace(
        config,
        batch_size=config.batch_size or recipe_batch_size(num_classes),
        coverage_window=config.coverage_window or max(10, config.iterations // 40),
        warmup_steps=(
            0 if method != "bn_prior" else config.warmup_steps if config.warmup_steps >= 0
            else min(100, max(20, config.iterations // 20))
        ),
    )
    if config.batch_size < ranks.world:
        raise ValueError(f"batch_size {config.batch_size} is smaller than the {ranks.world} training processes")
    torch.manual_seed(config.seed)
    generator = Generator(
        config.noise_dim, input_shape, config.generator_width, num_classes, learn_range=method == "bn_prior"
    ).to(device).train()
    student.to(device).train()

    # NHWC is oneDNN's and cuDNN's fast layout for convolutions: 1.3x per iteration on
    # this CPU (MNIST, width 16); the teacher's convolutions follow their input's layout.
    for model in (generator, student):
        model.to(memory_format=torch.channels_last)

    student_opt = torch.optim.SGD(student.parameters(), lr=config.student_lr, momentum=0.9, weight_decay=config.weight_decay)
    # The learnt output range has one scale and shift a channel to move, often far (a teacher taking [0, 1]
    # inputs wants std 0.3, not 1): it learns 50x faster than the layers that shape the images, and
    # reaches such a teacher's range in about 30 warm-up steps (MNIST; 10x took 200).
    output_range = list(generator.body[-1].parameters())
    shaping = [p for p in generator.parameters() if all(p is not q for q in output_range)]
    generator_opt = torch.optim.Adam(
        [{"params": shaping}, {"params": output_range, "lr": 50 * config.generator_lr}],
        lr=config.generator_lr,
        betas=(0.5, 0.999),
    )
    cosine = lambda step: 0.5 * (1 + math.cos(math.pi * min(step, config.iterations) / config.iterations))  # noqa: E731
    schedules = [torch.optim.lr_scheduler.LambdaLR(opt, cosine) for opt in (student_opt, generator_opt)]

    watch = CoverageWatch(num_classes, device)
    guard = GradientGuard(device)
    loop = StepLoop(
        config.iterations, config.checkpoint_interval_steps, device, on_progress, on_checkpoint, stop_requested,
        divergence_advice="lower the learning rates", started=started,
    )
    resume_from = loop.resume(resume_from)  # the generator's noise draws from the restored random stream
    if resume_from is not None:
        student.load_state_dict(resume_from["student"])
        generator.load_state_dict(resume_from["generator"])
        student_opt.load_state_dict(resume_from["student_optimizer"])
        generator_opt.load_state_dict(resume_from["generator_optimizer"])
        for schedule, state in zip(schedules, resume_from["schedules"]):
            schedule.load_state_dict(state)
        if resume_from.get("coverage"):  # older checkpoints have none
            watch.load_state_dict(resume_from["coverage"])
        if resume_from.get("gradient_guard"):
            guard.load_state_dict(resume_from["gradient_guard"])
    step = loop.step
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
    tail_loss, tail_steps = 0.0, 0
    try:
        if loop.step == 0 and method == "bn_prior" and not has_batchnorm(student):
            loop.tell(f"warning: {STUDENT_WITHOUT_BATCHNORM}")
        if loop.step == 0 and config.warmup_steps:
            loop.tell(
                f"generator warm-up: {config.warmup_steps} steps on the teacher's BatchNorm statistics "
                "before the student trains"
            )
            for _ in range(config.warmup_steps):
                _generator_step(generator_step_model, None, teacher, generator_opt, prior, method, config, share, watch)
        while not loop.done:
            _generator_step(generator_step_model, student, teacher, generator_opt, prior, method, config, share, watch)
            loss = sum(
                _student_step(generator, student_step_model, teacher, student_opt, config, share, memory, watch, guard)
                for _ in range(config.student_steps)
            )
            if memory is not None and len(memory) >= share:
                for _ in range(config.replay_steps):
                    _replay_step(memory, student_step_model, student_opt, share, guard)
            for schedule in schedules:
                schedule.step()
            step = loop.step + 1
            if step % config.coverage_window == 0:  # judged before the checkpoint, so that it holds the action
                seen = len(watch.events)
                if watch.judge(step, config.iterations, distributed.sum_across(watch.counts.clone())) == "reseed":
                    _reseed(generator, generator_opt, config.seed + 7_919 * watch.reseeds)
                for event in watch.events[seen:]:
                    loop.tell(event, step)
            loss = loop.finish_step(
                loss / config.student_steps,
                lambda: {
                    "student": student.state_dict(),
                    "generator": generator.state_dict(),
                    "student_optimizer": student_opt.state_dict(),
                    "generator_optimizer": generator_opt.state_dict(),
                    "schedules": [s.state_dict() for s in schedules],
                    "replay": None if memory is None else memory.state_dict(),
                    "coverage": watch.state_dict(),
                    "gradient_guard": guard.state_dict(),
                },
            )
            if step > config.iterations - tail:
                tail_loss += loss
                tail_steps += 1
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
        wall_seconds=loop.seconds,
        generator=generator,
        world_size=ranks.world,
        batch_size=config.batch_size,
        logit_bound=config.logit_bound,
        interventions=list(watch.events),
        missing_classes=list(watch.missing),
        recipe=describe_recipe(config, requested_batch, num_classes, method, has_batchnorm(student)),
    )


def _generator_step(
    generator: nn.Module,
    student: nn.Module | None,
    teacher: Callable[[torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    prior: _BatchNormPrior | None,
    method: str,
    config: DataFreeConfig,
    batch_size: int,
    watch: CoverageWatch,
) -> None:
    z = torch.randn(batch_size, config.noise_dim, device=config.device)
    labels = watch.labels(batch_size)
    with autocast(config.device):
        x = generator(z, labels)
        if prior is not None:
            prior.active = True
        teacher_logits = teacher(x).float()
        if prior is not None:
            prior.active = False
        loss = torch.zeros((), device=x.device)
        if student is not None:  # None in the warm-up: an untrained student's errors say nothing yet
            # Maximise the teacher-student gap: where the student is still wrong (nothing to gain past the bound).
            student_logits = student(x).float()
            loss = -config.adversarial_weight * F.l1_loss(student_logits, bounded_logits(teacher_logits, config.logit_bound))
        # Spread the teacher's classes: the negative entropy of the batch's mean prediction.
        mean_probability = teacher_logits.softmax(dim=1).mean(dim=0)
        balance = config.balance_weight * watch.balance_scale
        loss = loss + balance * (mean_probability * mean_probability.clamp_min(1e-8).log()).sum()
        if watch.targets_on:  # make each image the class it was asked for
            loss = loss + config.target_weight * F.cross_entropy(teacher_logits, labels)
        if method == "bn_prior":
            assert prior is not None
            confidence = F.cross_entropy(teacher_logits, teacher_logits.argmax(dim=1))
            loss = loss + config.bn_weight * prior.take() + config.confidence_weight * confidence
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if student is not None:
        student.zero_grad(set_to_none=True)  # the student's gradients from this step are not its own to use


def _reseed(generator: nn.Module, optimizer: torch.optim.Optimizer, seed: int) -> None:
    """Start the generator afresh (same seed on every rank, so DDP's copies stay equal), its Adam state too."""
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else []):
        torch.manual_seed(seed)
        for module in generator.modules():
            if module is not generator and hasattr(module, "reset_parameters"):
                module.reset_parameters()
    optimizer.state.clear()


def _student_step(
    generator: nn.Module,
    student: nn.Module,
    teacher: Callable[[torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    config: DataFreeConfig,
    batch_size: int,
    memory: ReplayMemory | None,
    watch: CoverageWatch,
    guard: GradientGuard,
) -> float:
    z = torch.randn(batch_size, config.noise_dim, device=config.device)
    with torch.no_grad(), autocast(config.device):
        x = generator(z, watch.labels(batch_size))
        teacher_logits = teacher(x).float()
    watch.observe(teacher_logits)
    teacher_logits = bounded_logits(teacher_logits, config.logit_bound)
    if memory is not None:
        memory.add(x, teacher_logits)
    return float(_fit(student, optimizer, x, teacher_logits, config.device, guard))


def _replay_step(
    memory: ReplayMemory, student: nn.Module, optimizer: torch.optim.Optimizer, batch_size: int, guard: GradientGuard
) -> None:
    x, teacher_logits = memory.sample(batch_size)
    _fit(student, optimizer, x, teacher_logits, memory.device, guard)  # no loss read back: no device sync


def _fit(
    student: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    teacher_logits: torch.Tensor,
    device: str,
    guard: GradientGuard,
) -> torch.Tensor:
    """One student step on the L1 distance to the teacher's logits; returns the loss, detached."""
    with autocast(device):
        loss = F.l1_loss(student(x).float(), teacher_logits)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    guard.clip(list(student.parameters()))
    optimizer.step()
    return loss.detach()


@dataclass
class GeneratorCheck:
    """What fresh generated images say about the generator and the student."""

    samples: int
    class_histogram: list[int]  # the teacher's top-1 over the samples; a collapsed generator shows here
    agreement: float  # percent of samples where the student's top-1 equals the teacher's
    teacher_confidence: float  # the teacher's mean top-1 probability on them, percent: low means in-between images
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
        teacher_confidence=100.0 * confidence.mean().item(),
        grid=grid,
    )
