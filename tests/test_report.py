"""What the report derives from its measurements, and how it renders (Markdown, HTML)."""

from __future__ import annotations

import re

import pytest

from protos.distillery.v1 import distillery_pb2 as pb
from service import report as report_format
from service.report_html import to_html


def _latency(batch_size: int, p50_ms: float) -> pb.Latency:
    return pb.Latency(
        batch_size=batch_size, runs=30, p50_ms=p50_ms, p90_ms=p50_ms * 1.1, p95_ms=p50_ms * 1.2, p99_ms=p50_ms * 1.5,
        mean_ms=p50_ms, stdev_ms=0.01, throughput_per_s=1000 * batch_size / p50_ms, peak_memory_bytes=2**20,
    )


def _variant(model: str, runtime: str, top1: float, p50s: dict[int, float]) -> pb.Variant:
    return pb.Variant(
        name=f"{model} / {runtime}", model=model, runtime=runtime, precision="fp32", file_size_bytes=2**20,
        parameters=1000, macs=10_000, accuracy=pb.Accuracy(samples=200, top1=top1, top5=99.0, agreement_with_teacher=97.0),
        latency=[_latency(b, ms) for b, ms in p50s.items()],
    )


@pytest.fixture
def report() -> pb.Report:
    return report_format.finish(
        pb.Report(
            job_id="j-1",
            kind=pb.JOB_KIND_DISTILLATION,
            teacher=pb.ModelCard(architecture="lenet5", input_shape=[1, 28, 28]),
            student=pb.ModelCard(architecture="lenet5_half", input_shape=[1, 28, 28]),
            variants=[
                _variant("teacher", "pytorch", 99.0, {1: 4.0, 32: 40.0}),
                _variant("student", "pytorch", 98.5, {1: 2.0, 32: 16.0}),
                _variant("student", "onnxruntime", 98.5, {1: 0.5, 32: 8.0}),
            ],
            per_class=[
                pb.ClassAccuracy(name="circle", samples=100, teacher_top1=99.0, student_top1=97.0),
                pb.ClassAccuracy(name="square", samples=100, teacher_top1=99.0, student_top1=100.0),
            ],
            notes=["student / pytorch skipped batch 128 and larger: out of memory"],
        )
    )


def test_speedups_deltas_and_picks_are_computed_once(report: pb.Report) -> None:
    teacher, student, onnx = report.variants
    assert [lat.speedup_vs_teacher for lat in onnx.latency] == [pytest.approx(8.0), pytest.approx(5.0)]
    assert teacher.latency[0].speedup_vs_teacher == pytest.approx(1.0)
    assert student.top1_delta_vs_teacher == pytest.approx(-0.5)
    low, high = report.student_lowest_latency, report.student_highest_throughput
    assert (low.variant, low.batch_size, low.p50_ms) == ("student / onnxruntime", 1, 0.5)
    assert (high.variant, high.batch_size) == ("student / onnxruntime", 32)
    assert report.summary == (
        "student is 8.0x faster at batch 1 (student / onnxruntime against teacher / pytorch: different runtimes), "
        "0.50 points less accurate (top-1)"
    )


def test_the_headline_speedup_is_same_runtime_when_the_teacher_ran_there(report: pb.Report) -> None:
    """Issue 21: teacher / pytorch against student / onnxruntime mixes the runtime change into the speedup."""
    teacher_onnx = _variant("teacher", "onnxruntime", 99.0, {1: 1.0, 32: 20.0})
    report.variants.insert(1, teacher_onnx)
    report_format.finish(report)
    onnx = report.variants[3]
    assert onnx.speedup_baseline == "teacher / onnxruntime"
    assert [lat.speedup_vs_teacher for lat in onnx.latency] == [pytest.approx(2.0), pytest.approx(2.5)]
    assert [lat.speedup_vs_teacher_pytorch for lat in onnx.latency] == [pytest.approx(8.0), pytest.approx(5.0)]
    student = report.variants[2]  # PyTorch against PyTorch: one figure
    assert student.speedup_baseline == "teacher / pytorch" and not student.latency[0].HasField("speedup_vs_teacher_pytorch")
    assert report.summary == (
        "student is 2.0x faster than the teacher in onnxruntime at batch 1 (student / onnxruntime; "
        "8.0x faster than teacher / pytorch), 0.50 points less accurate (top-1)"
    )


def test_markdown_has_every_table(report: pb.Report) -> None:
    md = report_format.to_markdown(report)
    assert "| student / onnxruntime | 98.50 | -0.50 |" in md
    assert "0.500 (8.0x)" in md
    assert "| circle | 100 | 99.00 | 97.00 | -2.00 |" in md
    assert "Lowest student latency: student / onnxruntime at batch 1" in md
    assert "out of memory" in md


def test_html_is_self_contained_with_two_plots_and_the_tables(report: pb.Report) -> None:
    page = to_html(report)
    assert page.count("<svg") == 2 and "<script" not in page
    assert not re.search(r"(src|href)=\"(https?:)?//", page), "the page must not fetch anything"
    assert report.summary in page
    assert page.count("<table>") == 4  # side by side, p50 by batch size, latency detail, per class
    assert '<tr class="worse"><td>circle</td>' in page
    assert to_html(report) == page  # the same report renders to the same bytes


def test_without_labels_there_is_no_accuracy_plot_and_the_summary_says_so(report: pb.Report) -> None:
    for v in report.variants:
        v.ClearField("accuracy")
        v.ClearField("top1_delta_vs_teacher")
    del report.per_class[:]
    report_format.finish(report)
    assert report.summary.endswith("accuracy not measured (no labelled data)")
    assert to_html(report).count("<svg") == 1


def test_reduced_precision_is_judged_on_accuracy_and_speed(report: pb.Report) -> None:
    report.export.accuracy_budget = 1.0
    fast_but_wrong = _variant("student", "onnxruntime", 96.0, {1: 0.3, 32: 4.0})
    slow_but_right = _variant("student", "onnxruntime", 98.5, {1: 0.9, 32: 9.0})
    good = _variant("student", "onnxruntime", 98.0, {1: 0.4, 32: 9.0})
    for v, precision in ((fast_but_wrong, "int8 static"), (slow_but_right, "int8 dynamic"), (good, "int8 static")):
        v.precision = precision
        v.name = f"student / onnxruntime {precision}"
    report.variants.extend([fast_but_wrong, slow_but_right, good])
    report_format.finish(report)
    verdicts = [(v.recommended, v.note) for v in report.variants[3:]]
    assert verdicts[0] == (False, "over the 1-point budget: 2.50 points below the FP32 student")
    assert verdicts[1][0] is False and verdicts[1][1].endswith("slower than the FP32 file at every batch size measured")
    assert verdicts[2] == (True, "within the 1-point budget: 0.50 points below the FP32 student")
    # The picks never name a variant the report does not recommend.
    assert report.student_lowest_latency.variant == "student / onnxruntime int8 static"
    assert report.student_lowest_latency.p50_ms == 0.4


def test_an_fp32_variant_out_of_parity_is_flagged_not_recommended(report: pb.Report) -> None:
    report.export.parity_tolerance, report.export.parity_relative_tolerance = 1e-4, 1e-4
    onnx = report.variants[2]
    onnx.parity.CopyFrom(pb.Parity(samples=512, max_abs_diff=0.3, max_rel_diff=0.02, top1_mismatch=1.5, within_tolerance=False))
    cuda = _variant("student", "onnxruntime", 98.5, {1: 0.4, 32: 4.0})
    cuda.name = "student / onnxruntime (CUDA)"
    cuda.parity.CopyFrom(pb.Parity(samples=512, max_abs_diff=2e-4, max_rel_diff=1e-6, within_tolerance=True))
    report.variants.append(cuda)
    report_format.finish(report)
    cuda = report.variants[3]  # append stored a copy
    assert not onnx.recommended and onnx.note.startswith("not within parity of the PyTorch student: max |diff| 3.00e-01")
    assert cuda.recommended
    assert report.student_lowest_latency.variant == "student / onnxruntime (CUDA)"  # the flagged one is never picked
    md = report_format.to_markdown(report)
    assert "Parity of each variant with the PyTorch student" in md and "top-1 differs on 1.50% of 512" in md


def _finished(teacher_top1: float, student_top1: float, num_classes: int = 10) -> pb.Report:
    return report_format.finish(
        pb.Report(
            teacher=pb.ModelCard(architecture="t", num_classes=num_classes),
            variants=[
                _variant("teacher", "pytorch", teacher_top1, {1: 4.0}),
                _variant("student", "pytorch", student_top1, {1: 1.0}),
                _variant("student", "onnxruntime", student_top1, {1: 0.1}),
            ],
        )
    )


def test_a_student_near_chance_or_far_below_its_teacher_is_never_recommended() -> None:
    at_chance = _finished(92.30, 10.00)
    assert not any(v.recommended for v in at_chance.variants if v.model == "student")
    assert not at_chance.HasField("student_lowest_latency")
    # The summary leads with the accuracy, not the 40x speedup.
    assert at_chance.summary.startswith("no student variant is recommended (student / pytorch: near chance: 10.00%")
    far_below = _finished(92.30, 80.00)
    assert far_below.summary.startswith("no student variant is recommended") and "12.30 points below the teacher" in far_below.summary
    close = _finished(92.30, 89.00)
    assert all(v.recommended for v in close.variants) and close.summary.startswith("student is 40.0x faster")


def test_a_collapsed_data_free_student_without_labels_is_never_recommended() -> None:
    def unlabelled(histogram: list[int], agreement: float) -> pb.Report:
        variants = [pb.Variant(name=f"{m} / pytorch", model=m, runtime="pytorch", precision="fp32",
                               latency=[_latency(1, ms)]) for m, ms in (("teacher", 4.0), ("student", 1.0))]
        d = pb.DataFreeSummary(class_histogram=histogram, generated_samples=sum(histogram), agreement_on_generated=agreement)
        return report_format.finish(pb.Report(teacher=pb.ModelCard(num_classes=len(histogram)), variants=variants, data_free=d))

    collapsed = unlabelled([1180, 850, 10, 8, 0, 0, 0, 0, 0, 0], 80.0)  # the case: six classes never seen
    assert not collapsed.variants[1].recommended and "covers 2 of 10 classes" in collapsed.summary
    guessing = unlabelled([205] * 10, 12.0)
    assert not guessing.variants[1].recommended and "near chance" in guessing.summary
    healthy = unlabelled([205] * 10, 91.0)
    assert healthy.variants[1].recommended and healthy.summary.startswith("student is 4.0x faster")


def test_a_data_free_job_fails_on_a_student_at_chance_whether_labels_or_the_generator_say_so() -> None:
    """Labels decide when the job has them (the issue's case: the test split scored a 10% student that SUCCEEDED)."""
    collapsed = pb.DataFreeSummary(class_histogram=[1180, 850, 10, 8, 0, 0, 0, 0, 0, 0], generated_samples=2048,
                                   agreement_on_generated=80.0)
    at_chance = _finished(98.30, 10.32)
    at_chance.data_free.CopyFrom(pb.DataFreeSummary(class_histogram=[205] * 10, agreement_on_generated=9.4))
    assert report_format.data_free_failure(at_chance).startswith("the student scores 10.32% top-1 on 200 validation images, near chance")
    far_below = _finished(98.30, 60.0)
    far_below.data_free.CopyFrom(collapsed)  # labels outrank the generator: the student learnt something
    assert report_format.data_free_failure(far_below) == "" and not far_below.variants[1].recommended
    unlabelled = pb.Report(teacher=pb.ModelCard(num_classes=10), data_free=collapsed,
                           variants=[pb.Variant(model="student", runtime="pytorch")])
    assert "covers 2 of 10 classes" in report_format.data_free_failure(unlabelled)
