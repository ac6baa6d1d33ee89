"""report.html: one self-contained file a person opens in a browser.

The same tables as report.md (built by ``service.report``) plus two plots
drawn by matplotlib and inlined as SVG: p50 latency against batch size for
every variant, and accuracy against latency with each variant a point. No
scripts, no external files: it survives being attached to an email.
"""

from __future__ import annotations

import html
import io

from protos.distillery.v1 import distillery_pb2 as pb
from service import report as report_format

_STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { font-size: 1.15em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
.summary { font-size: 1.3em; font-weight: 600; margin: 0.6em 0; }
.muted { color: #666; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 0.6em 0; font-variant-numeric: tabular-nums; }
th, td { padding: 0.25em 0.6em; border-bottom: 1px solid #eee; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
td.text { white-space: normal; text-align: left; font-size: 0.9em; }
th { background: #f4f4f4; }
tr.worse td { background: #fff3f0; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; }
.plots figure { margin: 0; flex: 1 1 480px; }
.plots svg { width: 100%; height: auto; }
figcaption { color: #555; font-size: 0.9em; }
"""


def to_html(report: pb.Report) -> str:
    title = f"Distillation report: job {report.job_id}"
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="muted">{html.escape(report.teacher.architecture)} (teacher) vs '
        f"{html.escape(report.student.architecture)} (student), "
        f"input {'x'.join(map(str, report.teacher.input_shape))}</p>",
        f'<p class="summary">{html.escape(report.summary)}</p>',
        f"<p>{html.escape(report_format.best_latency_line(report))}</p>",
    ]
    plots = _plots(report)
    if plots:
        parts += ['<div class="plots">'] + plots + ["</div>"]
    parts += ["<h2>Side by side</h2>", _table(report_format.variant_rows(report))]
    parts += [
        "<h2>p50 latency (ms)</h2>",
        '<p class="muted">Per call; in brackets the speedup against the teacher at the same batch size. '
        f"{html.escape(report_format.SPEEDUP_NOTE)}</p>",
        _table(report_format.speed_rows(report)),
    ]
    parts += ["<h2>Latency detail (ms)</h2>", _table(report_format.latency_rows(report))]
    if report.per_class:
        rows = report_format.per_class_rows(report)
        worse = {i + 1 for i, c in enumerate(report.per_class) if c.student_top1 < c.teacher_top1}
        parts += [
            "<h2>Per class (top-1 on the validation split)</h2>",
            '<p class="muted">Shaded: classes where the student is less accurate than the teacher.</p>',
            _table(rows, highlight=worse),
        ]
    if report.training.specialists:
        parts += ["<h2>Specialists</h2>", f"<p>{html.escape(report_format.specialists_line(report.training))}</p>",
                  _table(report_format.specialist_rows(report.training))]
    if report.HasField("data_free"):
        d = report.data_free
        total = max(1, sum(d.class_histogram))
        parts += [
            f"<h2>Data-free: {html.escape(d.method)}</h2>",
            f"<p>{html.escape(report_format.data_free_summary_line(d))} "
            f"Samples per class: <code>{html.escape(d.samples_artifact)}</code>.</p>",
            _table(
                [
                    ["class"] + [str(c) for c in range(len(d.class_histogram))],
                    ["teacher's share %"] + [f"{100 * n / total:.1f}" for n in d.class_histogram],
                ]
            ),
        ]
        if d.recipe:
            parts.append(f"<p>Recipe for this teacher: {html.escape(d.recipe)}.</p>")
        if d.interventions:
            parts.append("<p>When classes vanished from the generator's images during training:</p><ul>")
            parts += [f"<li>{html.escape(event)}</li>" for event in d.interventions]
            parts.append("</ul>")
    if report.HasField("student_pick"):
        pick = report.student_pick
        parts += [f"<h2>Student picked for {html.escape(pick.budget)}</h2>", f"<p>{html.escape(pick.reason)}.</p>",
                  _table(report_format.student_pick_rows(pick))]
    if report.HasField("search"):
        parts += ["<h2>Search</h2>", f"<p>{html.escape(report_format.search_line(report.search))}.</p>",
                  _search_plot(report.search), _table(report_format.search_rows(report.search))]
    parts += ["<h2>How it was made</h2>", "<ul>"]
    parts += [f"<li>{html.escape(line)}</li>" for line in report_format.how_it_was_made(report)]
    parts += ["</ul>", "</body></html>", ""]
    return "\n".join(parts)


def _table(rows: list[list[str]], highlight: set[int] = frozenset()) -> str:
    header, *body = rows
    out = ['<div class="scroll"><table><thead><tr>' + "".join(f"<th>{html.escape(c)}</th>" for c in header) + "</tr></thead><tbody>"]
    for i, row in enumerate(body, start=1):
        css = ' class="worse"' if i in highlight else ""
        out.append(f"<tr{css}>" + "".join(_cell(c, first=j == 0) for j, c in enumerate(row)) + "</tr>")
    out.append("</tbody></table></div>")
    return "\n".join(out)


def _cell(text: str, first: bool) -> str:
    # Prose (a variant's note) wraps; numbers and names stay on one line.
    css = ' class="text"' if not first and len(text) > 24 else ""
    return f"<td{css}>{html.escape(text)}</td>"


def _plots(report: pb.Report) -> list[str]:
    timed = [v for v in report.variants if v.latency]
    if not timed:
        return []
    plt = _pyplot()
    from matplotlib.ticker import FuncFormatter, NullFormatter

    def plain_log_ticks(axis) -> None:  # noqa: ANN001 (a matplotlib Axis)
        """Log-scale ticks read as 0.05, 0.1, 1 rather than 10^-1 and crowded minor labels."""
        axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axis.set_minor_formatter(NullFormatter())

    figures = []
    with plt.rc_context({"svg.hashsalt": "distillery", "font.size": 10}):  # stable ids: same report, same file
        fig, ax = plt.subplots(figsize=(5.4, 3.6))
        color = {v.name: f"C{i}" for i, v in enumerate(timed)}  # a variant has one colour in both plots
        for v in timed:
            ax.plot([lat.batch_size for lat in v.latency], [lat.p50_ms for lat in v.latency], marker="o", label=v.name,
                    color=color[v.name])
        ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="p50 latency per call (ms)")
        batch_sizes = sorted({lat.batch_size for v in timed for lat in v.latency})
        ax.set_xticks(batch_sizes, [str(b) for b in batch_sizes])
        ax.xaxis.set_minor_formatter(NullFormatter())
        plain_log_ticks(ax.yaxis)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        figures.append(_figure(fig, "Latency by batch size (log scales; lower is faster)."))
        plt.close(fig)

        batch = min(lat.batch_size for v in timed for lat in v.latency)
        points = [(v, lat) for v in timed if v.HasField("accuracy") and (lat := report_format.latency_at(v, batch))]
        if points:  # without labelled data there is no accuracy axis to draw
            fig, ax = plt.subplots(figsize=(5.4, 3.6))
            for v, lat in points:  # a legend, not labels by the points: close variants' labels overlap
                ax.scatter([lat.p50_ms], [v.accuracy.top1], s=60, zorder=3, color=color[v.name], label=v.name)
            ax.legend(fontsize=8)
            ax.set(xscale="log", xlabel=f"p50 latency at batch {batch} (ms)", ylabel="top-1 %")
            plain_log_ticks(ax.xaxis)
            ax.grid(True, alpha=0.3)
            ax.margins(x=0.3, y=0.2)
            figures.append(_figure(fig, f"Accuracy against latency at batch {batch}: up and to the left is better."))
            plt.close(fig)
    return figures


def _search_plot(s: pb.SearchSummary) -> str:
    """The trials: held-out top-1 by trial, or with two objectives against p50 with the Pareto front drawn."""
    plt = _pyplot()
    scored = [t for t in s.trials if t.state != "failed"]
    with plt.rc_context({"svg.hashsalt": "distillery", "font.size": 10}):
        fig, ax = plt.subplots(figsize=(5.4, 3.6))
        if s.latency:
            for state, marker in (("complete", "o"), ("pruned", "x")):
                group = [t for t in scored if t.state == state and not t.pareto]
                ax.scatter([t.p50_ms for t in group], [t.held_out_top1 for t in group], marker=marker, color="C7",
                           label="trial" if state == "complete" else "pruned")
            front = sorted((t for t in scored if t.pareto), key=lambda t: t.p50_ms)
            ax.plot([t.p50_ms for t in front], [t.held_out_top1 for t in front], marker="o", color="C0",
                    drawstyle="steps-post", label="Pareto front")
            x, caption = (lambda t: t.p50_ms), f"Trials: held-out top-1 against {s.latency} (ms); up and to the left is better."
            ax.set(xlabel=f"{s.latency} (ms)")
        else:
            for state, marker in (("complete", "o"), ("pruned", "x")):
                group = [t for t in scored if t.state == state]
                ax.scatter([t.number for t in group], [t.held_out_top1 for t in group], marker=marker,
                           color="C0" if state == "complete" else "C7", label="trial" if state == "complete" else "pruned (where it stopped)")
            x, caption = (lambda t: t.number), "Trials in the order they ran: held-out top-1."
            ax.set(xlabel="trial")
            ax.xaxis.get_major_locator().set_params(integer=True)
        chosen = [t for t in scored if t.number == s.chosen_trial]
        ax.scatter([x(t) for t in chosen], [t.held_out_top1 for t in chosen], s=160, facecolors="none",
                   edgecolors="C3", linewidths=2, label="chosen", zorder=3)
        ax.set(ylabel="held-out top-1 %")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        figure = _figure(fig, caption)
        plt.close(fig)
    return figure


def _pyplot():  # noqa: ANN202 (matplotlib.pyplot, imported late: only reports with plots load it)
    import matplotlib

    matplotlib.use("Agg")  # no display; also keeps a server's worker from opening windows
    from matplotlib import pyplot as plt

    return plt


def _figure(fig: object, caption: str) -> str:
    buffer = io.StringIO()
    fig.tight_layout()  # type: ignore[attr-defined]
    fig.savefig(buffer, format="svg", metadata={"Date": None})  # type: ignore[attr-defined]  # no timestamp: same report, same bytes
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg") :]  # drop the XML prolog and DOCTYPE: inline SVG takes neither
    return f"<figure>{svg}<figcaption>{html.escape(caption)}</figcaption></figure>"
