"""The search stage: the search's trials, then the plan the shipped student trains with.

Like pick_student, it runs before the student is built and stores the plan
again: with the chosen values, student and loss methods in place and the
trials table (``search_result``), so the final run is an ordinary job on the
whole training split (checkpointed, resumed, retried) and a resumed job does
not search again. The trials live in an Optuna journal in the workdir: a
server restart mid-search goes on from the ended ones.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from google.protobuf import json_format

from distill import search
from protos.distillery.v1 import distillery_pb2 as pb
from service import specs, student_pick, students
from service.errors import FailedPrecondition
from service.job_context import JobContext
from service.job_inputs import JobInputs

log = logging.getLogger("distillery.worker")


def run(ctx: JobContext, plan: specs.JobPlan, inputs: JobInputs) -> specs.JobPlan:
    """``plan`` as the chosen trial ran it, with ``search_result`` filled in (and stored)."""
    config = plan.search
    assert config is not None
    latency, where = None, ""
    if plan.search_latency is not None:
        where = plan.search_latency.describe()
        ctx.stage("search", f"timing the {len(config.students)} students untrained ({where})")
        table, _ = student_pick.time_candidates(ctx, plan, inputs, config.students, plan.search_latency,
                                                with_teacher=False)
        untimed = [row for row in table if not row.p50_ms]
        if untimed:
            raise FailedPrecondition(f"search.latency: {untimed[0].architecture} could not be timed "
                                     f"({untimed[0].note or 'no measurement'}); drop it from search.students")
        latency = {row.architecture: row.p50_ms for row in table}

    def heard(trial: search.Trial, best: search.Trial | None, ended: int) -> None:
        leader = f"; best so far: trial {best.number} ({best.held_out_top1:.2f})" if best else ""
        ctx.stage("search", f"search trial {trial.number} ({describe(trial)}): {_outcome(trial)}; "
                            f"{ended} of {config.trials} ended{leader}",
                  metrics={"trial": ended, "trials": config.trials,
                           **({"best_held_out_top1": best.held_out_top1 or 0.0} if best else {})},
                  done=ended / config.trials)

    # As many trials at once as the server has job slots free (--max-concurrent-jobs): held until the search ends.
    parallel = ctx.store.claim_slots(ctx.job_id, config.trials, ctx.config.max_concurrent_jobs)
    what = [*(f"{len(c)} {n}" for n, c in (("students", config.students), ("methods", config.methods)) if c),
            *(p.name for p in config.parameters)]
    ctx.stage("search", f"search: {config.trials} trials over {', '.join(what)}, {parallel} at a time"
                        + (f", at most {config.max_minutes:g} minutes" if config.max_minutes else ""))
    # Trials build each chosen student; else each trains a copy of the job's (its pretrained start, or your module).
    student = config.students[0] if config.students else students.new_model(ctx, plan, inputs)[0]
    job = students.engine_job(plan, inputs, student)
    try:
        with ctx.stop.at_step_boundaries():  # a drain stops the running trials at a step; they run again after it
            result = search.run(job, config, ctx.workdir / "search", on_trial=heard, latency_ms=latency,
                                parallel=parallel, stop_requested=ctx.stop)
    finally:
        ctx.store.release_slots(ctx.job_id)

    best = result.best
    summary = pb.SearchSummary(chosen_trial=best.number, train_samples=result.train_samples,
                               held_out_samples=result.held_out_samples, latency=where)
    for t in result.trials:
        summary.trials.add(number=t.number, params=t.params, held_out_top1=t.held_out_top1 or 0.0, seconds=t.seconds,
                           state=t.state, note=t.note, choices=t.choices, p50_ms=t.p50_ms or 0.0, pareto=t.pareto)
    summary.reason = (f"{result.reason} on the {result.held_out_samples} held-out training images; its choices "
                      f"({describe(best)}) then trained the shipped student on the whole training split for "
                      f"{plan.training.epochs} epochs, and only that student met the validation split")
    log.info("search chose: %s", summary.reason)
    ctx.stage("search", f"trial {best.number} chosen ({describe(best)}): it trains the student on the whole split",
              done=1.0)
    chosen = replace(
        plan,
        student_architecture=best.choices.get(search.STUDENT, plan.student_architecture),
        methods=list(search.chosen_methods(tuple(plan.methods), best)),
        training=search.chosen_training(plan.training, best),
        search_result=json_format.MessageToJson(summary),
    )
    ctx.store.set_plan(ctx.job_id, specs.plan_to_json(chosen))
    return chosen


def describe(trial: search.Trial) -> str:
    """A trial's choices and values in one line: "student=resnet8_cifar, kd.temperature=3.2"."""
    return ", ".join([*(f"{k}={v}" for k, v in trial.choices.items()), *(f"{k}={v:.4g}" for k, v in trial.params.items())])


def _outcome(trial: search.Trial) -> str:
    if trial.state == "failed":
        return f"failed: {trial.note}"
    score = f"held-out top-1 {trial.held_out_top1:.2f}" + (f", p50 {trial.p50_ms:.3f} ms" if trial.p50_ms else "")
    return f"pruned at {score} ({trial.note})" if trial.state == "pruned" else score
