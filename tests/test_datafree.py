"""Data-free distillation: the generator, both methods, resume, and what the job shows people."""

from __future__ import annotations

import copy
import platform
from pathlib import Path
from typing import Any

import pytest
import torch

from distill import allocator, batchnorm, data, datafree, evaluate, loading, loop, models, trainer
from distill.datafree import DataFreeConfig, Generator
from tests.conftest import TINY_DATA

SHAPE = (1, 28, 28)


def _config(**overrides: Any) -> DataFreeConfig:
    fields = {"iterations": 6, "student_steps": 2, "batch_size": 32, "generator_width": 8, "seed": 1}
    return DataFreeConfig(**{**fields, **overrides})


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 20, 30), (1, 8, 8), (3, 96, 96)])
def test_generator_makes_the_teachers_input_shape(shape: tuple[int, int, int]) -> None:
    generator = Generator(16, shape, width=8)
    images = generator.sample(5, batch_size=4)
    assert images.shape == (5, *shape)
    # The last layer is a BatchNorm (without affine unless the range is learnt): images start in normalised space.
    assert abs(images.mean().item()) < 0.5 and 0.3 < images.std().item() < 2


def test_auto_picks_bn_prior_only_for_batchnorm_teachers(tiny_teacher: torch.nn.Module) -> None:
    bn_teacher = models.build("resnet8_cifar", 10, 3).eval()
    assert datafree.resolve_method("auto", bn_teacher) == "bn_prior"
    assert datafree.resolve_method("auto", tiny_teacher) == "dfad"
    assert datafree.resolve_method("auto", lambda x: x) == "dfad"  # a black box (e.g. an ONNX teacher)
    with pytest.raises(ValueError, match="BatchNorm"):
        datafree.resolve_method("bn_prior", tiny_teacher)


@pytest.mark.slow
def test_dfad_learns_the_teacher_without_seeing_data(tiny_teacher: torch.nn.Module) -> None:
    """The student never sees a real image, yet agrees with the teacher on real ones."""
    _, val = data.generated_splits(**TINY_DATA)
    normalization = data.Splits(*data.generated_splits(**TINY_DATA)).normalization
    student = models.build("lenet5_half", 4, 1)
    teacher_top1 = trainer.predict_logits(tiny_teacher, val, normalization).argmax(1)

    def agreement() -> float:
        return 100 * (trainer.predict_logits(student, val, normalization).argmax(1) == teacher_top1).float().mean().item()

    before = agreement()
    seen: list[loop.Progress] = []
    # The tiny LeNet-5-half dies at the default 0.1 here (MNIST's default); 0.02 learns.
    config = _config(iterations=150, student_steps=3, batch_size=64, generator_width=16, student_lr=0.02)
    result = datafree.distil_data_free(student, tiny_teacher, SHAPE, config, on_progress=seen.append)
    assert result.method == "dfad" and result.iterations == 150
    assert seen[-1].step == seen[-1].total_steps == 150
    assert agreement() > max(60.0, before + 25), (before, agreement())
    # Final accuracy on the real validation split, scored once at the end.
    top1 = evaluate.accuracy(trainer.predict_logits(student, val, normalization), val.labels).top1
    assert top1 > 60


def _bn_teacher() -> torch.nn.Module:
    """A ResNet-8 whose BatchNorm layers hold the running statistics of real (generated) data, as a trained one's do."""
    torch.manual_seed(0)
    teacher = models.build("resnet8_cifar", 4, 1)
    splits = data.Splits(*data.generated_splits(**TINY_DATA))
    with torch.no_grad():
        for layer in datafree.batchnorm_layers(teacher):
            layer.momentum = None  # one cumulative pass
        teacher.train()(splits.normalization.apply(splits.train.images[:400]))
    return teacher.eval()


def _prior_gap(teacher: torch.nn.Module, generator: Generator) -> float:
    """How far the teacher's BatchNorm inputs on fresh generated images are from its running statistics."""
    prior = datafree._BatchNormPrior(datafree.batchnorm_layers(teacher))
    prior.active = True
    with torch.no_grad():
        teacher(generator.sample(64, 64))
    prior.remove()
    return prior.take().item()


def test_bn_prior_pulls_generated_statistics_to_the_teachers() -> None:
    teacher = _bn_teacher()
    config = _config(method="bn_prior", iterations=40, adversarial_weight=0.0, confidence_weight=0.0, balance_weight=0.0)
    torch.manual_seed(config.seed)
    before = _prior_gap(teacher, Generator(config.noise_dim, SHAPE, config.generator_width))  # the trained one's init
    result = datafree.distil_data_free(models.build("lenet5_half", 4, 1), teacher, SHAPE, config)
    assert result.method == "bn_prior"
    assert _prior_gap(teacher, result.generator) < 0.5 * before
    assert not any(layer._forward_pre_hooks for layer in datafree.batchnorm_layers(teacher))  # training left none behind


def test_bn_prior_warms_the_generator_up_before_the_student_trains() -> None:
    """The student's first images already sit where the teacher's BatchNorm statistics say its inputs lie."""
    teacher = _bn_teacher()
    gaps, results = [], []
    for warmup in (0, 30):
        seen: list[loop.Progress] = []
        config = _config(method="bn_prior", iterations=1, warmup_steps=warmup)
        results.append(datafree.distil_data_free(models.build("lenet5_half", 4, 1), teacher, SHAPE, config, on_progress=seen.append))
        gaps.append(_prior_gap(teacher, results[-1].generator))
    assert gaps[1] < 0.5 * gaps[0], gaps
    told = [p for p in seen if not p.message.startswith("warning:")]
    assert told[0].message.startswith("generator warm-up: 30 steps") and told[0].step == 0, told[0]
    assert "warmed up for 30 steps" in results[1].recipe and "warmed up" not in results[0].recipe
    default = _config(method="bn_prior", iterations=400)
    assert default.warmup_steps == -1  # resolved from the iterations: 400 / 20 = 20 steps (see the recipe)


@pytest.mark.parametrize("student", ["lenet5_half", "cnn_bn_8"])
def test_bn_prior_warns_about_a_student_without_batchnorm(student: str) -> None:
    """Such students learn little from a BatchNorm teacher's generated images: the events and the recipe say so."""
    seen: list[loop.Progress] = []
    config = _config(method="bn_prior", iterations=1, warmup_steps=0)
    result = datafree.distil_data_free(models.build(student, 4, 1), _bn_teacher(), SHAPE, config, on_progress=seen.append)
    warned = [p.message for p in seen if p.message.startswith("warning: the student has no BatchNorm layers")]
    assert bool(warned) == (student == "lenet5_half"), [p.message for p in seen]
    assert ("prefer a student with BatchNorm" in result.recipe) == (student == "lenet5_half"), result.recipe


def test_gradient_guard_caps_a_runaway_step_and_leaves_normal_ones() -> None:
    weight = torch.nn.Parameter(torch.zeros(4))
    guard = datafree.GradientGuard("cpu")

    def step(value: float) -> float:
        weight.grad = torch.full_like(weight, value)  # norm 2 * value
        guard.clip([weight])
        return weight.grad.norm().item()

    assert step(1.0) == pytest.approx(2.0)  # the first step sets the average
    assert step(1.2) == pytest.approx(2.4)  # normal steps pass untouched
    average = 0.9 * 2.0 + 0.1 * 2.4
    assert step(100.0) == pytest.approx(3 * average)  # a spike is capped at 3x the average
    assert guard.average.item() == pytest.approx(0.9 * average + 0.1 * 3 * average)  # and moves it only that far


def test_replay_memory_keeps_an_even_sample_of_the_whole_run() -> None:
    torch.manual_seed(0)
    image_bytes, logit_bytes = 2 * 1 * 2 * 2, 4 * 3  # a float16 1x2x2 image and 3 float32 logits
    memory = datafree.ReplayMemory(budget_bytes=1000 * (image_bytes + logit_bytes), image_shape=(1, 2, 2), device="cpu")
    for start in range(0, 20_000, 100):  # image n is filled with n, its logits too
        numbers = torch.arange(start, start + 100, dtype=torch.float32)
        memory.add(numbers.view(-1, 1, 1, 1).expand(-1, 1, 2, 2), numbers.view(-1, 1).expand(-1, 3))
    assert len(memory) == 1000 and memory.offered == 20_000
    kept = memory.logits[:, 0]
    assert kept.unique().numel() == 1000  # no image kept twice
    torch.testing.assert_close(memory.images[:, 0, 0, 0].float(), kept, atol=8, rtol=0)  # float16: integers to 2048 exact
    # Every quarter of the run is as likely to be kept: 250 expected per quarter (binomial sd ~14).
    per_quarter = torch.histc(kept, bins=4, min=0, max=20_000)
    assert ((per_quarter - 250).abs() < 60).all(), per_quarter
    images, logits = memory.sample(64)
    assert images.shape == (64, 1, 2, 2) and images.dtype == torch.float32 and logits.shape == (64, 3)
    torch.testing.assert_close(images[:, 0, 0, 0], logits[:, 0], atol=8, rtol=0)  # images stay with their logits


def test_replay_memory_too_small_for_a_batch_is_refused(tiny_teacher: torch.nn.Module) -> None:
    student = models.build("lenet5_half", 4, 1)
    with pytest.raises(ValueError, match="replay_memory_mb 1 holds fewer images"):
        datafree.distil_data_free(student, tiny_teacher, SHAPE, _config(replay_memory_mb=1, batch_size=1024))


def test_resume_gives_the_same_student(tiny_teacher: torch.nn.Module) -> None:
    config = _config(checkpoint_interval_steps=3)
    assert config.replay_steps > 0  # the replay memory is part of what a checkpoint must bring back
    torch.manual_seed(0)
    straight = models.build("lenet5_half", 4, 1)
    interrupted = copy.deepcopy(straight)
    datafree.distil_data_free(straight, tiny_teacher, SHAPE, config)

    saved: list[dict[str, Any]] = []

    class Stop(Exception):
        pass

    def checkpoint(state: dict[str, Any]) -> None:
        saved.append(copy.deepcopy(state))
        raise Stop  # the worker dies right after its checkpoint

    with pytest.raises(Stop):
        datafree.distil_data_free(copy.deepcopy(interrupted), tiny_teacher, SHAPE, config, on_checkpoint=checkpoint)
    assert saved[0]["step"] == 3 and saved[0]["wall_seconds"] > 0
    saved[0]["wall_seconds"] = 1000.0
    result = datafree.distil_data_free(interrupted, tiny_teacher, SHAPE, config, resume_from=saved[0])
    for name, value in straight.state_dict().items():
        torch.testing.assert_close(interrupted.state_dict()[name], value, msg=name)
    assert result.wall_seconds > 1000  # the run's time, the part before the resume included


class FewClassTeacher(torch.nn.Module):
    """A teacher that never picks classes 2 and 3, with logits a thousand times too large: a collapse waiting to happen."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.head = torch.nn.Linear(28 * 28, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(x.flatten(1))
        return 1000 * torch.cat([logits[:, :2], logits[:, 2:] - 100], dim=1)


def test_coverage_watch_acts_in_order_and_says_what_it_did() -> None:
    watch = datafree.CoverageWatch(num_classes=4, device="cpu")
    collapsed = torch.tensor([500.0, 480.0, 20.0, 0.0])  # classes 2 and 3 under a quarter of their fair 250
    assert watch.judge(5, 100, collapsed) == "targets" and watch.targets_on and watch.missing == [2, 3]
    assert watch.target_weights.tolist() == [1.0, 1.0, 4.0, 4.0]
    assert [watch.judge(step, 100, collapsed) for step in (10, 15, 20)] == ["balance"] * 3
    assert watch.balance_scale == 8.0
    assert [watch.judge(step, 100, collapsed) for step in (25, 30, 35, 40)] == ["", "", "", "reseed"]
    assert [watch.judge(step, 100, collapsed) for step in (45, 50, 55, 60)] == ["", "", "", ""]  # past half the run
    assert watch.judge(65, 100, torch.tensor([250.0, 250.0, 250.0, 250.0])) == ""
    assert watch.missing == [] and watch.target_weights.tolist() == [1.0] * 4 and watch.targets_on
    assert "2 (2.0%), 3 (0.0%)" in watch.events[0] and "class-conditional targets on" in watch.events[0]
    assert "raised to 8x" in watch.events[3] and "re-seeded (1 of at most 2)" in watch.events[4]
    assert watch.events[-1] == "iteration 65: every class is covered again"
    restored = datafree.CoverageWatch(4, "cpu")
    restored.load_state_dict(copy.deepcopy(watch.state_dict()))
    assert restored.state_dict().keys() == watch.state_dict().keys() and restored.events == watch.events


def test_bounded_logits_are_centred_and_clamped() -> None:
    logits = torch.tensor([[1.0, 2.0, 3.0], [1000.0, 0.0, -1000.0]])
    bounded = datafree.bounded_logits(logits, 30.0)
    torch.testing.assert_close(bounded, torch.tensor([[-1.0, 0.0, 1.0], [30.0, 0.0, -30.0]]))


def test_a_collapsing_teacher_is_watched_acted_on_and_bounded() -> None:
    """Classes the teacher never sees are noticed, acted on, told as progress messages; its huge logits are bounded."""
    teacher = FewClassTeacher().eval()
    student = models.build("lenet5_half", 4, 1)
    seen: list[loop.Progress] = []
    config = _config(iterations=12, coverage_window=3, batch_size=0, logit_bound=10.0)
    result = datafree.distil_data_free(student, teacher, SHAPE, config, on_progress=seen.append)
    assert result.batch_size == 256  # chosen from the teacher's 4 classes
    assert "batch 256 (16 images a class for 4 classes" in result.recipe and "every 3 iterations" in result.recipe
    assert "class-conditional targets on" in result.interventions[0]
    assert "balance weight raised to 2x" in result.interventions[1]
    assert [p.message for p in seen if p.message] == result.interventions
    assert result.missing_classes == [2, 3]  # this teacher cannot be talked into them
    assert result.final_loss < 2 * 10.0  # L1 to logits bounded at 10: without the bound it is in the thousands


def test_resume_brings_back_what_the_coverage_watch_knew() -> None:
    teacher = FewClassTeacher().eval()
    config = _config(iterations=8, coverage_window=2, checkpoint_interval_steps=3)
    torch.manual_seed(0)
    straight = models.build("lenet5_half", 4, 1)
    interrupted = copy.deepcopy(straight)
    expected = datafree.distil_data_free(straight, teacher, SHAPE, config)
    saved: list[dict[str, Any]] = []

    class Stop(Exception):
        pass

    def checkpoint(state: dict[str, Any]) -> None:
        saved.append(copy.deepcopy(state))
        raise Stop

    with pytest.raises(Stop):
        datafree.distil_data_free(copy.deepcopy(interrupted), teacher, SHAPE, config, on_checkpoint=checkpoint)
    assert saved[0]["coverage"]["targets_on"]  # the watch had acted before the checkpoint (iteration 2)
    resumed = datafree.distil_data_free(interrupted, teacher, SHAPE, config, resume_from=saved[0])
    assert resumed.interventions == expected.interventions
    for name, value in straight.state_dict().items():
        torch.testing.assert_close(interrupted.state_dict()[name], value, msg=name)


def test_generator_checkpoints_keep_labels_and_range_and_old_ones_load() -> None:
    torch.manual_seed(0)
    generator = Generator(16, SHAPE, width=8, num_classes=4, learn_range=True)
    with torch.no_grad():
        generator.label_embedding.weight.normal_()
        generator.body[-1].bias.fill_(0.5)  # a learnt shift
    saved = generator.to_checkpoint()
    rebuilt = Generator.from_checkpoint(saved)
    z, labels = torch.randn(6, 16), torch.arange(6) % 4
    torch.testing.assert_close(rebuilt.eval()(z, labels), generator.eval()(z, labels))
    assert abs(rebuilt.sample(64).mean().item() - 0.5) < 0.1  # the learnt range is what sample() gives
    old = {k: v for k, v in Generator(16, SHAPE, width=8).to_checkpoint().items() if k not in ("num_classes", "learn_range")}
    assert Generator.from_checkpoint(old).label_embedding is None  # saved before labels were learnt


def test_check_generator_counts_classes_and_draws_a_grid(tiny_teacher: torch.nn.Module) -> None:
    generator = Generator(16, SHAPE, width=8)
    torch.manual_seed(0)
    check = datafree.check_generator(generator, tiny_teacher, tiny_teacher, samples=100, per_class=3)
    assert sum(check.class_histogram) == 100 and len(check.class_histogram) == 4
    assert check.agreement == 100.0  # the teacher agrees with itself
    torch.manual_seed(0)  # the same draw of images
    with torch.no_grad():
        probabilities = tiny_teacher(generator.sample(100)).softmax(dim=1)
    assert check.teacher_confidence == pytest.approx(100 * probabilities.max(dim=1).values.mean().item(), rel=1e-4)
    assert check.grid.shape == (3, 4 * 28, 3 * 28)
    assert 0 <= check.grid.min() and check.grid.max() <= 1
    rebuilt = Generator.from_checkpoint(generator.to_checkpoint())
    torch.testing.assert_close(rebuilt.project.weight, generator.project.weight)


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="method.*batch_size.*logit_bound"):
        DataFreeConfig(method="magic", batch_size=1, logit_bound=0)
    for weights in ({"bn_weight": -1}, {"bn_weight": float("nan")}, {"balance_weight": float("inf")}):
        with pytest.raises(ValueError, match="weights must be finite and not negative"):
            DataFreeConfig(**weights)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_allocator_tuning_applies_on_glibc() -> None:
    assert allocator.keep_freed_memory()
    assert torch.ones(64 << 20, dtype=torch.uint8).sum() == 64 << 20  # large allocations still work


@pytest.mark.parametrize("fmt", ["torchscript", "exported_program", "exported_program_static_batch"])
def test_batchnorm_is_reached_in_torchscript_and_exported_teachers(fmt: str, tmp_path: Path) -> None:
    """auto picks bn_prior for every format that has BatchNorm, and the prior sees each layer's input."""
    eager = models.build("resnet8_cifar", 4, 1).eval()
    example = torch.randn(2, *SHAPE)
    if fmt == "torchscript":
        torch.jit.save(torch.jit.script(eager), tmp_path / "t.pt")
        loaded = loading.load_teacher(tmp_path / "t.pt", loading.TORCHSCRIPT, "", SHAPE).model
    else:
        dynamic = {"dynamic_shapes": ({0: torch.export.Dim("batch")},)} if fmt == "exported_program" else {}
        torch.export.save(torch.export.export(eager, (example,), **dynamic), tmp_path / "t.pt2")
        loaded = loading.load_teacher(tmp_path / "t.pt2", loading.EXPORTED_PROGRAM, "", SHAPE).model
    assert not datafree.batchnorm_layers(loaded) and datafree.resolve_method("auto", loaded) == "dfad"  # hidden as loaded

    reached = batchnorm.reach_batchnorm(loaded, SHAPE)
    expected = sum(isinstance(m, torch.nn.BatchNorm2d) for m in eager.modules())
    assert len(reached.layers) == expected and str(expected) in reached.how, reached.how
    assert datafree.resolve_method("auto", reached.teacher) == "bn_prior"
    x = torch.randn(5, *SHAPE, requires_grad=True)
    with torch.no_grad():
        assert torch.allclose(reached.teacher(x), eager(x), atol=1e-5)
    prior = datafree._BatchNormPrior(datafree.batchnorm_layers(reached.teacher))
    prior.active = True
    reached.teacher(x).sum().backward()  # the generator's gradient flows through the reached teacher
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert torch.isfinite(prior.take())

    # The prior is about the whole batch's statistics, also where a static-batch program runs it in chunks of 2.
    batch = torch.randn(6, *SHAPE)
    gaps = []
    for model in (reached.teacher, eager):
        prior = datafree._BatchNormPrior(datafree.batchnorm_layers(model))
        prior.active = True
        with torch.no_grad():
            model(batch)
        prior.remove()
        gaps.append(prior.take().item())
    assert gaps[0] == pytest.approx(gaps[1], rel=1e-5)  # per-chunk statistics miss by 3e-4 here
