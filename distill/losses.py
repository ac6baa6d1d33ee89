"""Distillation losses from the literature, combined as a weighted sum.

Each method is one ``Loss`` module. It reads what a training step produced
(``Step``: logits, labels, tapped features) and may own learned adapters,
which train with the student and are dropped afterwards. Methods with a
preliminary stage (FitNets' hint training, FSP's flow transfer) return their
stage-one loss from ``pretrain_loss``; the trainer runs that stage first.

Method configs (``*Config``) are plain values a job spec maps onto;
``build_loss`` turns them into modules for a given teacher and student,
pairing their feature maps by spatial size when no layers are named.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
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


class Loss(nn.Module):
    """One method's loss. Subclasses say what they need; the trainer provides it."""

    needs_teacher = True
    needs_labels = False
    views = 1  # 2: the student also sees a second distortion of each batch
    pretrain_epochs = 0

    def teacher_layers(self) -> list[str]:
        return []

    def student_layers(self) -> list[str]:
        return []

    def forward(self, step: Step) -> torch.Tensor:
        raise NotImplementedError

    def pretrain_loss(self, step: Step) -> torch.Tensor | None:
        """The stage-one loss, or None for methods without a first stage."""
        return None


def _require_labels(step: Step, method: str) -> torch.Tensor:
    if step.labels is None:
        raise ValueError(f"{method} needs labelled data")
    return step.labels


# ------------------------------------------------------------------ logits


class KnowledgeDistillation(Loss):
    """Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network".

    ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)``.
    The T^2 factor keeps the soft-target gradients on the scale of the hard
    ones when T changes. Without labels the CE term is dropped and the KL term
    carries the whole weight.
    """

    def __init__(self, temperature: float = 4.0, alpha: float = 0.9) -> None:
        super().__init__()
        if not 0 < temperature <= 100:
            raise ValueError(f"kd temperature must be in (0, 100], got {temperature}")
        if not 0 <= alpha <= 1:
            raise ValueError(f"kd alpha must be in [0, 1], got {alpha}")
        self.temperature, self.alpha = temperature, alpha

    def extra_repr(self) -> str:
        return f"T={self.temperature:g}, alpha={self.alpha:g}"

    def forward(self, step: Step) -> torch.Tensor:
        assert step.teacher_logits is not None
        t = self.temperature
        soft = F.kl_div(
            F.log_softmax(step.student_logits.float() / t, dim=1),
            F.log_softmax(step.teacher_logits.float() / t, dim=1),
            reduction="batchmean",
            log_target=True,
        ) * (t * t)
        if step.labels is None:
            return soft
        return self.alpha * soft + (1 - self.alpha) * F.cross_entropy(step.student_logits.float(), step.labels)


class CrossEntropy(Loss):
    """Hard labels only: the student trained alone (the baseline)."""

    needs_teacher = False
    needs_labels = True

    def forward(self, step: Step) -> torch.Tensor:
        return F.cross_entropy(step.student_logits.float(), _require_labels(step, "cross_entropy"))


# ---------------------------------------------------------------- features


class FitNet(Loss):
    """Romero et al. (2015), "FitNets: Hints for Thin Deep Nets".

    Stage one trains the student up to its guided layer, through a learned
    regressor, to reproduce the teacher's hint layer:
    ``1/2 * ||hint - regressor(guided)||^2`` per sample, averaged over the
    batch. Stage two is the task (pair it with ``kd``); this term adds
    nothing there.
    """

    def __init__(self, hint: str, guided: str, regressor: nn.Module, hint_epochs: int = 2) -> None:
        super().__init__()
        self.hint, self.guided, self.regressor = hint, guided, regressor
        self.pretrain_epochs = hint_epochs

    def extra_repr(self) -> str:
        return f"hint={self.hint}, guided={self.guided}, hint_epochs={self.pretrain_epochs}"

    def teacher_layers(self) -> list[str]:
        return [self.hint]

    def student_layers(self) -> list[str]:
        return [self.guided]

    def pretrain_loss(self, step: Step) -> torch.Tensor:
        diff = self.regressor(step.student_features[self.guided].float()) - step.teacher_features[self.hint].float()
        return 0.5 * diff.pow(2).flatten(1).sum(1).mean()

    def forward(self, step: Step) -> torch.Tensor:
        return step.student_logits.new_zeros((), dtype=torch.float32)


def attention_map(x: torch.Tensor) -> torch.Tensor:
    """Zagoruyko & Komodakis: the mean over channels of squared activations, flattened and L2-normalised."""
    return F.normalize(x.float().pow(2).mean(1).flatten(1), dim=1)


class AttentionTransfer(Loss):
    """Zagoruyko & Komodakis (2017), "Paying More Attention to Attention", p = 2.

    ``beta / 2 * sum over pairs of mean((Q_s - Q_t)^2)`` with Q the normalised
    attention maps; the mean runs over batch and positions, as in the
    authors' code, for which beta = 1000 is calibrated. Pair with ``kd`` or
    ``cross_entropy`` for the task.
    """

    def __init__(self, pairs: list[tuple[str, str]], beta: float = 1000.0) -> None:
        super().__init__()
        if not pairs:
            raise ValueError("attention needs at least one layer pair")
        self.pairs, self.beta = pairs, beta

    def extra_repr(self) -> str:
        return f"pairs={self.pairs}, beta={self.beta:g}"

    def teacher_layers(self) -> list[str]:
        return [t for t, _ in self.pairs]

    def student_layers(self) -> list[str]:
        return [s for _, s in self.pairs]

    def forward(self, step: Step) -> torch.Tensor:
        total = step.student_logits.new_zeros((), dtype=torch.float32)
        for t, s in self.pairs:
            a_s, a_t = attention_map(step.student_features[s]), attention_map(step.teacher_features[t])
            total = total + (a_s - a_t).pow(2).mean()
        return self.beta / 2 * total


def fsp_matrix(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Yim et al.: G = F1^T F2 / (h * w), batch x c1 x c2. The larger map is pooled to the smaller's size."""
    first, second = first.float(), second.float()
    if first.shape[2:] != second.shape[2:]:
        size = min(first.shape[2:], second.shape[2:], key=lambda s: s[0] * s[1])
        first, second = F.adaptive_avg_pool2d(first, size), F.adaptive_avg_pool2d(second, size)
    h, w = first.shape[2:]
    return torch.bmm(first.flatten(2), second.flatten(2).transpose(1, 2)) / (h * w)


class FlowOfSolutionProcedure(Loss):
    """Yim et al. (CVPR 2017), "A Gift from Knowledge Distillation" (FSP).

    Stage one makes the student's FSP matrices between consecutive stages
    match the teacher's: ``mean over pairs of ||G_t - G_s||^2`` (summed over
    matrix entries, averaged over the batch). Stage two is the task (pair with
    ``cross_entropy`` or ``kd``). When channel counts differ, 1x1 adapters
    lift the student's maps to the teacher's widths.
    """

    def __init__(self, pairs: list[tuple[str, str]], adapters: dict[str, nn.Module], flow_epochs: int = 2) -> None:
        super().__init__()
        if len(pairs) < 2:
            raise ValueError("fsp needs at least two layer pairs (one flow between them)")
        self.pairs = pairs
        self.adapters = nn.ModuleDict({k.replace(".", "__"): m for k, m in adapters.items()})
        self.pretrain_epochs = flow_epochs

    def extra_repr(self) -> str:
        return f"pairs={self.pairs}, flow_epochs={self.pretrain_epochs}"

    def teacher_layers(self) -> list[str]:
        return [t for t, _ in self.pairs]

    def student_layers(self) -> list[str]:
        return [s for _, s in self.pairs]

    def _student_map(self, step: Step, layer: str) -> torch.Tensor:
        x = step.student_features[layer]
        key = layer.replace(".", "__")
        return self.adapters[key](x) if key in self.adapters else x

    def pretrain_loss(self, step: Step) -> torch.Tensor:
        total = step.student_logits.new_zeros((), dtype=torch.float32)
        for (t1, s1), (t2, s2) in zip(self.pairs, self.pairs[1:]):
            g_t = fsp_matrix(step.teacher_features[t1], step.teacher_features[t2])
            g_s = fsp_matrix(self._student_map(step, s1), self._student_map(step, s2))
            total = total + (g_t - g_s).pow(2).flatten(1).sum(1).mean()
        return total / (len(self.pairs) - 1)

    def forward(self, step: Step) -> torch.Tensor:
        return step.student_logits.new_zeros((), dtype=torch.float32)


class SelfDistillation(Loss):
    """Xu & Liu (AAAI 2019), "Data-Distortion Guided Self-Distillation for Deep Neural Networks".

    One network sees two distortions of each image:
    ``CE(z1, y) + CE(z2, y) + kl_weight * (KL(p1 || p2) + KL(p2 || p1))
    + mmd_weight * MMD(f1, f2)``, with MMD the squared distance between the
    batch means of the two embeddings (linear kernel). No teacher is used.
    """

    needs_teacher = False
    needs_labels = True
    views = 2

    def __init__(self, embedding: str, kl_weight: float = 1.0, mmd_weight: float = 1.0) -> None:
        super().__init__()
        self.embedding, self.kl_weight, self.mmd_weight = embedding, kl_weight, mmd_weight

    def extra_repr(self) -> str:
        return f"kl_weight={self.kl_weight:g}, mmd_weight={self.mmd_weight:g}"

    def student_layers(self) -> list[str]:
        return [self.embedding]

    def forward(self, step: Step) -> torch.Tensor:
        labels = _require_labels(step, "self_distill")
        assert step.second_logits is not None
        z1, z2 = step.student_logits.float(), step.second_logits.float()
        log_p1, log_p2 = F.log_softmax(z1, dim=1), F.log_softmax(z2, dim=1)
        kl = F.kl_div(log_p2, log_p1, reduction="batchmean", log_target=True) + F.kl_div(
            log_p1, log_p2, reduction="batchmean", log_target=True
        )
        f1 = step.student_features[self.embedding].float().flatten(1)
        f2 = step.second_features[self.embedding].float().flatten(1)
        mmd = (f1.mean(0) - f2.mean(0)).pow(2).sum()
        return F.cross_entropy(z1, labels) + F.cross_entropy(z2, labels) + self.kl_weight * kl + self.mmd_weight * mmd


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
            name = f"{METHOD_NAMES[type(t)]}({t.extra_repr()})" if t.extra_repr() else METHOD_NAMES[type(t)]
            parts.append(name if w == 1 else f"{w:g}*{name}")
        return " + ".join(parts)

    def forward(self, step: Step, pretraining: bool = False) -> torch.Tensor:
        total = step.student_logits.new_zeros((), dtype=torch.float32)
        for weight, term in zip(self.weights, self.terms):
            loss = term.pretrain_loss(step) if pretraining else term(step)
            if loss is not None:
                total = total + weight * loss
        return total


METHOD_NAMES: dict[type[Loss], str] = {
    KnowledgeDistillation: "kd",
    CrossEntropy: "cross_entropy",
    FitNet: "fitnet",
    AttentionTransfer: "attention",
    FlowOfSolutionProcedure: "fsp",
    SelfDistillation: "self_distill",
}


# ------------------------------------------------------------ construction


FEATURES_NEED_MODULES = (
    "needs the teacher's internals: upload it as a state_dict with a registry architecture; "
    "TorchScript, torch.export and ONNX teachers distil with kd only"
)


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
        return self.method in ("fitnet", "attention", "fsp")


def build_loss(
    configs: list[MethodConfig],
    teacher: nn.Module | None,
    student: nn.Module,
    input_shape: tuple[int, int, int],
    teacher_exposes_modules: bool = True,
) -> WeightedLoss:
    """Loss modules for this teacher and student (adapters sized to their feature maps)."""
    terms: list[tuple[float, Loss]] = []
    for config in configs:
        if config.uses_features and (teacher is None or not teacher_exposes_modules):
            raise ValueError(f"{config.method} {FEATURES_NEED_MODULES}")
        terms.append((config.weight, _build_term(config, teacher, student, input_shape)))
    return WeightedLoss(terms)


def _layer_pairs(config: MethodConfig, teacher: nn.Module, student: nn.Module, input_shape: tuple[int, int, int]) -> list[tuple[str, str]]:
    if config.layers:
        for t, s in config.layers:
            features.module_by_path(teacher, t)
            features.module_by_path(student, s)
        return list(config.layers)
    return [(t[0], s[0]) for t, s in features.pair_stages(teacher, student, input_shape)]


def _build_term(config: MethodConfig, teacher: nn.Module | None, student: nn.Module, input_shape: tuple[int, int, int]) -> Loss:
    p = config.params
    if config.method == "kd":
        return KnowledgeDistillation(p.get("temperature", 4.0), p.get("alpha", 0.9))
    if config.method == "cross_entropy":
        return CrossEntropy()
    if config.method == "self_distill":
        return SelfDistillation(features.embedding(student), p.get("kl_weight", 1.0), p.get("mmd_weight", 1.0))
    assert teacher is not None
    pairs = _layer_pairs(config, teacher, student, input_shape)
    if config.method == "fitnet":
        # The guided layer sits in the middle of the student, as in the paper.
        hint, guided = pairs[len(pairs) // 2] if not config.layers else pairs[0]
        t_shape = features.output_shape(teacher, hint, input_shape)
        s_shape = features.output_shape(student, guided, input_shape)
        if t_shape[1:] != s_shape[1:]:
            raise ValueError(f"fitnet hint {hint} {t_shape} and guided {guided} {s_shape} differ in spatial size")
        return FitNet(hint, guided, features.adapter(s_shape, t_shape[0]), int(p.get("hint_epochs", 2)))
    if config.method == "attention":
        return AttentionTransfer(pairs, p.get("beta", 1000.0))
    if config.method == "fsp":
        adapters = {}
        for t, s in pairs:
            t_channels = features.output_shape(teacher, t, input_shape)[0]
            s_shape = features.output_shape(student, s, input_shape)
            if s_shape[0] != t_channels:
                adapters[s] = features.adapter(s_shape, t_channels)
        return FlowOfSolutionProcedure(pairs, adapters, int(p.get("flow_epochs", 2)))
    raise ValueError(f"unknown method {config.method!r}; known: {', '.join(METHOD_NAMES.values())}")
