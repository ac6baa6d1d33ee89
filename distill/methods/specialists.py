"""Specialist networks (Hinton, Vinyals & Dean 2015, section 5): a generalist student, plus specialists on the
classes the teacher confuses, combined at inference.

1. Subsets: k-means (scikit-learn) on the columns of the covariance of the
   teacher's soft targets (at the method's temperature) over the training
   images, normalised to a correlation: classes the teacher predicts
   together fall in one cluster. A one-class cluster gets no
   specialist (the generalist already says whether an image is that class).
2. The generalist is the student, distilled with KD (this method's T and
   alpha, beside any other loss terms of the job).
3. Each specialist starts as a copy of the trained generalist and learns on
   its subset's images plus as many of the others (the paper's half and
   half) to match the teacher's distribution over its classes and a dustbin
   (all other classes, their probabilities summed). It keeps the full head:
   its dustbin logit is the logsumexp of the other classes' logits, so the
   copy starts exactly as the generalist's view of the subset. It learns
   from soft targets only: the teacher's p(y|x) does not change when images
   are oversampled, so the dustbin needs no prior correction (the paper's
   correction is for hard targets).
4. ``SpecialistEnsemble`` is the shipped student: one module, one ONNX graph.
   The generalist's top classes pick the specialists whose subsets hold one;
   the output is the distribution q that minimises the paper's
   KL(p_generalist || q) + sum over those specialists of KL(p_m || q_m),
   where q_m is q with the classes outside m's subset summed into its
   dustbin. The paper minimises it by gradient descent on q's logits; here
   a fixed number of EM steps (multiplicative updates that stay on the
   simplex and need no step size) minimise the same objective. Its logits
   are log q.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from distill.data import Normalization, Split
from distill.loop import CheckpointFn, Progress, ProgressFn, StopFn
from distill.losses import Loss, Param, Step, WeightedLoss, register
from distill.methods.kd import KnowledgeDistillation
from distill.streaming import WebDatasetShards

if TYPE_CHECKING:
    from distill.trainer import TrainConfig  # the trainer imports the method registry, this module included

# The teacher's soft-target covariance is estimated on at most this many training images (a seeded sample).
COVARIANCE_SAMPLES = 20_000
# EM steps of the combination, unrolled in the graph. Each is a few element-wise ops on batch x specialists x
# classes; tests/test_losses.py checks that this many reach the objective's minimum.
COMBINE_STEPS = 30
# The floor of q before its log: logits stay finite (and equal in every runtime) for classes q rules out.
_FLOOR = 1e-12


@register
class SpecialistNetworks(KnowledgeDistillation):
    """The generalist's loss is KD's; the specialists and their combination are trained by ``train``."""

    name = "specialists"
    summary = ("Hinton et al. 2015: KD generalist + specialists on class subsets (k-means on the teacher's "
               "soft-target covariance), each with a dustbin, combined by minimising their KL; one ONNX graph")
    needs_labels = True  # a subset's images are found by their labels
    params = {
        **KnowledgeDistillation.params,
        "specialists": Param(3, 2, 64),  # k-means clusters; one-class clusters get no specialist
        "specialist_epochs": Param(5, 1, 1000),  # per specialist, over its subset and as many other images
        "top_classes": Param(2, 1, 20),  # the generalist's top classes that call in a specialist
    }

    def __init__(self, temperature: float = 4.0, alpha: float = 0.9, specialists: float = 3,
                 specialist_epochs: float = 5, top_classes: float = 2) -> None:
        super().__init__(temperature, alpha)
        self.check(specialists=specialists, specialist_epochs=specialist_epochs, top_classes=top_classes)
        self.clusters, self.specialist_epochs, self.top_classes = int(specialists), int(specialist_epochs), int(top_classes)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, specialists={self.clusters}, specialist_epochs={self.specialist_epochs}, "
                f"top_classes={self.top_classes}")


class SpecialistLoss(Loss):
    """One specialist's loss: T^2 KL between the teacher's and its distribution over its classes and the dustbin."""

    name = "specialist"
    summary = "one specialist's soft-target loss (trained by the specialists method)"

    def __init__(self, subset: list[int], num_classes: int, temperature: float) -> None:
        super().__init__()
        self.register_buffer("members", _members([subset], num_classes))
        self.register_buffer("columns", torch.tensor([*subset, num_classes]))  # its classes, then the dustbin
        self.temperature = temperature

    def extra_repr(self) -> str:
        return f"classes={self.columns[:-1].tolist()}, T={self.temperature:g}"

    def forward(self, step: Step) -> torch.Tensor:
        assert step.teacher_logits is not None
        t = self.temperature
        student, teacher = (_subset_and_dustbin(logits.float()[:, None] / t, self.members)[:, 0, self.columns]
                            for logits in (step.student_logits, step.teacher_logits))
        return F.kl_div(student, teacher, reduction="batchmean", log_target=True) * (t * t)


def _members(subsets: list[list[int]], num_classes: int) -> torch.Tensor:
    """specialists x classes: 1 where the class is in the specialist's subset."""
    members = torch.zeros(len(subsets), num_classes)
    for row, subset in enumerate(subsets):
        members[row, subset] = 1.0
    return members


def _subset_and_dustbin(logits: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
    """Per specialist, log-probabilities over the classes (-inf outside its subset) and, last, its dustbin.

    ``logits``: batch x specialists x classes; ``members``: specialists x classes. Returns batch x specialists x
    (classes + 1); the dustbin's logit is the logsumexp of the other classes' logits.
    """
    inside = members.bool()
    own = logits.masked_fill(~inside, -math.inf)
    dustbin = logits.masked_fill(inside, -math.inf).logsumexp(2, keepdim=True)
    return torch.cat([own, dustbin], 2).log_softmax(2)


class SpecialistEnsemble(nn.Module):
    """The generalist and its specialists as one classifier: logits are log q (see the module's notes)."""

    def __init__(self, generalist: nn.Module, specialists: list[nn.Module], subsets: list[list[int]],
                 num_classes: int, top_classes: int) -> None:
        super().__init__()
        if not subsets or len(subsets) != len(specialists):
            raise ValueError("an ensemble needs one subset per specialist, and at least one")
        self.generalist, self.specialists = generalist, nn.ModuleList(specialists)
        self.subsets, self.top_classes = [list(s) for s in subsets], min(top_classes, num_classes)
        self.register_buffer("members", _members(self.subsets, num_classes))

    @classmethod
    def around(cls, generalist: nn.Module, subsets: list[list[int]], num_classes: int, top_classes: int) -> SpecialistEnsemble:
        """An ensemble whose specialists start as copies of ``generalist`` (training, or a retry loading weights)."""
        return cls(generalist, [copy.deepcopy(generalist) for _ in subsets], subsets, num_classes, top_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        general = self.generalist(x).float().softmax(1)  # batch x classes
        logits = torch.stack([specialist(x) for specialist in self.specialists], 1).float()
        probs = _subset_and_dustbin(logits, self.members).exp()
        return combine(general, probs[..., :-1], probs[..., -1], self.members, self.top_classes).clamp_min(_FLOOR).log()


def combine(general: torch.Tensor, own: torch.Tensor, dustbin: torch.Tensor, members: torch.Tensor,
            top_classes: int, steps: int = COMBINE_STEPS) -> torch.Tensor:
    """q minimising KL(general || q) + sum over the called specialists of KL(p_m || q_m), by EM.

    ``general``: batch x classes; ``own``: batch x specialists x classes, each specialist's probabilities of its
    classes (0 outside them); ``dustbin``: batch x specialists. A specialist is called when one of the
    generalist's ``top_classes`` is in its subset. Each EM step averages the generalist's distribution with
    the called specialists' proposals: a specialist keeps its own classes' probabilities and spreads its
    dustbin over the other classes as q does.
    """
    top = general.topk(top_classes, 1).indices  # batch x top
    called = members.t()[top].amax(1)  # batch x specialists: 1 when a top class is in the subset
    outside = 1 - members
    voters = 1 + called.sum(1, keepdim=True)
    q = general
    for _ in range(steps):
        rest = (q[:, None, :] * outside).sum(2).clamp_min(_FLOOR)  # q's mass outside each subset
        proposal = own + outside * q[:, None, :] * (dustbin / rest)[..., None]
        q = (general + (called[..., None] * proposal).sum(1)) / voters
    return q


@dataclass(frozen=True)
class Specialist:
    classes: tuple[int, ...]
    train_samples: int  # the subset's images and as many others


def find_subsets(soft_targets: torch.Tensor, clusters: int, seed: int) -> list[list[int]]:
    """Clusters of the classes by the columns of the soft targets' covariance; those of two classes or more.

    The covariance is normalised by the classes' deviations (a correlation): raw columns cluster by how sure the
    teacher is of a class, not by which classes it predicts together (on the CIFAR-10 bench's teacher, raw
    covariance put 8 of the 10 classes in one cluster; correlation at T 4 splits vehicles from animals).
    """
    from sklearn.cluster import KMeans  # imported when used: it takes a second to import

    num_classes = soft_targets.shape[1]
    correlation = np.nan_to_num(np.corrcoef(soft_targets.double().numpy(), rowvar=False))  # 0 for a constant class
    np.fill_diagonal(correlation, 1.0)
    labels = KMeans(n_clusters=min(clusters, num_classes), n_init=10, random_state=seed).fit_predict(correlation)
    subsets = [sorted(np.flatnonzero(labels == c).tolist()) for c in range(labels.max() + 1)]
    subsets = [s for s in subsets if 2 <= len(s) < num_classes]
    if not subsets:
        raise ValueError(
            f"k-means found no group of confusable classes among the teacher's {num_classes} in {clusters} clusters "
            "(every cluster is one class, or all of them); ask for more specialists (or fewer, for larger groups)"
        )
    return sorted(subsets)


def enriched_rows(labels: torch.Tensor, subset: list[int], seed: int) -> torch.Tensor:
    """The subset's samples and as many others (all of them if there are fewer), seeded, in a shuffled order."""
    inside = torch.isin(labels, torch.tensor(subset))
    mine, others = inside.nonzero().flatten(), (~inside).nonzero().flatten()
    generator = torch.Generator().manual_seed(seed)
    others = others[torch.randperm(len(others), generator=generator)[: len(mine)]]
    rows = torch.cat([mine, others])
    return rows[torch.randperm(len(rows), generator=generator)]


@dataclass
class Trained:
    """What ``train`` hands back: the ensemble, the specialists' subsets, and the runs' totals."""

    ensemble: SpecialistEnsemble
    specialists: list[Specialist]
    steps: int
    final_loss: float
    wall_seconds: float
    samples_seen: int  # over all runs (a resumed job counts those before its checkpoint in the run it resumed)


def train(
    method: SpecialistNetworks,
    student: nn.Module,
    teacher: Callable[[torch.Tensor], torch.Tensor],
    loss: WeightedLoss,
    train_split: Split,
    normalization: Normalization,
    config: TrainConfig,
    on_progress: ProgressFn | None,
    on_checkpoint: CheckpointFn | None,
    resume_from: dict[str, Any] | None,
    stop_requested: StopFn | None,
) -> Trained:
    """Train the generalist (``student``, in place, on ``loss``), then each specialist; return the ensemble.

    Every run is ``trainer.distil``'s, so checkpoints, stops and augmentation work as for any job. A
    checkpoint carries the finished networks, and which run it is in: a resumed job skips what is done.
    Progress counts the steps of all runs together.
    """
    from distill import trainer  # the trainer imports the method registry; this module is part of it

    if isinstance(train_split, WebDatasetShards):
        raise ValueError("specialists read a subset's images by label: not from WebDataset shards (use an image folder)")
    device = config.device
    sample = train_split.select(torch.randperm(len(train_split), generator=torch.Generator().manual_seed(config.seed))
                                [:COVARIANCE_SAMPLES])
    soft_targets = (trainer.predict_logits(teacher, sample, normalization, device) / method.temperature).softmax(1)
    subsets = find_subsets(soft_targets, method.clusters, config.seed)
    num_classes = soft_targets.shape[1]
    rows = [enriched_rows(train_split.labels, subset, config.seed + 1 + m) for m, subset in enumerate(subsets)]
    runs = [(config, train_split), *((replace(config, epochs=method.specialist_epochs, seed=config.seed + 1 + m),
                                      train_split.select(r)) for m, r in enumerate(rows))]
    lengths = [math.ceil(len(split) / c.batch_size) * (c.epochs + (loss.pretrain_epochs if i == 0 else 0))
               for i, (c, split) in enumerate(runs)]
    total = sum(lengths)

    saved = resume_from or {}
    first = int(saved.get("specialist", -1)) + 1  # the run the checkpoint is in: 0 the generalist, m + 1 specialist m
    done = saved.get("specialists_done", [])
    seconds = list(saved.get("run_seconds", []))
    if first > 0:
        student.load_state_dict(saved["generalist"])
    ensemble = SpecialistEnsemble.around(student, subsets, num_classes, method.top_classes)
    for specialist, state in zip(ensemble.specialists, done):
        specialist.load_state_dict(state)

    results = []
    for run in range(first, len(runs)):
        run_config, split = runs[run]
        offset = sum(lengths[:run])

        def progress(p: Progress, offset: int = offset, run: int = run) -> None:
            if on_progress is not None:
                on_progress(replace(p, step=offset + p.step, total_steps=total, epoch_end=p.epoch_end and run == 0,
                                    message=p.message or (f"specialist {run} of {len(subsets)}" if run else "")))

        def checkpoint(state: dict[str, Any], run: int = run) -> None:
            if on_checkpoint is not None:
                on_checkpoint({**state, **({} if run == 0 else {
                    "specialist": run - 1, "generalist": student.state_dict(),
                    "specialists_done": [s.state_dict() for s in ensemble.specialists[: run - 1]],
                    "run_seconds": seconds})})

        if run == 0:
            model, run_loss = student, loss
        else:
            model = ensemble.specialists[run - 1]  # a copy of the trained generalist, or a checkpoint's
            run_loss = WeightedLoss([(1.0, SpecialistLoss(subsets[run - 1], num_classes, method.temperature))])
        result = trainer.distil(model, teacher, run_loss, split, normalization, run_config, progress, checkpoint,
                                saved if run == first and saved else None, stop_requested)
        seconds.append(result.wall_seconds)
        results.append(result)
        if run == 0:  # the specialists start from the generalist as trained
            for specialist in ensemble.specialists:
                specialist.load_state_dict(student.state_dict())
    ensemble.eval()
    return Trained(
        ensemble,
        [Specialist(tuple(s), len(r)) for s, r in zip(subsets, rows)],
        steps=total,
        final_loss=results[-1].final_loss if results else math.nan,
        wall_seconds=sum(seconds),
        samples_seen=sum(r.samples_seen for r in results),
    )
