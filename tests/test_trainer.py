"""The trainer learns with every method, checkpoints, and resumes to the same result."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from distill import data, features, loop, losses, methods, models, trainer
from distill.losses import MethodConfig


def _splits() -> data.Splits:
    return data.Splits(*data.generated_splits(num_classes=4, train_size=400, val_size=100, seed=5))


def _kd() -> losses.WeightedLoss:
    return losses.WeightedLoss([(1.0, methods.KnowledgeDistillation())])


METHODS = {
    "kd": [MethodConfig("kd")],
    "fitnet": [MethodConfig("fitnet", params={"hint_epochs": 3}), MethodConfig("kd")],
    "attention": [MethodConfig("attention"), MethodConfig("cross_entropy")],
    "fsp": [MethodConfig("fsp", params={"flow_epochs": 3}), MethodConfig("cross_entropy")],
    # Its stage one adds flows as it goes (3 sub-stages of 2 epochs here): compared within the last, all flows on.
    "dense_flow_adversarial": [MethodConfig("dense_flow", params={"flow_epochs": 6, "adversarial_weight": 1}),
                               MethodConfig("cross_entropy")],
    "ktsvd": [MethodConfig("ktsvd", params={"flow_epochs": 3}), MethodConfig("cross_entropy")],
    "self_distill": [MethodConfig("self_distill")],
}


@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains(tiny_teacher: torch.nn.Module, method: str) -> None:
    splits = _splits()
    student = models.build("lenet5_half", 4, 1)
    loss = losses.build_loss(METHODS[method], tiny_teacher, student, splits.train.input_shape)
    seen: list[loop.Progress] = []
    trainer.distil(
        student, tiny_teacher, loss, splits.train, splits.normalization,
        trainer.TrainConfig(epochs=3, batch_size=32), on_progress=seen.append,
    )
    for stage in (True, False):  # stage one (when the method has one), then the task
        stage_losses = [p.loss for p in seen if p.pretraining == stage]
        if method.startswith("dense_flow") and stage:
            stage_losses = [p.loss for p in seen if p.pretraining and p.epoch_end][-2:]
        if stage_losses:
            assert stage_losses[-1] < stage_losses[0], (method, stage, stage_losses)
    assert any(not p.pretraining for p in seen)
    assert seen[-1].step == seen[-1].total_steps


def test_auto_pairing_and_adapters(tiny_teacher: torch.nn.Module) -> None:
    student = models.build("lenet5_half", 4, 1)
    loss = losses.build_loss([MethodConfig("fitnet"), MethodConfig("fsp")], tiny_teacher, student, (1, 28, 28))
    fitnet, fsp = loss.terms
    assert (fitnet.hint, fitnet.guided) == ("features.4", "features.4")  # the middle of the 4 stage pairs
    assert fitnet.regressor.in_channels == 8 and fitnet.regressor.out_channels == 16
    assert [t for t, _ in fsp.pairs] == ["features.1", "features.2", "features.4", "pool"]
    assert loss.pretrain_epochs == 2 and set(loss.student_layers()) == {"features.1", "features.2", "features.4", "pool"}


def test_feature_methods_refuse_opaque_teachers_and_bad_layers(tiny_teacher: torch.nn.Module) -> None:
    student = models.build("lenet5_half", 4, 1)
    with pytest.raises(ValueError, match="needs the teacher's layers"):
        losses.build_loss([MethodConfig("attention")], tiny_teacher, student, (1, 28, 28), teacher_exposes_modules=False)
    with pytest.raises(ValueError, match="no module 'nope'"):
        losses.build_loss([MethodConfig("attention", layers=(("nope", "pool"),))], tiny_teacher, student, (1, 28, 28))


def _hooked(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """What forward hooks on every module see: outputs, and inputs under "path:input"."""
    seen: dict[str, torch.Tensor] = {}
    handles = [
        module.register_forward_hook(lambda _m, i, o, path=path: seen.update({path: o, path + ":input": i[0]}))
        for path, module in model.named_modules() if path
    ]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return seen


@pytest.mark.parametrize("architecture", ["resnet8_cifar", "mobilenet_v3_small", "cnn_bn_8"])
def test_torchscript_modules_are_tapped_as_hooks_tap_eager_ones(architecture: str) -> None:
    torch.manual_seed(0)
    eager = models.build(architecture, 4, 3, 32).eval()
    scripted = torch.jit.script(eager)
    x = torch.randn(2, 3, 32, 32)
    hooked = _hooked(eager, x)
    keys = [k for k in hooked if isinstance(hooked[k], torch.Tensor)]
    taps = features.ScriptTaps(scripted, keys, features.INPUT_SUFFIX, skip_untappable=True)
    with torch.no_grad():
        logits, tapped = taps(x)
    assert torch.allclose(logits, eager(x), atol=1e-5)
    assert len(tapped) > 0.9 * len(keys)  # the rest are identities (no op of their own) and calls under `if`
    for key, value in tapped.items():
        assert value.shape == hooked[key].shape and torch.allclose(value, hooked[key], atol=1e-4), key
    assert features.stage_outputs(scripted, (3, 32, 32)) == features.stage_outputs(eager, (3, 32, 32))
    assert features.embedding(scripted) == features.embedding(eager)
    if architecture == "resnet8_cifar":  # an identity shortcut has no op of its own to tap
        with pytest.raises(features.FeatureError, match="'layer1.0.shortcut' computes nothing of its own"):
            features.output_shape(scripted, "layer1.0.shortcut", (3, 32, 32))


def test_feature_methods_train_a_torchscript_student_against_a_torchscript_teacher(tiny_teacher: torch.nn.Module) -> None:
    splits = _splits()
    torch.manual_seed(3)
    eager = models.build("cnn_bn_8", 4, 1)
    student, teacher = torch.jit.script(eager.train()), torch.jit.script(tiny_teacher)
    configs = [MethodConfig("fitnet", params={"hint_epochs": 2}), MethodConfig("attention"), MethodConfig("kd")]
    loss = losses.build_loss(configs, teacher, student, splits.train.input_shape)
    assert loss.terms[1].pairs == losses.build_loss(configs, tiny_teacher, eager, (1, 28, 28)).terms[1].pairs
    start = {k: v.clone() for k, v in student.state_dict().items()}
    seen: list[loop.Progress] = []
    trainer.distil(student, teacher, loss, splits.train, splits.normalization,
                   trainer.TrainConfig(epochs=4, batch_size=32), on_progress=seen.append)
    for stage in (True, False):  # the hint stage, then the task: both learn through the taps
        stage_losses = [p.loss for p in seen if p.pretraining == stage]
        assert stage_losses[-1] < stage_losses[0], (stage, stage_losses)
    trained = student.state_dict()
    assert not torch.equal(trained["1.running_mean"], start["1.running_mean"])  # BatchNorm ran in train mode


def test_resume_from_checkpoint_gives_the_same_student(tiny_teacher: torch.nn.Module) -> None:
    splits = _splits()
    config = trainer.TrainConfig(epochs=2, batch_size=32, checkpoint_interval_steps=5, seed=2)
    checkpoints: list[dict[str, Any]] = []
    configs = [MethodConfig("fitnet", params={"hint_epochs": 1}), MethodConfig("kd")]

    full = models.build("lenet5_half", 4, 1)
    loss = losses.build_loss(configs, tiny_teacher, full, (1, 28, 28))
    straight = trainer.distil(full, tiny_teacher, loss, splits.train, splits.normalization, config,
                              on_checkpoint=lambda state: checkpoints.append(copy.deepcopy(state)))
    middle = checkpoints[4]  # step 25, inside the second of three epochs
    assert middle["step"] == 25

    resumed = models.build("lenet5_half", 4, 1)
    torch.manual_seed(99)  # adapters start elsewhere; the checkpoint must restore them
    loss = losses.build_loss(configs, tiny_teacher, resumed, (1, 28, 28))
    result = trainer.distil(resumed, tiny_teacher, loss, splits.train, splits.normalization, config, resume_from=middle)
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5)
    # Every sample trained on once per epoch (3), the steps before the checkpoint included.
    assert torch.equal(result.visits, straight.visits) and (straight.visits == 3).all()


def test_resume_continues_the_random_distortions_of_self_distillation() -> None:
    splits = _splits()
    config = trainer.TrainConfig(epochs=2, batch_size=32, checkpoint_interval_steps=5, seed=2)
    checkpoints: list[dict[str, Any]] = []
    full = models.build("lenet5_half", 4, 1)
    loss = losses.build_loss([MethodConfig("self_distill")], None, full, (1, 28, 28))
    trainer.distil(full, None, loss, splits.train, splits.normalization, config,
                   on_checkpoint=lambda state: checkpoints.append(copy.deepcopy(state)))

    resumed = models.build("lenet5_half", 4, 1)
    loss = losses.build_loss([MethodConfig("self_distill")], None, resumed, (1, 28, 28))
    trainer.distil(resumed, None, loss, splits.train, splits.normalization, config, resume_from=checkpoints[2])
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5)


def test_a_stop_request_checkpoints_that_step_and_resume_finishes_the_same(tiny_teacher: torch.nn.Module) -> None:
    splits = _splits()
    config = trainer.TrainConfig(epochs=2, batch_size=32, checkpoint_interval_steps=1000, seed=2)
    torch.manual_seed(7)
    full = models.build("lenet5_half", 4, 1)
    trainer.distil(full, tiny_teacher, _kd(), splits.train, splits.normalization, config)

    checkpoints: list[dict[str, Any]] = []
    steps = iter(range(1, 1000))
    torch.manual_seed(7)  # the same start as the uninterrupted run
    stopped = models.build("lenet5_half", 4, 1)
    with pytest.raises(loop.Interrupted, match="stopped at step 17 of 26"):
        trainer.distil(stopped, tiny_teacher, _kd(), splits.train, splits.normalization, config,
                       on_checkpoint=lambda state: checkpoints.append(copy.deepcopy(state)),
                       stop_requested=lambda: next(steps) == 17)
    assert [c["step"] for c in checkpoints] == [17]  # the interval (1000) never came: the stop wrote it

    resumed = models.build("lenet5_half", 4, 1)
    checkpoints[0]["wall_seconds"] = 1000.0  # as if the first 17 steps had taken that long
    result = trainer.distil(resumed, tiny_teacher, _kd(), splits.train, splits.normalization, config,
                            resume_from=checkpoints[0])
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5)
    assert result.wall_seconds > 1000  # the run's time, not only the resumed part's


def test_divergence_is_reported(tiny_teacher: torch.nn.Module) -> None:
    splits = _splits()
    student = models.build("lenet5_half", 4, 1)
    with torch.no_grad():
        student.classifier[-1].weight.fill_(float("nan"))
    with pytest.raises(loop.TrainingDivergedError, match="student.s initial weights are not finite"):
        trainer.distil(student, tiny_teacher, _kd(), splits.train, splits.normalization, trainer.TrainConfig(epochs=1))


def test_distortion_keeps_shape_and_changes_pixels() -> None:
    x = torch.randn(8, 3, 32, 32)
    y = trainer.distort(x)
    assert y.shape == x.shape and not torch.allclose(x, y)


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="epochs"):
        trainer.TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="optimizer"):
        trainer.TrainConfig(optimizer="lbfgs")
