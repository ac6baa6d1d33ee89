"""FSP: the student's flow between consecutive stages matches the teacher's (Yim et al. 2017)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from distill import features
from distill.losses import FeatureLoss, Loss, MethodConfig, Pairing, Param, Step, register


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
    matrix entries, averaged over the batch). Stage two is the task (pair with
    ``cross_entropy`` or ``kd``). When channel counts differ, 1x1 adapters
    lift the student's maps to the teacher's widths.
    """

    name = "fsp"
    summary = "Yim et al. 2017: stage one matches the flow (FSP matrices) between stages; pair with `kd` or `cross_entropy`"
    params = {"flow_epochs": Param(2, 1, 1000)}
    layer_pairs = (2, math.inf)  # a flow runs between two layers

    def __init__(self, pairs: list[tuple[str, str]], adapters: dict[str, nn.Module], flow_epochs: int = 2) -> None:
        super().__init__()
        if len(pairs) < 2:
            raise ValueError("fsp needs at least two layer pairs (one flow between them)")
        self.pairs = pairs
        self.adapters = nn.ModuleDict({k.replace(".", "__"): m for k, m in adapters.items()})
        self.pretrain_epochs = flow_epochs

    @classmethod
    def from_pairs(cls, config: MethodConfig, pairs: Pairing) -> Loss:
        adapters = {}
        for t, s in pairs.layers:
            t_channels, s_shape = pairs.teacher_shape(t)[0], pairs.student_shape(s)
            if s_shape[0] != t_channels:
                adapters[s] = features.adapter(s_shape, t_channels)
        return cls(pairs.layers, adapters, int(config.param("flow_epochs")))

    def extra_repr(self) -> str:
        return f"pairs={self.pairs}, flow_epochs={self.pretrain_epochs}"

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
