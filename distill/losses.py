"""Distillation losses: the method registry and the weighted sum a job trains on.

Each method is one ``Loss`` subclass in its own file under ``distill/methods``,
registered by name. The class says everything the rest of the system needs:
its parameters with defaults and bounds (spec validation reads them), what it
needs (teacher, labels, the teacher's layers, a second view), its
layer-pair rule, and how to build itself for a teacher and student. It reads
what a training step produced (``Step``: logits, labels, tapped features) and
may own learned adapters, which train with the student and are dropped
afterwards. Methods with a preliminary stage (FitNets' hint training, FSP's
flow transfer) return their stage-one loss from ``pretrain_loss``; the
trainer runs that stage first.

A new method is one file in ``distill/methods`` (and one proto message for
the API): ``python -m distill.losses`` prints the README's method table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from distill import features


@dataclass
class Step:
    """What one training step produced, for the losses to read."""

    student_logits: torch.Tensor
    labels: torch.Tensor | None
    teacher_logits: torch.Tensor | None = None
    student_features: dict[str, torch.Tensor] = field(default_factory=dict)
    teacher_features: dict[str, torch.Tensor] = field(default_factory=dict)
    # A second, differently distorted view of the batch (self-distillation): logits and features.
    second_logits: torch.Tensor | None = None
    second_features: dict[str, torch.Tensor] = field(default_factory=dict)
    stage_progress: float = 1.0  # how far through its stage (0..1) training is: stage one's schedule (dense_flow)


@dataclass(frozen=True)
class Param:
    """One numeric parameter of a method: its default (what 0 or unset in a spec means) and bounds."""

    default: float
    low: float
    high: float


@dataclass(frozen=True)
class MethodConfig:
    """One loss term as a job asks for it: the method's name, weight and parameters.

    ``layers`` are (teacher path, student path) pairs; empty means pair the
    models' stages automatically.
    """

    method: str
    weight: float = 1.0
    params: dict[str, float] = field(default_factory=dict)
    layers: tuple[tuple[str, str], ...] = ()

    @property
    def uses_features(self) -> bool:
        return method(self.method).needs_teacher_features

    def param(self, name: str) -> float:
        """The value asked for, or the method's default."""
        return self.params.get(name, method(self.method).params[name].default)


class Loss(nn.Module):
    """One method's loss. Subclasses say what they are and need; the trainer provides it."""

    name: ClassVar[str]
    summary: ClassVar[str]  # one line for the README's method table
    params: ClassVar[dict[str, Param]] = {}
    needs_teacher: ClassVar[bool] = True
    needs_labels: ClassVar[bool] = False
    needs_teacher_features: ClassVar[bool] = False  # the teacher's layers: a weights or TorchScript teacher
    layer_pairs: ClassVar[tuple[int, float]] = (0, 0)  # how many named layer pairs it takes (none: pair automatically)
    views = 1  # 2: the student also sees a second distortion of each batch
    pretrain_epochs = 0

    @classmethod
    def build(
        cls, config: MethodConfig, teacher: nn.Module | None, student: nn.Module, input_shape: tuple[int, int, int]
    ) -> Loss:
        """This method's loss for a teacher and student (adapters sized to their feature maps)."""
        return cls(**{name: config.param(name) for name in cls.params})

    def check(self, **values: float) -> None:
        """Refuse values outside the method's declared bounds (the spec's validation uses the same ones)."""
        for param, value in values.items():
            bounds = self.params[param]
            if not bounds.low <= value <= bounds.high:
                raise ValueError(f"{self.name} {param} must be in [{bounds.low:g}, {bounds.high:g}], got {value:g}")

    def teacher_layers(self) -> list[str]:
        return []

    def student_layers(self) -> list[str]:
        return []

    def forward(self, step: Step) -> torch.Tensor:
        raise NotImplementedError

    def pretrain_loss(self, step: Step) -> torch.Tensor | None:
        """The stage-one loss, or None for methods without a first stage."""
        return None


@dataclass(frozen=True)
class Pairing:
    """The layer pairs a feature method runs on, and the models they are in (to size its adapters)."""

    layers: list[tuple[str, str]]  # (teacher layer, student layer)
    teacher: nn.Module
    student: nn.Module
    input_shape: tuple[int, int, int]

    def teacher_shape(self, layer: str) -> tuple[int, ...]:
        return features.output_shape(self.teacher, layer, self.input_shape)

    def student_shape(self, layer: str) -> tuple[int, ...]:
        return features.output_shape(self.student, layer, self.input_shape)


class FeatureLoss(Loss):
    """A method on the models' intermediate feature maps: built from (teacher layer, student layer) pairs."""

    needs_teacher_features = True
    pairs: list[tuple[str, str]]  # (teacher layer, student layer), set by the method's constructor

    def teacher_layers(self) -> list[str]:
        return [t for t, _ in self.pairs]

    def student_layers(self) -> list[str]:
        return [s for _, s in self.pairs]

    @classmethod
    def build(
        cls, config: MethodConfig, teacher: nn.Module | None, student: nn.Module, input_shape: tuple[int, int, int]
    ) -> Loss:
        if teacher is None:
            raise ValueError(f"{cls.name} {FEATURES_NEED_MODULES}")
        return cls.from_pairs(config, Pairing(paired_layers(config, teacher, student, input_shape), teacher, student, input_shape))

    @classmethod
    def from_pairs(cls, config: MethodConfig, pairs: Pairing) -> Loss:
        raise NotImplementedError


REGISTRY: dict[str, type[Loss]] = {}


def register(cls: type[Loss]) -> type[Loss]:
    """Class decorator: makes a method known by its ``name``."""
    if cls.name in REGISTRY:
        raise ValueError(f"method {cls.name!r} registered twice")
    REGISTRY[cls.name] = cls
    return cls


def method(name: str) -> type[Loss]:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(REGISTRY)}") from None


def require_labels(step: Step, method_name: str) -> torch.Tensor:
    if step.labels is None:
        raise ValueError(f"{method_name} needs labelled data")
    return step.labels


def paired_layers(config: MethodConfig, teacher: nn.Module, student: nn.Module, input_shape: tuple[int, int, int]) -> list[tuple[str, str]]:
    """The pairs a job named (checked to exist), or the models' stages paired by spatial size."""
    if config.layers:
        for t, s in config.layers:
            features.module_by_path(teacher, t)
            features.module_by_path(student, s)
        return list(config.layers)
    return [(t[0], s[0]) for t, s in features.pair_stages(teacher, student, input_shape)]


class WeightedLoss(nn.Module):
    """A weighted sum of losses: what a job trains on."""

    def __init__(self, terms: list[tuple[float, Loss]]) -> None:
        super().__init__()
        if not terms:
            raise ValueError("at least one loss term is needed")
        for weight, _ in terms:
            if not 0 < weight <= 1000:
                raise ValueError(f"loss weights must be in (0, 1000], got {weight}")
        self.weights = [w for w, _ in terms]
        self.terms = nn.ModuleList([t for _, t in terms])

    @property
    def needs_teacher(self) -> bool:
        return any(t.needs_teacher for t in self.terms)

    @property
    def needs_labels(self) -> bool:
        return any(t.needs_labels for t in self.terms)

    @property
    def views(self) -> int:
        return max(t.views for t in self.terms)

    @property
    def pretrain_epochs(self) -> int:
        return max(t.pretrain_epochs for t in self.terms)

    def teacher_layers(self) -> list[str]:
        return list(dict.fromkeys(name for t in self.terms for name in t.teacher_layers()))

    def student_layers(self) -> list[str]:
        return list(dict.fromkeys(name for t in self.terms for name in t.student_layers()))

    def __str__(self) -> str:
        parts = []
        for w, t in zip(self.weights, self.terms):
            name = f"{t.name}({t.extra_repr()})" if t.extra_repr() else t.name
            parts.append(name if w == 1 else f"{w:g}*{name}")
        return " + ".join(parts)

    def forward(self, step: Step, pretraining: bool = False) -> torch.Tensor:
        total = step.student_logits.new_zeros((), dtype=torch.float32)
        for weight, term in zip(self.weights, self.terms):
            loss = term.pretrain_loss(step) if pretraining else term(step)
            if loss is not None:
                total = total + weight * loss
        return total


FEATURES_NEED_MODULES = (
    "needs the teacher's layers: upload it as TorchScript, or as weights with a registry or timm architecture; "
    "torch.export and ONNX teachers distil with logit methods only"
)


def build_loss(
    configs: list[MethodConfig],
    teacher: nn.Module | None,
    student: nn.Module,
    input_shape: tuple[int, int, int],
    teacher_exposes_modules: bool = True,
) -> WeightedLoss:
    """Loss modules for this teacher and student."""
    terms: list[tuple[float, Loss]] = []
    for config in configs:
        cls = method(config.method)
        if cls.needs_teacher_features and (teacher is None or not teacher_exposes_modules):
            raise ValueError(f"{config.method} {FEATURES_NEED_MODULES}")
        terms.append((config.weight, cls.build(config, teacher, student, input_shape)))
    return WeightedLoss(terms)


def method_table() -> str:
    """The README's method table, from the registry."""
    rows = ["| method | what it is | parameters (default, range) | needs |", "|---|---|---|---|"]
    for name, cls in REGISTRY.items():
        params = ", ".join(
            f"`{p}` ({v.default:g}, {v.low:g}-{v.high:g})" for p, v in cls.params.items()
        ) or "none"
        needs = [
            *(["teacher"] if cls.needs_teacher else []),
            *(["labels"] if cls.needs_labels else []),
            *(["the teacher's layers (a weights or TorchScript teacher)"] if cls.needs_teacher_features else []),
            *(["two views of each batch"] if cls.views == 2 else []),
        ]
        low, high = cls.layer_pairs
        if high:
            count = f"{low}" if low == high else f"{low} or more" if math.isinf(high) else f"{low}-{high:g}"
            needs.append(f"layer pairs: {count}, or none to pair stages by size")
        rows.append(f"| `{name}` | {cls.summary} | {params} | {', '.join(needs) or 'nothing'} |")
    return "\n".join(rows)


from distill import methods  # noqa: E402,F401  (registers every method; they import this module)

if __name__ == "__main__":  # this file runs as __main__: the registry the methods fill is distill.losses'
    from distill import losses, methods  # noqa: F401 (importing the methods registers them)

    print(losses.method_table())
