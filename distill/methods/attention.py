"""Attention transfer: the student's spatial attention maps match the teacher's (Zagoruyko & Komodakis 2017)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from distill.losses import FeatureLoss, Loss, MethodConfig, Pairing, Param, Step, register


def attention_map(x: torch.Tensor) -> torch.Tensor:
    """Zagoruyko & Komodakis: the mean over channels of squared activations, flattened and L2-normalised."""
    return F.normalize(x.float().pow(2).mean(1).flatten(1), dim=1)


@register
class AttentionTransfer(FeatureLoss):
    """Zagoruyko & Komodakis (2017), "Paying More Attention to Attention", p = 2.

    ``beta / 2 * sum over pairs of mean((Q_s - Q_t)^2)`` with Q the normalised
    attention maps; the mean runs over batch and positions, as in the
    authors' code, for which beta = 1000 is calibrated. Pair with ``kd`` or
    ``cross_entropy`` for the task.
    """

    name = "attention"
    summary = "Zagoruyko & Komodakis 2017: match normalised spatial attention maps; pair with `kd` or `cross_entropy`"
    params = {"beta": Param(1000.0, 1e-6, 1e6)}
    layer_pairs = (1, math.inf)

    def __init__(self, pairs: list[tuple[str, str]], beta: float = 1000.0) -> None:
        super().__init__()
        if not pairs:
            raise ValueError("attention needs at least one layer pair")
        self.pairs, self.beta = pairs, beta

    @classmethod
    def from_pairs(cls, config: MethodConfig, pairs: Pairing) -> Loss:
        return cls(pairs.layers, config.param("beta"))

    def extra_repr(self) -> str:
        return f"pairs={self.pairs}, beta={self.beta:g}"

    def forward(self, step: Step) -> torch.Tensor:
        total = step.student_logits.new_zeros((), dtype=torch.float32)
        for t, s in self.pairs:
            a_s, a_t = attention_map(step.student_features[s]), attention_map(step.teacher_features[t])
            total = total + (a_s - a_t).pow(2).mean()
        return self.beta / 2 * total
