"""KTSVD: each layer's leading singular vectors, related across layers by an RBF kernel (Lee et al. 2018)."""

from __future__ import annotations

import math

import torch
from torch import nn

from distill import features
from distill.losses import FeatureLoss, Loss, MethodConfig, Pairing, Param, Step, register


def leading_singular_vectors(x: torch.Tensor, k: int, iterations: int = 6) -> torch.Tensor:
    """The ``k`` leading right singular vectors of each sample's (height*width x channels) map: (batch, channels, k).

    Subspace iteration on the channels x channels Gram matrix, from a fixed
    start: differentiable, and stable where an SVD's gradient is not (it
    divides by the gaps between singular values, zero for a dead layer). The
    Gram matrix is scaled to unit trace plus a small ridge, which leaves its
    eigenvectors as they are and keeps a dead (all-zero) layer's finite.
    """
    f = x.float().flatten(2)  # batch, channels, positions
    gram = f @ f.transpose(1, 2)
    trace = gram.diagonal(dim1=1, dim2=2).sum(-1)[:, None, None]
    gram = gram / (trace + 1e-6) + 1e-4 * torch.eye(f.shape[1], device=f.device)
    start = torch.randn(f.shape[1], k, generator=torch.Generator().manual_seed(0)).to(gram)
    v = start.expand(f.shape[0], -1, -1)
    for _ in range(iterations):
        v, _ = torch.linalg.qr(gram @ v)
    return v


def _signed(v: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
    """``v`` with each vector's sign (arbitrary in an SVD) fixed: to agree with ``reference``, or without one to make
    its largest entry positive."""
    if reference is None:
        sign = torch.sign(v.gather(1, v.abs().argmax(1, keepdim=True)))
    else:
        sign = torch.sign((v * reference).sum(1, keepdim=True))
    return v * torch.where(sign == 0, torch.ones_like(sign), sign)


def rbf_relation(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Lee et al.'s relation between two layers: exp(-(a_i - b_j)^2 / 8) over every pair of their singular vectors'
    entries, batch x (c1*k) x (c2*k); layers of any spatial size relate (the positions are gone)."""
    a, b = first.flatten(1), second.flatten(1)
    return torch.exp(-(a[:, :, None] - b[:, None, :]).pow(2) / 8)


@register
class SingularVectorTransfer(FeatureLoss):
    """Lee, Kim, Song (ECCV 2018), "Self-supervised knowledge distillation using singular value decomposition" (KD-SVD).

    Each paired layer's map is reduced to its ``singular_vectors`` leading
    right singular vectors (the student's lifted to the teacher's channels by
    a 1x1 adapter, signs aligned to the teacher's), and consecutive layers are
    related through a Gaussian (RBF) kernel over their vectors' entries.
    Stage one makes the student's relations match the teacher's (squared
    error, summed over entries, averaged over the batch and the relations);
    stage two is the task (pair with ``kd`` or ``cross_entropy``). Positions
    are summed out, so layers of different spatial sizes pair.
    """

    name = "ktsvd"
    summary = ("Lee et al. 2018 (KD-SVD): stage one matches RBF relations between consecutive layers' leading "
               "singular vectors (any spatial sizes); pair with `kd` or `cross_entropy`")
    params = {"flow_epochs": Param(2, 1, 1000), "singular_vectors": Param(1, 1, 8)}
    layer_pairs = (2, math.inf)

    def __init__(self, pairs: list[tuple[str, str]], adapters: dict[str, nn.Module], flow_epochs: int = 2,
                 singular_vectors: int = 1) -> None:
        super().__init__()
        if len(pairs) < 2:
            raise ValueError("ktsvd needs at least two layer pairs (one relation between them)")
        self.pairs = pairs
        self.adapters = nn.ModuleDict({k.replace(".", "__"): m for k, m in adapters.items()})
        self.pretrain_epochs = flow_epochs
        self.singular_vectors = singular_vectors

    @classmethod
    def from_pairs(cls, config: MethodConfig, pairs: Pairing) -> Loss:
        adapters = {}
        for t, s in pairs.layers:
            t_shape, s_shape = pairs.teacher_shape(t), pairs.student_shape(s)
            if len(t_shape) != 3 or len(s_shape) != 3:
                raise ValueError(f"ktsvd needs feature maps; {t} or {s} is not one")
            if s_shape[0] != t_shape[0]:
                adapters[s] = features.adapter(s_shape, t_shape[0])
            if min(t_shape[0], t_shape[1] * t_shape[2]) < config.param("singular_vectors"):
                raise ValueError(f"ktsvd: {t} has fewer than {config.param('singular_vectors'):g} singular vectors")
        return cls(pairs.layers, adapters, int(config.param("flow_epochs")), int(config.param("singular_vectors")))

    def extra_repr(self) -> str:
        return f"pairs={self.pairs}, flow_epochs={self.pretrain_epochs}, singular_vectors={self.singular_vectors}"

    def _vectors(self, step: Step) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        teacher, student = [], []
        for t, s in self.pairs:
            v_t = _signed(leading_singular_vectors(step.teacher_features[t], self.singular_vectors).detach())
            x = step.student_features[s]
            key = s.replace(".", "__")
            x = self.adapters[key](x) if key in self.adapters else x
            teacher.append(v_t)
            student.append(_signed(leading_singular_vectors(x, self.singular_vectors), v_t))
        return teacher, student

    def pretrain_loss(self, step: Step) -> torch.Tensor:
        teacher, student = self._vectors(step)
        total = step.student_logits.new_zeros((), dtype=torch.float32)
        for i in range(len(self.pairs) - 1):
            k_t, k_s = rbf_relation(teacher[i], teacher[i + 1]), rbf_relation(student[i], student[i + 1])
            total = total + (k_t - k_s).pow(2).flatten(1).sum(1).mean()
        return total / (len(self.pairs) - 1)

    def forward(self, step: Step) -> torch.Tensor:
        return step.student_logits.new_zeros((), dtype=torch.float32)
