"""The report: what is derived from the measurements, the one-line summary, and Markdown.

report.json is the Report proto's JSON form (one schema for pipelines). The
worker fills in measurements; ``finish`` computes everything derived from
them (speedups, accuracy deltas, the student's best runtime and batch size,
the summary) once, so Markdown, HTML and pipelines read the same numbers.
"""

from __future__ import annotations

from distill.datafree import judge_data_free
from distill.evaluate import near_chance
from protos.distillery.v1 import distillery_pb2 as pb

# A student this far below its teacher is not one to take, however fast.
FAR_BELOW_TEACHER_POINTS = 10.0


def finish(report: pb.Report) -> pb.Report:
    """Fill the derived fields of a report whose measurements are in place."""
    teacher = teacher_variant(report)
    in_pytorch = next((t for t in report.variants if t.model == "teacher" and t.runtime == "pytorch"), None)
    for v in report.variants:
        if teacher is not None and teacher.HasField("accuracy") and v.HasField("accuracy"):
            v.top1_delta_vs_teacher = v.accuracy.top1 - teacher.accuracy.top1
        # Like for like: the teacher in this variant's runtime and execution provider when it ran there.
        baseline = next((t for t in report.variants if t.model == "teacher" and t.runtime == v.runtime
                         and t.execution_provider == v.execution_provider), teacher)
        if baseline is not None:
            v.speedup_baseline = baseline.name
        for lat in v.latency:
            base = latency_at(baseline, lat.batch_size) if baseline is not None else None
            if base is not None and lat.p50_ms > 0:
                lat.speedup_vs_teacher = base.p50_ms / lat.p50_ms
            cross = latency_at(in_pytorch, lat.batch_size) if in_pytorch is not None else None
            if cross is not None and lat.p50_ms > 0 and baseline is not in_pytorch:
                lat.speedup_vs_teacher_pytorch = cross.p50_ms / lat.p50_ms
    _judge_precisions(report)
    _judge_students(report)
    # The picks (and the summary) speak only of variants a user may take.
    timed = [(v, lat) for v in report.variants if v.model == "student" and v.recommended for lat in v.latency]
    if timed:
        smallest = min(lat.batch_size for _, lat in timed)
        v, lat = min(((v, lat) for v, lat in timed if lat.batch_size == smallest), key=lambda pair: pair[1].p50_ms)
        report.student_lowest_latency.CopyFrom(_pick(v, lat))
        v, lat = max(timed, key=lambda pair: pair[1].throughput_per_s)
        report.student_highest_throughput.CopyFrom(_pick(v, lat))
    report.summary = summary(report)
    return report


def _judge_precisions(report: pb.Report) -> None:
    """A reduced-precision student is recommended only within the accuracy budget of the FP32 student."""
    budget = report.export.accuracy_budget if report.HasField("export") else 1.0
    reference = next((v for v in report.variants if v.model == "student" and v.precision == "fp32"), None)
    for v in report.variants:
        v.recommended = True
        if v.HasField("parity") and v.precision == "fp32" and not v.parity.within_tolerance:
            # The FP32 file passed this check at export; another runtime or device running it may not.
            v.recommended = False
            v.note = f"not within parity of the PyTorch student: {parity_words(report, v.parity)}"
            continue
        if v.model != "student" or v.precision == "fp32" or reference is None:
            continue
        if not (v.HasField("accuracy") and reference.HasField("accuracy")):
            v.recommended = False
            v.note = "not checked against the accuracy budget: no labelled data"
            continue
        loss = reference.accuracy.top1 - v.accuracy.top1
        v.recommended = loss <= budget
        v.note = (
            f"{'within' if v.recommended else 'over'} the {budget:g}-point budget: "
            f"{abs(loss):.2f} points {'below' if loss >= 0 else 'above'} the FP32 student"
        )
        same_runtime = next((r for r in report.variants if r.model == "student" and r.runtime == v.runtime
                             and r.precision == "fp32" and r.execution_provider == v.execution_provider), None)
        paired = [(lat, latency_at(same_runtime, lat.batch_size)) for lat in v.latency] if same_runtime else []
        if paired and all(base is not None and lat.p50_ms > base.p50_ms for lat, base in paired):
            # Tiny convolutions spend more on quantizing activations than they save: no reason to take it.
            v.recommended = False
            v.note += "; slower than the FP32 file at every batch size measured"


def parity_words(report: pb.Report, parity: pb.Parity) -> str:
    e = report.export
    return (
        f"max |diff| {parity.max_abs_diff:.2e} (relative {parity.max_rel_diff:.2e}; tolerance "
        f"{e.parity_tolerance:.0e} + {e.parity_relative_tolerance:.0e} x |logit|), top-1 differs on "
        f"{parity.top1_mismatch:.2f}% of {parity.samples}"
    )


def _judge_students(report: pb.Report) -> None:
    """No student near chance, far below its teacher, or from a collapsed data-free run is recommended."""
    teacher = teacher_variant(report)
    classes = report.teacher.num_classes
    for v in report.variants:
        if v.model != "student":
            continue
        why = ""
        if v.HasField("accuracy") and classes > 1 and near_chance(v.accuracy.top1, classes):
            why = f"near chance: {v.accuracy.top1:.2f}% top-1 with {classes} classes"
        elif v.HasField("accuracy") and teacher is not None and teacher.HasField("accuracy"):
            gap = teacher.accuracy.top1 - v.accuracy.top1
            if gap > FAR_BELOW_TEACHER_POINTS:
                why = f"{gap:.2f} points below the teacher (more than {FAR_BELOW_TEACHER_POINTS:g})"
        elif not v.HasField("accuracy") and report.HasField("data_free"):
            why = judge_data_free(list(report.data_free.class_histogram), report.data_free.agreement_on_generated)
        if why:
            v.recommended = False
            v.note = f"{why}; {v.note}" if v.note else why


def data_free_failure(report: pb.Report) -> str:
    """Why a data-free job must end FAILED rather than ship its student; "" when it may succeed.

    Labels decide when the job has them (the FP32 student near chance); without
    them, the generator's images do (``judge_data_free``). A student far below its
    teacher but above chance is only not recommended, as after KD.
    """
    student = next((v for v in report.variants if v.model == "student"), None)
    classes = report.teacher.num_classes
    if student is not None and student.HasField("accuracy"):
        if classes > 1 and near_chance(student.accuracy.top1, classes):
            return (
                f"the student scores {student.accuracy.top1:.2f}% top-1 on {student.accuracy.samples} validation "
                f"images, near chance ({100 / classes:.0f}% for {classes} classes): it did not learn the teacher"
            )
        return ""
    d = report.data_free
    return judge_data_free(list(d.class_histogram), d.agreement_on_generated)


def _pick(v: pb.Variant, lat: pb.Latency) -> pb.LatencyPick:
    return pb.LatencyPick(
        variant=v.name, runtime=v.runtime, batch_size=lat.batch_size, p50_ms=lat.p50_ms, throughput_per_s=lat.throughput_per_s
    )


def teacher_variant(report: pb.Report) -> pb.Variant | None:
    return next((v for v in report.variants if v.model == "teacher"), None)


def latency_at(variant: pb.Variant, batch_size: int) -> pb.Latency | None:
    return next((lat for lat in variant.latency if lat.batch_size == batch_size), None)


def summary(report: pb.Report) -> str:
    """"student is 2.1x faster than the teacher in onnxruntime at batch 1 (student / onnxruntime; 8.0x against
    teacher / pytorch), 0.30 points less accurate (top-1)": the speedup is same-runtime wherever the teacher ran there.

    When no student variant may be taken, the line says why first: its accuracy, not its speed.
    """
    if not report.HasField("student_lowest_latency"):
        rejected = [v for v in report.variants if v.model == "student" and not v.recommended and v.note]
        if not rejected:
            return ""
        first = next((v for v in rejected if v.precision == "fp32"), rejected[0])
        return f"no student variant is recommended ({first.name}: {first.note})"
    pick = report.student_lowest_latency
    fastest = next(v for v in report.variants if v.name == pick.variant)
    timed = latency_at(fastest, pick.batch_size)
    speed_words = _times(timed.speedup_vs_teacher)
    baseline = next((v for v in report.variants if v.name == fastest.speedup_baseline), None)
    if baseline is not None and baseline.runtime == fastest.runtime:
        also = (f"; {_times(timed.speedup_vs_teacher_pytorch)} than teacher / pytorch"
                if timed.HasField("speedup_vs_teacher_pytorch") else "")
        speed_words = (f"{speed_words} than the teacher in {fastest.runtime} at batch {pick.batch_size} "
                       f"({pick.variant}{also})")
    else:  # the teacher could not run in the student's runtime: say that the runtimes differ
        speed_words = (f"{speed_words} at batch {pick.batch_size} ({pick.variant} against "
                       f"{fastest.speedup_baseline}: different runtimes)")
    if not fastest.HasField("top1_delta_vs_teacher"):
        if report.HasField("data_free"):
            accuracy_words = (
                f"agrees with the teacher on {report.data_free.agreement_on_generated:.1f}% of generated images "
                "(no labelled data: accuracy not measured)"
            )
        else:
            accuracy_words = "accuracy not measured (no labelled data)"
    else:
        delta = fastest.top1_delta_vs_teacher
        accuracy_words = (
            f"{abs(delta):.2f} points {'less' if delta < 0 else 'more'} accurate (top-1)"
            if abs(delta) >= 0.005
            else "as accurate (top-1)"
        )
    return f"student is {speed_words}, {accuracy_words}"


def _times(speedup: float) -> str:
    return f"{speedup:.1f}x faster" if speedup >= 1 else f"{1 / speedup:.1f}x slower"


def best_latency_line(report: pb.Report) -> str:
    """Which runtime and batch size give the student's best latency and throughput."""
    if not report.HasField("student_lowest_latency"):
        return ""
    low, high = report.student_lowest_latency, report.student_highest_throughput
    return (
        f"Lowest student latency: {low.variant} at batch {low.batch_size}, {low.p50_ms:.3f} ms p50. "
        f"Highest student throughput: {high.variant} at batch {high.batch_size}, "
        f"{high.throughput_per_s:,.0f} samples/s."
    )


def size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def count(n: int) -> str:
    if n == 0:
        return "-"  # not counted (an ONNX graph whose sizes shape inference cannot work out)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def variant_rows(report: pb.Report) -> list[list[str]]:
    """Accuracy and size of every variant, side by side."""
    rows = [["variant", "top-1 %", "Δ top-1", "top-5 %", "agreement %", "params", "MACs", "file", "recommended"]]
    for v in report.variants:
        if v.HasField("accuracy"):
            a = v.accuracy
            cells = [
                v.name,
                f"{a.top1:.2f}",
                f"{v.top1_delta_vs_teacher:+.2f}" if v.model != "teacher" else "",
                f"{a.top5:.2f}" if a.HasField("top5") else "-",
                f"{a.agreement_with_teacher:.2f}",
            ]
        else:
            cells = [v.name, "-", "-", "-", "-"]
        verdict = ("yes" if v.recommended else "NO") + (f" ({v.note})" if v.note else "")
        rows.append(cells + [count(v.parameters), count(v.macs), size(v.file_size_bytes), verdict if v.model == "student" else ""])
    return rows


SPEEDUP_NOTE = (
    "Speedups are against the teacher in the same runtime (teacher / onnxruntime for onnxruntime variants) "
    "wherever the teacher could run there, else against teacher / pytorch."
)


def speed_rows(report: pb.Report) -> list[list[str]]:
    """p50 ms of every variant per batch size, with the speedup over the teacher at that batch size."""
    batch_sizes = sorted({lat.batch_size for v in report.variants for lat in v.latency})
    rows = [["variant"] + [f"batch {b}" for b in batch_sizes]]
    for v in report.variants:
        cells = [v.name]
        for b in batch_sizes:
            lat = latency_at(v, b)
            if lat is None:
                cells.append("-")
            elif v.model == "teacher" or not lat.HasField("speedup_vs_teacher"):
                cells.append(f"{lat.p50_ms:.3f}")
            else:
                cells.append(f"{lat.p50_ms:.3f} ({lat.speedup_vs_teacher:.1f}x)")
        rows.append(cells)
    return rows


def latency_rows(report: pb.Report) -> list[list[str]]:
    rows = [["variant", "batch", "runs", "p50", "p90", "p95", "p99", "mean", "stdev", "samples/s", "peak memory"]]
    for v in report.variants:
        for lat in v.latency:
            rows.append(
                [v.name, str(lat.batch_size), str(lat.runs)]
                + [f"{x:.3f}" for x in (lat.p50_ms, lat.p90_ms, lat.p95_ms, lat.p99_ms, lat.mean_ms, lat.stdev_ms)]
                + [f"{lat.throughput_per_s:,.0f}", size(lat.peak_memory_bytes) if lat.HasField("peak_memory_bytes") else "-"]
            )
    return rows


def search_line(s: pb.SearchSummary) -> str:
    objectives = f"two objectives, held-out top-1 and {s.latency}" if s.latency else "one objective, held-out top-1"
    return (f"{len(s.trials)} trials ({objectives}), each trained on {s.train_samples} training images and scored on "
            f"the {s.held_out_samples} held out; {s.reason}")


def search_rows(s: pb.SearchSummary) -> list[list[str]]:
    choices = sorted({name for t in s.trials for name in t.choices})
    names = sorted({name for t in s.trials for name in t.params})
    latency = ["p50 ms", "Pareto"] if s.latency else []
    rows = [["trial", *choices, *names, "held-out top-1", *latency, "time", "state"]]
    for t in s.trials:
        state = "chosen" if t.number == s.chosen_trial else (t.state if not t.note else f"{t.state}: {t.note}")
        rows.append([str(t.number), *(t.choices.get(n, "-") for n in choices),
                     *(f"{t.params[n]:.4g}" if n in t.params else "-" for n in names),
                     f"{t.held_out_top1:.2f}" if t.state != "failed" else "-",
                     *([f"{t.p50_ms:.3f}" if t.p50_ms else "-", "yes" if t.pareto else ""] if s.latency else []),
                     f"{t.seconds:.0f} s", state])
    return rows


def student_pick_rows(pick: pb.StudentPick) -> list[list[str]]:
    rows = [["candidate", "parameters", "MACs", "p50 ms (untrained, exported)", "fits", "note"]]
    for c in pick.candidates:
        rows.append([c.architecture, count(c.parameters), count(c.macs),
                     f"{c.p50_ms:.3f}" if c.p50_ms else "-", "yes" if c.fits else "no",
                     "trained" if c.architecture == pick.chosen else c.note])
    if pick.teacher_p50_ms:
        rows.append(["(teacher)", "", "", f"{pick.teacher_p50_ms:.3f}", "", "the speedup's baseline"])
    return rows


def specialists_line(t: pb.TrainingSummary) -> str:
    alone = (f" The generalist alone: {t.generalist_top1:.2f}% top-1 on the validation split; the ensemble's is the "
             "student's." if t.HasField("generalist_top1") else "")
    return (f"The student is the generalist and {len(t.specialists)} specialists, one model (one ONNX graph) that "
            f"costs {len(t.specialists) + 1} networks per call. The generalist's top classes call in the "
            "specialists whose groups hold one; each says how likely its classes are, the rest going to its "
            f"dustbin, and the answer is the distribution closest to all of them.{alone}")


def specialist_rows(t: pb.TrainingSummary) -> list[list[str]]:
    rows = [["specialist", "classes (the rest: its dustbin)", "training images"]]
    for number, s in enumerate(t.specialists, 1):
        rows.append([str(number), ", ".join(s.classes), str(s.train_samples)])
    return rows


def per_class_rows(report: pb.Report) -> list[list[str]]:
    rows = [["class", "samples", "teacher top-1 %", "student top-1 %", "Δ"]]
    for c in report.per_class:
        delta = c.student_top1 - c.teacher_top1
        rows.append([c.name, str(c.samples), f"{c.teacher_top1:.2f}", f"{c.student_top1:.2f}", f"{delta:+.2f}"])
    return rows


def how_it_was_made(report: pb.Report) -> list[str]:
    """Bullet points: method, what accuracy was measured on, export, environment."""
    t, e, env = report.training, report.export, report.environment
    variant = teacher_variant(report)
    labelled = variant is not None and variant.HasField("accuracy")
    scored_on = variant.accuracy.samples if labelled else 0
    if report.kind == pb.JOB_KIND_BENCHMARK_ONLY:
        lines = ["Benchmark only: two uploaded models, nothing trained."]
        lines.append(
            f"Accuracy is measured on {scored_on} labelled validation samples."
            if labelled
            else "No dataset was given: latency was measured on random inputs and accuracy was not measured."
        )
    elif report.HasField("data_free"):
        lines = [
            f"Method: {t.method}; {t.steps} generator iterations on {_where(t)}, {t.wall_seconds:.1f} s; "
            f"final student L1 {t.final_loss:.4f}."
        ]
        lines.append(
            f"Accuracy is the final model's on {t.val_samples} validation samples, used for nothing else."
            if t.val_samples
            else "No labelled data was given, so there was nothing to evaluate accuracy on; "
            "agreement is measured on fresh generated images instead."
        )
    else:
        lines = [
            f"Method: {t.method}; {t.epochs} epochs, {t.steps} steps on {_where(t)}, {t.wall_seconds:.1f} s; "
            f"final-epoch loss {t.final_loss:.4f}; {t.train_samples} training and {t.val_samples} validation samples.",
            f"Training data: {t.data_loading or 'in memory'}; augmentation: {t.augmentation or 'none'} "
            "(evaluation never augments).",
            "Accuracy is the final model's on the validation split (no checkpoint was picked by it).",
        ]
    if t.HasField("pretrained"):
        p = t.pretrained
        lines.append(
            f"Student start: pretrained weights {p.model_id} ({p.tensors_loaded} tensors loaded as they were"
            + (f"; re-initialised for this job's classes: {', '.join(p.reinitialised)}" if p.reinitialised else "")
            + (f"; adapted to this job's channels: {', '.join(p.adapted)}" if p.adapted else "")
            + ")."
        )
    elif report.kind != pb.JOB_KIND_BENCHMARK_ONLY:
        lines.append("Student start: random initialisation (training.seed).")
    if report.HasField("input_convention"):
        c = report.input_convention
        lines.append(f"Input convention: {c.chosen} (mean {_floats(c.mean)}, std {_floats(c.std)}): {c.reason}.")
    if report.HasField("export"):
        lines.append(
            f"ONNX: opset {e.opset}, exported with {e.exporter}; onnxruntime matches PyTorch within "
            f"{e.parity_max_abs_diff:.2e} (relative {e.parity_max_rel_diff:.2e}; tolerance {e.parity_tolerance:.0e} "
            f"+ {e.parity_relative_tolerance:.0e} x |logit|, as numpy.allclose) on {e.parity_samples} inputs."
        )
        checked = [v for v in report.variants if v.HasField("parity")]
        if checked:
            lines.append(
                "Parity of each variant with the PyTorch student on the evaluation inputs (FP32 ones must be "
                "within the tolerance; reduced precisions answer to the accuracy budget): "
                + "; ".join(f"{v.name}: {parity_words(report, v.parity)}" for v in checked) + "."
            )
    lines.append(
        "Latency: p50 of single calls after warm-up, at least the set number of runs and seconds each; "
        "peak memory is what the calls added above the resident weights."
    )
    lines.append(
        f"Environment: {env.cpu}, {env.cpu_cores} cores, {env.num_threads} intra-op threads"
        f"{', GPU ' + env.gpu if env.gpu else ''}; {env.platform}, Python {env.python_version}, torch "
        f"{env.torch_version}, onnx {env.onnx_version}, "
        + (", ".join(f"{r.name} {r.version} ({', '.join(r.targets)})" for r in env.runtimes)
           or f"onnxruntime {env.onnxruntime_version} ({', '.join(env.execution_providers)})")  # reports from before
        + "."
    )
    return lines + list(report.notes)


def _floats(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


def _table(rows: list[list[str]]) -> list[str]:
    header, *body = rows
    align = ["---"] + ["---:"] * (len(header) - 1)
    return ["| " + " | ".join(r) + " |" for r in (header, align, *body)]


def to_markdown(report: pb.Report) -> str:
    """The teacher-vs-student tables for pull requests and chat (report.html has the same and plots)."""
    lines = [f"# Distillation report: job {report.job_id}", "", f"**{report.summary}**", ""]
    if report.HasField("student_lowest_latency"):
        lines += [best_latency_line(report), ""]
    lines += ["## Side by side", ""] + _table(variant_rows(report))
    lines += ["", "## p50 latency (ms; speedup against the teacher at the same batch size)", "", SPEEDUP_NOTE, ""]
    lines += _table(speed_rows(report))
    lines += ["", "## Latency detail (ms)", ""] + _table(latency_rows(report))
    if report.per_class:
        lines += ["", "## Per class (top-1 on the validation split)", ""] + _table(per_class_rows(report))
    if report.training.specialists:
        lines += ["", "## Specialists", "", specialists_line(report.training), ""]
        lines += _table(specialist_rows(report.training))
    if report.HasField("data_free"):
        lines += _data_free_section(report.data_free)
    if report.HasField("student_pick"):
        lines += ["", f"## Student picked for {report.student_pick.budget}", "", f"{report.student_pick.reason}.", ""]
        lines += _table(student_pick_rows(report.student_pick))
    if report.HasField("search"):
        lines += ["", "## Search", "", f"{search_line(report.search)}.", ""] + _table(search_rows(report.search))
    lines += ["", "## How it was made", ""] + [f"- {line}" for line in how_it_was_made(report)] + [""]
    return "\n".join(lines)


def data_free_summary_line(d: pb.DataFreeSummary) -> str:
    replayed = f" and {d.replay_steps} on replayed ones" if d.replay_steps else ""
    return (
        f"{d.iterations} generator iterations, each followed by {d.student_steps} student steps on fresh images"
        f"{replayed}; batch {d.batch_size}. On {d.generated_samples} fresh generated images the student agrees "
        f"with the teacher on {d.agreement_on_generated:.2f}%; the teacher's mean top-1 probability on them is "
        f"{d.teacher_confidence_on_generated:.1f}% (near 100 on real data; low: the images sit between its classes)."
    )


def _data_free_section(d: pb.DataFreeSummary) -> list[str]:
    """The generator's health: which classes the teacher sees in its images."""
    total = max(1, sum(d.class_histogram))
    empty = [str(c) for c, n in enumerate(d.class_histogram) if n == 0]
    lines = [
        "",
        f"## Data-free: {d.method}",
        "",
        data_free_summary_line(d) + f" Samples per class: `{d.samples_artifact}`."
        + (f" Teacher BatchNorm: {d.batchnorm}." if d.batchnorm else ""),
        "",
        "Teacher's classes over the generated images (a collapsed generator puts most in a few):",
        "",
    ]
    lines += _table(
        [
            ["class"] + [str(c) for c in range(len(d.class_histogram))],
            ["share %"] + [f"{100 * n / total:.1f}" for n in d.class_histogram],
        ]
    )
    if empty:
        lines += ["", f"**No generated image was classed as {', '.join(empty)}.**"]
    if d.recipe:
        lines += ["", f"Recipe for this teacher: {d.recipe}."]
    if d.interventions:
        lines += ["", "When classes vanished from the generator's images during training:", ""]
        lines += [f"- {event}" for event in d.interventions]
    return lines


def _where(t: pb.TrainingSummary) -> str:
    """cpu; or "2 cpu processes (torch.distributed)" for a distributed job."""
    return f"{t.processes} {t.device} processes (torch.distributed)" if t.processes > 1 else t.device
