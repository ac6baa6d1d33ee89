"""The report for people: a one-line summary and Markdown tables.

report.json is the Report proto's JSON form (one schema for pipelines); this
module renders the same message for reading.
"""

from __future__ import annotations

from protos.distillery.v1 import distillery_pb2 as pb


def _latency_at(variant: pb.Variant, batch_size: int) -> pb.Latency | None:
    return next((lat for lat in variant.latency if lat.batch_size == batch_size), None)


def summary(report: pb.Report) -> str:
    """"student is 4.1x faster at batch 1 (onnxruntime), 0.3 points less accurate (top-1)"."""
    teacher = next(v for v in report.variants if v.model == "teacher")
    students = [v for v in report.variants if v.model == "student"]
    if not teacher.latency or not students:
        return ""
    batch = min(lat.batch_size for lat in teacher.latency)
    base = _latency_at(teacher, batch)
    timed = [(lat.p50_ms, v) for v in students if (lat := _latency_at(v, batch))]
    fastest_ms, fastest = min(timed, key=lambda item: item[0])
    speedup = base.p50_ms / fastest_ms if fastest_ms > 0 else float("inf")
    speed_words = f"{speedup:.1f}x faster" if speedup >= 1 else f"{1 / speedup:.1f}x slower"
    if not teacher.HasField("accuracy"):
        agreement = report.data_free.agreement_on_generated
        return (
            f"student is {speed_words} at batch {batch} ({fastest.runtime}), agrees with the teacher on "
            f"{agreement:.1f}% of generated images (no labelled data: accuracy not measured)"
        )
    delta = fastest.accuracy.top1 - teacher.accuracy.top1
    accuracy_words = (
        f"{abs(delta):.2f} points {'less' if delta < 0 else 'more'} accurate (top-1)" if abs(delta) >= 0.005 else "as accurate (top-1)"
    )
    return f"student is {speed_words} at batch {batch} ({fastest.runtime}), {accuracy_words}"


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _count(n: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def to_markdown(report: pb.Report) -> str:
    """The teacher-vs-student tables for pull requests and chat."""
    lines = [f"# Distillation report: job {report.job_id}", "", f"**{report.summary}**", ""]
    lines += [
        "| model | architecture | parameters | MACs | input |",
        "|---|---|---:|---:|---|",
    ]
    for role, card in (("teacher", report.teacher), ("student", report.student)):
        shape = "x".join(map(str, card.input_shape))
        lines.append(f"| {role} | {card.architecture} | {_count(card.parameters)} | {_count(card.macs)} | {shape} |")

    batch_sizes = sorted({lat.batch_size for v in report.variants for lat in v.latency})
    teacher = next((v for v in report.variants if v.model == "teacher"), None)
    lines += ["", "## Accuracy and latency (p50 ms; speedup against the teacher)", ""]
    header = ["variant", "top-1 %", "top-5 %", "agreement %", "file"] + [f"batch {b}" for b in batch_sizes]
    lines += ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    for v in report.variants:
        if v.HasField("accuracy"):
            top5 = f"{v.accuracy.top5:.2f}" if v.accuracy.HasField("top5") else "-"
            cells = [v.name, f"{v.accuracy.top1:.2f}", top5, f"{v.accuracy.agreement_with_teacher:.2f}"]
        else:
            cells = [v.name, "-", "-", "-"]
        cells.append(_size(v.file_size_bytes))
        for b in batch_sizes:
            lat, base = _latency_at(v, b), _latency_at(teacher, b) if teacher else None
            if lat is None:
                cells.append("-")
            elif base is None or v is teacher:
                cells.append(f"{lat.p50_ms:.3f}")
            else:
                cells.append(f"{lat.p50_ms:.3f} ({base.p50_ms / lat.p50_ms:.1f}x)")
        lines.append("| " + " | ".join(cells) + " |")

    lines += ["", "## Latency detail (ms)", "", "| variant | batch | runs | p50 | p90 | p99 | mean | stdev | samples/s |"]
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for v in report.variants:
        for lat in v.latency:
            lines.append(
                f"| {v.name} | {lat.batch_size} | {lat.runs} | {lat.p50_ms:.3f} | {lat.p90_ms:.3f} | {lat.p99_ms:.3f} "
                f"| {lat.mean_ms:.3f} | {lat.stdev_ms:.3f} | {lat.throughput_per_s:,.0f} |"
            )

    if report.HasField("data_free"):
        lines += _data_free_section(report.data_free)

    t, e, env = report.training, report.export, report.environment
    if report.HasField("data_free"):
        made = f"{t.steps} generator iterations on {t.device}, {t.wall_seconds:.1f} s; final student L1 {t.final_loss:.4f}"
        scored = (
            f"- Accuracy is the final model's on {t.val_samples} validation samples, used for nothing else."
            if t.val_samples
            else "- No labelled data was given, so there was nothing to evaluate accuracy on; "
            "agreement is measured on fresh generated images instead."
        )
        inputs = "validation" if t.val_samples else "generated"
    else:
        made = (
            f"{t.epochs} epochs, {t.steps} steps on {t.device}, {t.wall_seconds:.1f} s; final-epoch loss "
            f"{t.final_loss:.4f}; {t.train_samples} training and {t.val_samples} validation samples"
        )
        scored = "- Accuracy is the final model's on the validation split (no checkpoint was picked by it)."
        inputs = "validation"
    lines += [
        "",
        "## How it was made",
        "",
        f"- Method: {t.method}; {made}.",
        scored,
        f"- ONNX: opset {e.opset}, exported with {e.exporter}; onnxruntime matches PyTorch within "
        f"{e.parity_max_abs_diff:.2e} (tolerance {e.parity_tolerance:.0e}) on {e.parity_samples} {inputs} inputs.",
        f"- Environment: {env.cpu}, {env.cpu_cores} cores, {env.num_threads} threads"
        f"{', GPU ' + env.gpu if env.gpu else ''}; torch {env.torch_version}, onnxruntime "
        f"{env.onnxruntime_version}, onnx {env.onnx_version}.",
        "",
    ]
    return "\n".join(lines)


def _data_free_section(d: pb.DataFreeSummary) -> list[str]:
    """The generator's health: which classes the teacher sees in its images."""
    total = max(1, sum(d.class_histogram))
    empty = [str(c) for c, n in enumerate(d.class_histogram) if n == 0]
    lines = [
        "",
        f"## Data-free: {d.method}",
        "",
        f"{d.iterations} generator iterations, {d.student_steps} student steps each, batch {d.batch_size}. "
        f"On {d.generated_samples} fresh generated images the student agrees with the teacher on "
        f"{d.agreement_on_generated:.2f}%. Samples per class: `{d.samples_artifact}`.",
        "",
        "Teacher's classes over the generated images (a collapsed generator puts most in a few):",
        "",
        "| class | " + " | ".join(str(c) for c in range(len(d.class_histogram))) + " |",
        "|---" + "|---:" * len(d.class_histogram) + "|",
        "| share % | " + " | ".join(f"{100 * n / total:.1f}" for n in d.class_histogram) + " |",
    ]
    if empty:
        lines += ["", f"**No generated image was classed as {', '.join(empty)}.**"]
    return lines
