"""Dense flow: flow matrices between every pair of the chosen layers, transferred in sequence (Bae et al. 2020)."""

from __future__ import annotations

import math

from distill.losses import register
from distill.methods.fsp import FlowOfSolutionProcedure


@register
class DenseFlow(FlowOfSolutionProcedure):
    """Bae, Yeo, Kim (IEEE TIP 2020), "Densely distilled flow-based knowledge transfer in teacher-student framework".

    FSP matches the flow between consecutive stages only; dense flow matches
    the FSP (Gram) matrix between every pair of the chosen layers (i < j), so
    the flows overlap. Stage one transfers them in sequence: the flows that
    end at the k-th layer join after (k - 1) / (n - 1) of it, early layers
    first, until all are matched. Everything else is FSP's: the squared
    error per flow, the optional adversarial loss, adapters, stage two.
    """

    name = "dense_flow"
    summary = ("Bae et al. 2020: stage one matches the flow between every pair of layers, not only consecutive "
               "ones, early flows first; optionally adversarial (Yeo & Bae 2019); pair with `kd` or `cross_entropy`")

    @staticmethod
    def flows_between(layers: int) -> list[tuple[int, int]]:
        return [(i, j) for j in range(1, layers) for i in range(j)]  # ordered by the layer they end at

    def active_flows(self, stage_progress: float) -> list[tuple[int, int]]:
        last = 1 + min(len(self.pairs) - 2, math.floor(stage_progress * (len(self.pairs) - 1)))
        return [(i, j) for i, j in self.flows if j <= last]
