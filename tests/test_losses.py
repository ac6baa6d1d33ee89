"""Each loss is what its paper defines, checked against numbers computed by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from distill import losses
from distill import methods
from distill.losses import Step


def _softmax(values: list[float], t: float = 1.0) -> list[float]:
    exps = [math.exp(v / t) for v in values]
    return [e / sum(exps) for e in exps]


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * (math.log(a) - math.log(b)) for a, b in zip(p, q))


def test_kd_matches_hinton_formula_by_hand() -> None:
    student, teacher, label, t, alpha = [1.0, 2.0, 0.5], [3.0, 0.0, -1.0], 0, 4.0, 0.7
    kl = _kl(_softmax(teacher, t), _softmax(student, t))
    ce = -math.log(_softmax(student)[label])
    expected = alpha * t * t * kl + (1 - alpha) * ce
    step = Step(torch.tensor([student]), torch.tensor([label]), teacher_logits=torch.tensor([teacher]))
    assert methods.KnowledgeDistillation(t, alpha)(step).item() == pytest.approx(expected, rel=1e-5)


def test_dkd_matches_its_two_terms_by_hand() -> None:
    """Zhao et al.: CE + T^2 (alpha * KL of the target/rest split + beta * KL over the other classes)."""
    student, teacher, label, t, alpha, beta = [1.0, 2.0, 0.5], [3.0, 0.0, -1.0], 0, 2.0, 0.5, 6.0
    p_s, p_t = _softmax(student, t), _softmax(teacher, t)
    tckd = _kl([p_t[0], 1 - p_t[0]], [p_s[0], 1 - p_s[0]])
    nckd = _kl(_softmax(teacher[1:], t), _softmax(student[1:], t))
    expected = -math.log(_softmax(student)[label]) + t * t * (alpha * tckd + beta * nckd)
    step = Step(torch.tensor([student]), torch.tensor([label]), teacher_logits=torch.tensor([teacher]))
    assert methods.DecoupledKnowledgeDistillation(alpha, beta, t)(step).item() == pytest.approx(expected, rel=1e-5)
    # The paper's identity: KD's KL is TCKD + (1 - teacher's p_target) * NCKD.
    assert _kl(p_t, p_s) == pytest.approx(tckd + (1 - p_t[0]) * nckd, rel=1e-9)
    # Large logits stay finite (the split is computed in log space).
    huge = Step(torch.tensor([[80.0, -80.0, 0.0]]), torch.tensor([0]), teacher_logits=torch.tensor([[-80.0, 80.0, 0.0]]))
    assert math.isfinite(methods.DecoupledKnowledgeDistillation()(huge).item())
    with pytest.raises(ValueError, match="needs labelled data"):
        methods.DecoupledKnowledgeDistillation()(Step(torch.tensor([student]), None, teacher_logits=torch.tensor([teacher])))
    with pytest.raises(ValueError, match=r"dkd beta must be in \[0, 100\]"):
        methods.DecoupledKnowledgeDistillation(beta=-1)


def test_every_method_is_registered_with_its_proto_message_and_the_readme_table() -> None:
    """A method is one file plus one proto message; the README's method table is the registry's."""
    from pathlib import Path

    from protos.distillery.v1 import distillery_pb2 as pb

    in_proto = {f.name: f.message_type for f in pb.LossTerm.DESCRIPTOR.oneofs_by_name["method"].fields}
    assert set(in_proto) == set(losses.REGISTRY)
    for name, cls in losses.REGISTRY.items():
        assert set(cls.params) <= set(in_proto[name].fields_by_name), name  # every parameter can be set by a spec
        for param in cls.params.values():
            assert param.low <= param.default <= param.high, name
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    readme = "\n".join(line.strip() for line in readme.splitlines())  # the table sits indented in a list
    assert losses.method_table() in readme, "README's method table is stale: paste `python -m distill.losses`"


def test_kd_without_labels_is_the_soft_term_alone() -> None:
    student, teacher, t = [0.2, -0.3], [1.5, 0.5], 2.0
    expected = t * t * _kl(_softmax(teacher, t), _softmax(student, t))
    step = Step(torch.tensor([student]), None, teacher_logits=torch.tensor([teacher]))
    assert methods.KnowledgeDistillation(t, 0.5)(step).item() == pytest.approx(expected, rel=1e-5)


def test_fitnet_hint_loss_by_hand() -> None:
    # One sample, guided map of 1 channel 1x2, regressor doubles it into 2 channels.
    regressor = nn.Conv2d(1, 2, 1, bias=False)
    with torch.no_grad():
        regressor.weight.copy_(torch.tensor([[[[2.0]]], [[[-1.0]]]]))
    guided = torch.tensor([[[[1.0, 3.0]]]])
    hint = torch.tensor([[[[1.0, 1.0]], [[0.0, -2.0]]]])
    # regressor(guided) = [[2, 6]], [[-1, -3]] -> diffs 1, 5, -1, -1 -> 1/2 * (1 + 25 + 1 + 1) = 14.
    fitnet = methods.FitNet("hint", "guided", regressor)
    step = Step(torch.zeros(1, 3), None, student_features={"guided": guided}, teacher_features={"hint": hint})
    assert fitnet.pretrain_loss(step).item() == pytest.approx(14.0)
    assert fitnet(step).item() == 0.0  # stage two belongs to the other losses


def test_attention_transfer_by_hand() -> None:
    # Student: 1 channel [[1, 0], [0, 0]] -> map (1, 0, 0, 0). Teacher: 2 channels -> mean of squares (2, 2, 0, 0)/2
    # -> normalised (1/sqrt2, 1/sqrt2, 0, 0). Mean squared difference over 4 positions, times beta / 2.
    student = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    teacher = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]], [[-1.0, 1.0], [0.0, 0.0]]]])
    r = 1 / math.sqrt(2)
    expected = 1000 / 2 * ((1 - r) ** 2 + r**2) / 4
    at = methods.AttentionTransfer([("t", "s")], beta=1000)
    step = Step(torch.zeros(1, 2), None, student_features={"s": student}, teacher_features={"t": teacher})
    assert at(step).item() == pytest.approx(expected, rel=1e-5)


def test_fsp_matrix_and_loss_by_hand() -> None:
    # F1: 1 channel over 2 positions (1, 2); F2: 2 channels (3, 0) and (1, 1).
    # G = F1 . F2^T / 2 = [[(3 + 0)/2, (1 + 2)/2]] = [[1.5, 1.5]].
    f1 = torch.tensor([[[[1.0, 2.0]]]])
    f2 = torch.tensor([[[[3.0, 0.0]], [[1.0, 1.0]]]])
    assert methods.fsp_matrix(f1, f2).tolist() == [[[1.5, 1.5]]]
    # The student's flow is zero: the loss is ||G_t||^2 = 4.5 (one flow between two layers).
    fsp = methods.FlowOfSolutionProcedure([("t1", "s1"), ("t2", "s2")], adapters={})
    step = Step(
        torch.zeros(1, 2),
        None,
        teacher_features={"t1": f1, "t2": f2},
        student_features={"s1": torch.zeros_like(f1), "s2": f2},
    )
    assert fsp.pretrain_loss(step).item() == pytest.approx(4.5)


def test_dense_flow_matches_every_pair_of_layers_early_flows_first() -> None:
    maps = [torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    names = [(f"t{i}", f"s{i}") for i in range(3)]
    dense = methods.DenseFlow(names, adapters={})
    assert dense.flows == [(0, 1), (0, 2), (1, 2)]  # FSP has (0, 1), (1, 2) only
    assert dense.active_flows(0.0) == [(0, 1)] and dense.active_flows(0.49) == [(0, 1)]
    assert dense.active_flows(0.5) == dense.active_flows(1.0) == [(0, 1), (0, 2), (1, 2)]
    # The student's maps are zero: each flow's loss is ||G_t||^2 (summed, batch mean); the loss is their mean.
    step = Step(torch.zeros(2, 2), None, teacher_features={t: m for (t, _), m in zip(names, maps)},
                student_features={s: torch.zeros_like(m) for (_, s), m in zip(names, maps)}, stage_progress=1.0)
    flows = [methods.fsp_matrix(maps[i], maps[j]).pow(2).flatten(1).sum(1).mean() for i, j in dense.flows]
    assert dense.pretrain_loss(step).item() == pytest.approx(sum(flows).item() / 3, rel=1e-5)
    step.stage_progress = 0.0
    assert dense.pretrain_loss(step).item() == pytest.approx(flows[0].item(), rel=1e-5)


def test_adversarial_flow_trains_the_discriminator_and_reverses_the_students_gradient() -> None:
    torch.manual_seed(0)
    discriminators = methods.FlowDiscriminators([6])
    g_t, g_s = torch.randn(4, 2, 3), torch.randn(4, 2, 3, requires_grad=True)
    discriminators(0, g_t, g_s).backward()
    reversed_grad = g_s.grad.clone()
    # The discriminator's own loss on the student's matrices (labelled fake), without the reversal.
    g_s.grad = None
    fake = discriminators.nets[0](g_s.flatten(1))
    nn.functional.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)).backward()
    assert torch.allclose(reversed_grad, -g_s.grad)  # the student climbs what the discriminator descends
    assert all(p.grad is not None for p in discriminators.parameters())
    with pytest.raises(ValueError, match="needs a Euclidean or an adversarial weight"):
        methods.FlowOfSolutionProcedure([("a", "b"), ("c", "d")], {}, euclidean_weight=0, adversarial_weight=0)


def test_ktsvd_vectors_relations_and_loss() -> None:
    # A map whose leading right singular vector is known: channel 0 carries 10x the energy of channel 1.
    x = torch.zeros(1, 2, 1, 4)
    x[0, 0, 0] = torch.tensor([10.0, -10.0, 10.0, -10.0])
    x[0, 1, 0] = torch.tensor([1.0, 1.0, 1.0, 1.0])
    v = methods.leading_singular_vectors(x, 1)
    assert torch.allclose(v.abs(), torch.tensor([[[1.0], [0.0]]]), atol=1e-4)
    expected = torch.linalg.svd(x.flatten(2).transpose(1, 2))[2][:, :1].transpose(1, 2)  # rows of V^T
    assert torch.allclose(v.abs(), expected.abs(), atol=1e-4)

    names = [("t0", "s0"), ("t1", "s1")]
    ktsvd = methods.SingularVectorTransfer(names, adapters={})
    maps = {"t0": torch.randn(3, 4, 8, 8), "t1": torch.randn(3, 6, 4, 4)}  # different spatial sizes pair
    same = Step(torch.zeros(3, 2), None, teacher_features=maps, student_features={"s0": maps["t0"], "s1": maps["t1"]})
    assert ktsvd.pretrain_loss(same).item() == pytest.approx(0.0, abs=1e-6)
    student = {"s0": torch.randn(3, 4, 8, 8, requires_grad=True), "s1": torch.zeros(3, 6, 4, 4, requires_grad=True)}
    loss = ktsvd.pretrain_loss(Step(torch.zeros(3, 2), None, teacher_features=maps, student_features=student))
    loss.backward()
    assert loss.item() > 0 and all(torch.isfinite(t.grad).all() for t in student.values())  # a dead layer too


def test_self_distillation_by_hand() -> None:
    z1, z2, label = [1.0, 0.0], [0.0, 1.0], 0
    f1, f2 = [1.0, 2.0], [3.0, 2.0]
    p1, p2 = _softmax(z1), _softmax(z2)
    ce = -math.log(p1[label]) - math.log(p2[label])
    kl = _kl(p1, p2) + _kl(p2, p1)
    mmd = (1 - 3) ** 2 + (2 - 2) ** 2
    sd = methods.SelfDistillation("emb", kl_weight=0.5, mmd_weight=0.25)
    step = Step(
        torch.tensor([z1]),
        torch.tensor([label]),
        student_features={"emb": torch.tensor([f1])},
        second_logits=torch.tensor([z2]),
        second_features={"emb": torch.tensor([f2])},
    )
    assert sd(step).item() == pytest.approx(ce + 0.5 * kl + 0.25 * mmd, rel=1e-5)


def test_weighted_sum_and_validation() -> None:
    step = Step(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), teacher_logits=torch.randn(4, 3))
    kd, ce = methods.KnowledgeDistillation(), methods.CrossEntropy()
    combined = losses.WeightedLoss([(2.0, kd), (0.5, ce)])
    assert combined(step).item() == pytest.approx(2 * kd(step).item() + 0.5 * ce(step).item(), rel=1e-5)
    assert str(combined) == "2*kd(T=4, alpha=0.9) + 0.5*cross_entropy"
    with pytest.raises(ValueError):
        methods.KnowledgeDistillation(temperature=0)
    with pytest.raises(ValueError):
        methods.KnowledgeDistillation(alpha=1.5)
    with pytest.raises(ValueError):
        losses.WeightedLoss([])


def test_specialist_loss_sees_its_classes_and_a_dustbin() -> None:
    from distill.methods.specialists import SpecialistLoss

    loss = SpecialistLoss([0, 2], num_classes=4, temperature=2.0)
    teacher, student = [2.0, 0.0, 1.0, -1.0], [1.0, 3.0, 0.0, 0.5]
    collapse = lambda p: [p[0], p[2], p[1] + p[3]]  # noqa: E731  (classes 0 and 2, then the dustbin)
    expected = 4.0 * _kl(collapse(_softmax(teacher, 2.0)), collapse(_softmax(student, 2.0)))
    step = Step(torch.tensor([student]), None, teacher_logits=torch.tensor([teacher]))
    assert loss(step).item() == pytest.approx(expected, rel=1e-5)
    # Only the dustbin's total counts: moving probability between classes 1 and 3 changes nothing.
    moved = [1.0, 2.0 * math.log(math.exp(1.5) + math.exp(0.25) - 1.0), 0.0, 0.0]  # the same sum of exp(z / T)
    assert loss(Step(torch.tensor([moved]), None, teacher_logits=torch.tensor([teacher]))).item() == pytest.approx(expected, rel=1e-5)


def _specialists_objective(q: torch.Tensor, general: torch.Tensor, own: torch.Tensor, dustbin: torch.Tensor,
                           members: torch.Tensor, called: torch.Tensor) -> torch.Tensor:
    """Hinton et al.'s objective per sample, up to the constant entropies: KL(general || q) + the called
    specialists' KL(p_m || q_m), q_m being q over m's classes with the rest summed into its dustbin."""
    q_own = q[:, None, :] * members
    q_dustbin = (q[:, None, :] * (1 - members)).sum(2)
    specialist = -(own * q_own.clamp_min(1e-30).log()).sum(2) - dustbin * q_dustbin.clamp_min(1e-30).log()
    return -(general * q.clamp_min(1e-30).log()).sum(1) + (called * specialist).sum(1)


def test_specialists_combination_reaches_the_papers_minimum() -> None:
    from distill.methods.specialists import combine

    torch.manual_seed(0)
    batch, num_classes = 64, 7
    members = torch.tensor([[1, 1, 0, 0, 0, 0, 0], [0, 0, 1, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1, 1.0]])  # overlapping
    general = torch.randn(batch, num_classes).mul(2).softmax(1)
    joint = torch.randn(batch, 3, num_classes + 1).mul(2).masked_fill(torch.cat([members, torch.ones(3, 1)], 1) == 0, -math.inf).softmax(2)
    own, dustbin = joint[..., :-1], joint[..., -1]
    q = combine(general, own, dustbin, members, top_classes=2)
    assert torch.allclose(q.sum(1), torch.ones(batch), atol=1e-5)
    called = members.t()[general.topk(2, 1).indices].amax(1)
    # The optimum by another road: Adam on q's logits, as the paper minimises it.
    logits = general.log().clone().requires_grad_(True)
    optimiser = torch.optim.Adam([logits], lr=0.05)
    for _ in range(3000):
        optimiser.zero_grad()
        _specialists_objective(logits.softmax(1), general, own, dustbin, members, called).sum().backward()
        optimiser.step()
    reached = _specialists_objective(q, general, own, dustbin, members, called)
    best = _specialists_objective(logits.detach().softmax(1), general, own, dustbin, members, called)
    assert (reached - best).max().item() < 1e-3
    # Uncalled specialists change nothing: with every top class outside all groups, q is the generalist's.
    alone = combine(general, own, dustbin, torch.zeros_like(members), top_classes=2)
    assert torch.allclose(alone, general)


def test_specialist_groups_are_the_classes_the_teacher_confuses() -> None:
    from distill.methods.specialists import enriched_rows, find_subsets

    torch.manual_seed(0)
    labels = torch.randint(0, 6, (3000,))
    logits = torch.full((3000, 6), -4.0)
    logits[torch.arange(3000), labels] = 3.0
    partner = torch.tensor([1, 0, 3, 4, 2, 5])  # 0<->1 and 2->3->4->2 are confused; 5 is alone
    logits[torch.arange(3000), partner[labels]] += 7.0 * torch.rand(3000)  # up to as likely as the true class
    assert find_subsets(logits.softmax(1), clusters=3, seed=0) == [[0, 1], [2, 3, 4]]

    rows = enriched_rows(labels, [0, 1], seed=0)
    inside = torch.isin(labels[rows], torch.tensor([0, 1]))
    assert len(set(rows.tolist())) == len(rows) and inside.sum() == (~inside).sum() == (torch.isin(labels, torch.tensor([0, 1]))).sum()
