"""FitNets: a hint layer of the teacher guides a middle layer of the student (Romero et al. 2015)."""

from __future__ import annotations

import torch
from torch import nn

from distill import features
from distill.losses import FeatureLoss, Loss, MethodConfig, Pairing, Param, Step, register


@register
class FitNet(FeatureLoss):
    """Romero et al. (2015), "FitNets: Hints for Thin Deep Nets".

    Stage one trains the student up to its guided layer, through a learned
    regressor, to reproduce the teacher's hint layer:
    ``1/2 * ||hint - regressor(guided)||^2`` per sample, averaged over the
    batch. Stage two is the task (pair it with ``kd``); this term adds
    nothing there.
    """

    name = "fitnet"
    summary = "Romero et al. 2015: stage one regresses a middle student layer onto a teacher hint layer; pair with `kd`"
    params = {"hint_epochs": Param(2, 1, 1000)}
    layer_pairs = (1, 1)  # the proto's `hint`

    def __init__(self, hint: str, guided: str, regressor: nn.Module, hint_epochs: int = 2) -> None:
        super().__init__()
        self.hint, self.guided, self.regressor = hint, guided, regressor
        self.pretrain_epochs = hint_epochs

    @classmethod
    def from_pairs(cls, config: MethodConfig, pairs: Pairing) -> Loss:
        # The guided layer sits in the middle of the student, as in the paper.
        hint, guided = pairs.layers[len(pairs.layers) // 2] if not config.layers else pairs.layers[0]
        t_shape, s_shape = pairs.teacher_shape(hint), pairs.student_shape(guided)
        if t_shape[1:] != s_shape[1:]:
            raise ValueError(f"fitnet hint {hint} {t_shape} and guided {guided} {s_shape} differ in spatial size")
        return cls(hint, guided, features.adapter(s_shape, t_shape[0]), int(config.param("hint_epochs")))

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
