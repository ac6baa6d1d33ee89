"""FSP: the student's flow between consecutive stages matches the teacher's (Yim et al. 2017)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from distill import features
from distill.losses import FeatureLoss, Loss, MethodConfig, Pairing, Param, Step, register


class _ReverseGradient(torch.autograd.Function):
    """Identity forward; the gradient's sign flipped backward."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        return x.view_as(x)

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        return -grad


class FlowDiscriminators(nn.Module):
    """Adversarial flow transfer (Yeo & Bae, Electronics Letters 2019): per flow, an MLP that tells the teacher's
    flow matrices (real) from the student's (fake).

    Its loss is the discriminator's binary cross-entropy. The student's
    matrices reach it through a gradient reversal, so the training step's one
    backward pass trains the discriminators to tell the two apart and the
    student to fool them, with the optimiser that trains the student.
    """

    def __init__(self, sizes: list[int], hidden: int = 128) -> None:
        super().__init__()
        self.nets = nn.ModuleList(
            nn.Sequential(nn.Linear(size, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1)) for size in sizes
        )

    def forward(self, flow: int, teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
        net = self.nets[flow]
        real = net(teacher.detach().flatten(1))
        fake = net(_ReverseGradient.apply(student.flatten(1)))
        return (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))


def fsp_matrix(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Yim et al.: G = F1^T F2 / (h * w), batch x c1 x c2. The larger map is pooled to the smaller's size."""
    first, second = first.float(), second.float()
    if first.shape[2:] != second.shape[2:]:
        size = min(first.shape[2:], second.shape[2:], key=lambda s: s[0] * s[1])
        first, second = F.adaptive_avg_pool2d(first, size), F.adaptive_avg_pool2d(second, size)
    h, w = first.shape[2:]
    return torch.bmm(first.flatten(2), second.flatten(2).transpose(1, 2)) / (h * w)


@register
class FlowOfSolutionProcedure(FeatureLoss):
    """Yim et al. (CVPR 2017), "A Gift from Knowledge Distillation" (FSP).

    Stage one makes the student's FSP matrices between consecutive stages
    match the teacher's: ``mean over pairs of ||G_t - G_s||^2`` (summed over
    matrix entries, averaged over the batch). ``adversarial_weight`` adds
    adversarial flow transfer (``FlowDiscriminators``) beside it
    (``euclidean_weight`` 0: instead of it). Stage two is the task (pair with
    ``cross_entropy`` or ``kd``). When channel counts differ, 1x1 adapters
    lift the student's maps to the teacher's widths.
    """

    name = "fsp"
    summary = ("Yim et al. 2017: stage one matches the flow (FSP matrices) between stages; optionally adversarial "
               "(Yeo & Bae 2019); pair with `kd` or `cross_entropy`")
    params = {"flow_epochs": Param(2, 1, 1000), "euclidean_weight": Param(1, 0, 1), "adversarial_weight": Param(0, 0, 100)}
    layer_pairs = (2, math.inf)  # a flow runs between two layers

    def __init__(self, pairs: list[tuple[str, str]], adapters: dict[str, nn.Module], flow_epochs: int = 2,
                 channels: list[int] | None = None, euclidean_weight: float = 1.0, adversarial_weight: float = 0.0) -> None:
        super().__init__()
        if len(pairs) < 2:
            raise ValueError(f"{self.name} needs at least two layer pairs (one flow between them)")
        if not euclidean_weight and not adversarial_weight:
            raise ValueError(f"{self.name} needs a Euclidean or an adversarial weight")
        self.pairs = pairs
        self.adapters = nn.ModuleDict({k.replace(".", "__"): m for k, m in adapters.items()})
        self.pretrain_epochs = flow_epochs
        self.flows = self.flows_between(len(pairs))
        self.euclidean_weight, self.adversarial_weight = euclidean_weight, adversarial_weight
        self.discriminators = None
        if adversarial_weight:
            assert channels is not None, "the adversarial loss sizes its discriminators by the teacher's channels"
            self.discriminators = FlowDiscriminators([channels[i] * channels[j] for i, j in self.flows])

    @staticmethod
    def flows_between(layers: int) -> list[tuple[int, int]]:
        """The (first layer, second layer) index pairs whose flow is matched: consecutive ones."""
        return [(i, i + 1) for i in range(layers - 1)]

    @classmethod
    def from_pairs(cls, config: MethodConfig, pairs: Pairing) -> Loss:
        adapters, channels = {}, []
        for t, s in pairs.layers:
            t_channels, s_shape = pairs.teacher_shape(t)[0], pairs.student_shape(s)
            channels.append(t_channels)
            if s_shape[0] != t_channels:
                adapters[s] = features.adapter(s_shape, t_channels)
        return cls(pairs.layers, adapters, int(config.param("flow_epochs")), channels,
                   config.param("euclidean_weight"), config.param("adversarial_weight"))

    def extra_repr(self) -> str:
        adversarial = f", euclidean_weight={self.euclidean_weight:g}, adversarial_weight={self.adversarial_weight:g}"
        return f"pairs={self.pairs}, flow_epochs={self.pretrain_epochs}" + (adversarial if self.adversarial_weight else "")

    def _student_map(self, step: Step, layer: str) -> torch.Tensor:
        x = step.student_features[layer]
        key = layer.replace(".", "__")
        return self.adapters[key](x) if key in self.adapters else x

    def active_flows(self, stage_progress: float) -> list[tuple[int, int]]:
        """The flows stage one matches at this point of it (``stage_progress``, 0..1): all of them."""
        return self.flows

    def pretrain_loss(self, step: Step) -> torch.Tensor:
        total = step.student_logits.new_zeros((), dtype=torch.float32)
        active = self.active_flows(step.stage_progress)
        for i, j in active:
            (t1, s1), (t2, s2) = self.pairs[i], self.pairs[j]
            g_t = fsp_matrix(step.teacher_features[t1], step.teacher_features[t2])
            g_s = fsp_matrix(self._student_map(step, s1), self._student_map(step, s2))
            if self.euclidean_weight:
                total = total + self.euclidean_weight * (g_t - g_s).pow(2).flatten(1).sum(1).mean()
            if self.discriminators is not None:
                total = total + self.adversarial_weight * self.discriminators(self.flows.index((i, j)), g_t, g_s)
        return total / len(active)

    def forward(self, step: Step) -> torch.Tensor:
        return step.student_logits.new_zeros((), dtype=torch.float32)
