"""Search: Optuna over a job's values, students and loss methods, each trial one ``engine.run``, scored on held-out data.

Honest selection: the training split is cut once (seeded) into what the trials
train on and a held-out part they are scored on. The validation split is
never seen by the search. What a search finds is a choice: ``with_values(job,
result.best)`` is the job to train on the whole split for the full budget
(trials may be shorter, ``trial_epochs``); the service ships that run's
student, scored on the validation split once like any job's.

One objective (held-out top-1): Optuna's TPE sampler, and a median pruner on
each trial's held-out top-1 after every epoch. Two (top-1 up, p50 latency
down; ``latency_ms`` gives each student architecture's measured p50): TPE in
its multi-objective form, no pruning (Optuna prunes single-objective studies
only); the chosen trial is the fastest on the Pareto front within
``accuracy_tolerance`` points of the most accurate trial.

With a ``folder``, the study lives in an Optuna journal file there, so a
search stopped mid-way (a server restart) goes on from its finished trials:
a trial that was running is marked failed and run again under a new number.
"""

from __future__ import annotations

import copy
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import optuna
import torch
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from torch import nn

from distill import engine, evaluate, models
from distill.data import ImageData, Splits
from distill.loop import Progress, StopFn, TrainingDivergedError
from distill.losses import MethodConfig, method
from distill.streaming import ImageFiles
from distill.trainer import TrainConfig, predict_logits

# What a search may tune: a method's parameter as "method.parameter" (kd.temperature, dkd.beta, ...), or these.
TRAINING_PARAMETERS = {"training.learning_rate": (1e-5, 10.0), "training.weight_decay": (0.0, 1.0)}
_STUDY = "search"
_STOPPED = "stopped by a restart; run again"
STUDENT, METHOD = "student", "method"  # the choices a search may make besides values


class SearchError(ValueError):
    """A parameter the job cannot take, or a split the search cannot hold part of out."""


@dataclass(frozen=True)
class Parameter:
    name: str  # "kd.temperature", "training.learning_rate", ...
    low: float
    high: float
    log: bool = False  # sample on a log scale (learning rates, temperatures)


@dataclass(frozen=True)
class SearchConfig:
    parameters: tuple[Parameter, ...] = ()
    students: tuple[str, ...] = ()  # architectures to choose among (registry or timm names); empty: the job's
    methods: tuple[str, ...] = ()  # loss choices, each "kd" or "attention+kd" (terms at weight 1); empty: the job's
    trials: int = 10  # trials wanted (complete, pruned or failed), those before a restart included
    held_out_fraction: float = 0.2  # of the training split, scored and never trained on
    seed: int = 0  # the held-out cut and the sampler
    trial_epochs: int = 0  # each trial's epochs; 0: the job's
    max_minutes: float = 0.0  # no trial starts once the trials so far took this long; 0: no time budget
    prune: bool = True  # single objective: stop a trial whose held-out top-1 falls below the median at that epoch
    accuracy_tolerance: float = 1.0  # two objectives: top-1 points traded for speed at most

    def __post_init__(self) -> None:
        if not (self.parameters or len(self.students) > 1 or len(self.methods) > 1):
            raise SearchError("a search needs a parameter to tune, or two or more students or methods to choose among")
        if not 1 <= self.trials <= 1000:
            raise SearchError("trials must be 1..1000")
        if not 0.01 <= self.held_out_fraction <= 0.5:
            raise SearchError("held_out_fraction must be in [0.01, 0.5]")
        if not 0 <= self.trial_epochs <= 10_000:
            raise SearchError("trial_epochs must be 0..10000 (0: the job's epochs)")
        if not (0 <= self.max_minutes <= 7 * 24 * 60 and 0 <= self.accuracy_tolerance <= 100):
            raise SearchError("max_minutes must be 0..10080 and accuracy_tolerance 0..100")
        for p in self.parameters:
            if not (math.isfinite(p.low) and math.isfinite(p.high) and p.low < p.high) or (p.log and p.low <= 0):
                raise SearchError(f"{p.name}: need low < high (and low > 0 on a log scale), got {p.low:g}..{p.high:g}")
        for name, choices in ((STUDENT, self.students), (METHOD, self.methods)):
            if len(set(choices)) != len(choices):
                raise SearchError(f"{name} choices: each once")
        for choice in self.methods:
            for name in choice.split("+"):
                method(name)  # ValueError naming the known methods


@dataclass(frozen=True)
class Trial:
    number: int
    params: dict[str, float]
    held_out_top1: float | None  # None when the trial failed; a pruned trial's: at the epoch it stopped
    seconds: float
    state: str  # "complete" | "pruned" | "failed"
    note: str = ""  # why it failed or was pruned
    choices: dict[str, str] = field(default_factory=dict)  # "student", "method": what this trial chose
    p50_ms: float | None = None  # two objectives: its student's measured latency
    pareto: bool = False  # two objectives: on the front (no trial both more accurate and faster)


@dataclass(frozen=True)
class SearchResult:
    trials: list[Trial]
    best: Trial  # what the search found: ``with_values(job, best)`` is the job to train
    reason: str  # why it is the best, in words
    train_samples: int  # what each trial trained on
    held_out_samples: int  # what each trial was scored on


def check(methods: tuple[MethodConfig, ...], config: SearchConfig) -> None:
    """SearchError unless every parameter is one a trial's loss terms have, within the bounds they accept, and every
    student is an architecture the registry (or timm) builds."""
    names = {name for choice in config.methods for name in choice.split("+")} or {m.method for m in methods}
    for p in config.parameters:
        if p.name in TRAINING_PARAMETERS:
            low, high = TRAINING_PARAMETERS[p.name]
        else:
            owner, _, name = p.name.partition(".")
            if owner not in names:
                raise SearchError(f"{p.name}: no trial has a {owner!r} loss term; they have {', '.join(sorted(names))}")
            bounds = method(owner).params.get(name)
            if bounds is None:
                raise SearchError(f"{p.name}: {owner} has no parameter {name!r}; it has {', '.join(method(owner).params)}")
            low, high = bounds.low, bounds.high
        if p.low < low or p.high > high:
            raise SearchError(f"{p.name}: {p.low:g}..{p.high:g} leaves its bounds {low:g}..{high:g}")
    for name in config.students:
        if not models.is_known(name):
            raise SearchError(f"students: {models.unknown_message(name)}")


def chosen_methods(methods: tuple[MethodConfig, ...], trial: Trial) -> tuple[MethodConfig, ...]:
    """The loss terms a trial trains with: the job's, or the method it chose, with its values set."""
    if METHOD in trial.choices:
        methods = tuple(MethodConfig(name) for name in trial.choices[METHOD].split("+"))
    return tuple(
        replace(m, params={**m.params, **{k.partition(".")[2]: v for k, v in trial.params.items() if k.partition(".")[0] == m.method}})
        for m in methods
    )


def chosen_training(training: TrainConfig, trial: Trial) -> TrainConfig:
    """The training settings a trial trains with: the job's, with the values it chose."""
    for name in ("learning_rate", "weight_decay"):
        if f"training.{name}" in trial.params:
            training = replace(training, **{name: trial.params[f"training.{name}"]})
    return training


def with_values(job: engine.Job, trial: Trial) -> engine.Job:
    """``job`` as ``trial`` ran it: its values, and the student and loss it chose."""
    return replace(job, training=chosen_training(job.training, trial), methods=chosen_methods(job.methods, trial),
                   student=trial.choices.get(STUDENT, job.student))


def split_held_out(train: ImageData | ImageFiles, fraction: float, seed: int) -> tuple[ImageData | ImageFiles, ImageData | ImageFiles]:
    """(what trials train on, what they are scored on): a seeded cut, the same on every run of the search."""
    held = max(1, round(len(train) * fraction))
    if len(train) - held < 1:
        raise SearchError(f"the training split has {len(train)} samples: too few to hold {fraction:.0%} out")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    return train.select(order[held:]), train.select(order[:held])


def run(
    job: engine.Job,
    config: SearchConfig,
    folder: Path | None = None,
    on_trial: Callable[[Trial, Trial | None, int], None] | None = None,
    latency_ms: Mapping[str, float] | None = None,
    parallel: int = 1,
    stop_requested: StopFn | None = None,
) -> SearchResult:
    """Run trials until ``config.trials`` have ended (counting a resumed search's) or ``max_minutes`` is spent.

    ``latency_ms`` (architecture: measured p50) makes latency a second objective. ``parallel`` trials run at once,
    each in a thread of this process (torch releases the GIL in its ops; the results are then not bit-reproducible:
    the trials share torch's global random state). ``on_trial(trial, best so far, trials ended so far)`` hears of each
    trial as it ends, in the caller's thread. A trial whose training fails in a way the job could not fix by other values (bad input,
    out of memory) ends the search with that error; a diverged trial is recorded as failed and the search goes on.
    ``stop_requested`` is polled after every step, as training polls it: True stops the trials (loop.Interrupted);
    they run again when the search is run again.
    """
    if job.data is None or job.data_free is not None:
        raise SearchError("a search needs labelled training data (not data-free)")
    if not isinstance(job.data.train, (ImageData, ImageFiles)):
        raise SearchError("a search holds part of the training split out: WebDataset shards cannot be cut")
    check(job.methods, config)
    if latency_ms is not None:
        if len(config.students) < 2 or any(s not in latency_ms for s in config.students):
            raise SearchError("a latency objective needs two or more students to choose among, each one timed")
    fit, held_out = split_held_out(job.data.train, config.held_out_fraction, config.seed)
    splits = Splits(fit, held_out, job.data.normalization)
    if config.trial_epochs:
        job = replace(job, training=replace(job.training, epochs=config.trial_epochs))
    study = _study(config, folder, two_objectives=latency_ms is not None, parallel=parallel)
    pruning = config.prune and latency_ms is None
    halt = threading.Event()  # trials in parallel: one failed, the others stop at their next step

    def run_one(trial: optuna.Trial) -> None:
        chosen = _suggest(trial, config, job.methods)
        student = _student(job, chosen)
        scores: list[float] = []

        def at_epoch_end(p: Progress) -> None:
            last = p.step == p.total_steps
            if p.pretraining or not (last or (pruning and p.epoch_end)):
                return
            scores.append(_held_out_top1(student, splits, job.training.device))
            if pruning and not last:
                trial.report(scores[-1], p.epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"held-out top-1 {scores[-1]:.2f} after epoch {p.epoch + 1}: below "
                                             "the median of earlier trials there")

        started = time.perf_counter()
        try:
            engine.run(replace(with_values(job, chosen), student=student, data=splits, evaluate=False),
                       on_progress=at_epoch_end,
                       stop_requested=lambda: halt.is_set() or bool(stop_requested and stop_requested()))
        except (TrainingDivergedError, optuna.TrialPruned) as e:
            trial.set_user_attr("note", str(e))
            trial.set_user_attr("seconds", time.perf_counter() - started)
            pruned = isinstance(e, optuna.TrialPruned)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED if pruned else optuna.trial.TrialState.FAIL)
        else:
            trial.set_user_attr("seconds", time.perf_counter() - started)
            name = chosen.choices.get(STUDENT, job.student)
            study.tell(trial, [scores[-1], latency_ms[name]] if latency_ms is not None else scores[-1])

    for number in _ended_trials(_Budget(study, config), run_one, parallel, halt):
        if on_trial:  # in the caller's thread, whichever thread ran the trial
            trials = _trials(study)
            ended = len([t for t in trials if t.note != _STOPPED])
            on_trial(next(t for t in trials if t.number == number), _best(trials, config)[0], ended)
    trials = _trials(study)
    best, reason = _best(trials, config)
    if best is None:
        raise SearchError(f"none of the {len(trials)} trials completed (each diverged or was pruned); narrow the ranges")
    return SearchResult(trials, best, reason, len(fit), len(held_out))


class _Budget:
    """Hands out trials while the budget lasts, to one thread or several."""

    def __init__(self, study: optuna.Study, config: SearchConfig) -> None:
        self.study, self.config = study, config
        self.lock = threading.Lock()

    def next(self) -> optuna.Trial | None:
        with self.lock:  # the count and the ask together: trials in parallel never overshoot the budget
            if _counted(self.study) >= self.config.trials or _out_of_time(self.study, self.config):
                return None
            return self.study.ask()


def _ended_trials(
    budget: _Budget, run_one: Callable[[optuna.Trial], None], parallel: int, halt: threading.Event
) -> Iterator[int]:
    """Run trials from ``budget``, ``parallel`` at a time; yields each one's number as it ends, in this thread."""
    if parallel <= 1:
        while (trial := budget.next()) is not None:
            run_one(trial)
            yield trial.number
        return
    ended: queue.Queue[int | BaseException | None] = queue.Queue()

    def work() -> None:
        try:
            while not halt.is_set() and (trial := budget.next()) is not None:
                run_one(trial)
                ended.put(trial.number)
        except BaseException as e:  # to the caller's thread, which raises it
            ended.put(e)
        finally:
            ended.put(None)

    threads = [threading.Thread(target=work, name=f"search-trials-{i}", daemon=True) for i in range(parallel)]
    for thread in threads:
        thread.start()
    try:
        running = parallel
        while running:
            item = ended.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        halt.set()  # after an error (or the caller's stop) the other trials stop at their next step


def _study(config: SearchConfig, folder: Path | None, two_objectives: bool, parallel: int) -> optuna.Study:
    """The search's study, new or as a stopped run left it (its journal in ``folder``); cut-off trials marked failed."""
    storage = None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        storage = JournalStorage(JournalFileBackend(str(folder / "study.journal")))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directions = [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE][: 1 + two_objectives]
    study = optuna.create_study(
        study_name=_STUDY, storage=storage, load_if_exists=True, directions=directions,
        # TPE handles two objectives too (MOTPE); trials in parallel see the running ones as scoring their worst
        # (constant liar), so they spread out instead of sampling the same region.
        sampler=optuna.samplers.TPESampler(seed=config.seed, constant_liar=parallel > 1),
        # From the third trial, after its second epoch: a trial is pruned below the median of the earlier ones.
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
    )
    if study.directions != directions:  # a loaded study keeps its own
        raise SearchError(f"the study in {folder} was made for other objectives; remove it to search again")
    for stale in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):  # cut off by a restart
        study._storage.set_trial_user_attr(stale._trial_id, "note", _STOPPED)
        study._storage.set_trial_state_values(stale._trial_id, optuna.trial.TrialState.FAIL)
    return study


def _suggest(trial: optuna.Trial, config: SearchConfig, methods: tuple[MethodConfig, ...]) -> Trial:
    """What this trial tries: its choices first, then the values of the loss terms it has (a conditional space)."""
    choices = {name: str(trial.suggest_categorical(name, options))
               for name, options in ((STUDENT, config.students), (METHOD, config.methods)) if options}
    terms = set(choices[METHOD].split("+")) if METHOD in choices else {m.method for m in methods}
    values = {p.name: trial.suggest_float(p.name, p.low, p.high, log=p.log) for p in config.parameters
              if p.name in TRAINING_PARAMETERS or p.name.partition(".")[0] in terms}
    return Trial(trial.number, values, None, 0.0, "running", choices=choices)


def _student(job: engine.Job, trial: Trial) -> nn.Module:
    """The trial's student, untrained: built as the engine builds it (same seed), or a copy of the job's module."""
    name = trial.choices.get(STUDENT, job.student)
    if isinstance(name, nn.Module):
        return copy.deepcopy(name)
    assert job.data is not None
    channels, size = (job.input_shape or job.data.train.input_shape)[:2]
    torch.manual_seed(job.training.seed)
    return models.build(name, len(job.data.train.classes), channels, size)


def _held_out_top1(student: nn.Module, splits: Splits, device: str) -> float:
    was_training = student.training
    student.eval()
    try:
        logits = predict_logits(student, splits.val, splits.normalization, device)  # type: ignore[arg-type]
    finally:
        student.train(was_training)
    return evaluate.accuracy(logits, splits.val.labels).top1


def _counted(study: optuna.Study) -> int:
    """Trials that count towards the budget: running or ended, not those a restart cut off (they run again).

    A trial still running when the search opened was cut off (``_study`` marked it); any running now is this run's.
    """
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    return len(running) + len([t for t in _trials(study) if t.note != _STOPPED])


def _out_of_time(study: optuna.Study, config: SearchConfig) -> bool:
    """The trials so far (a restarted search's included) took the time budget, when there is one."""
    return bool(config.max_minutes) and sum(t.seconds for t in _trials(study)) >= config.max_minutes * 60


def _trials(study: optuna.Study) -> list[Trial]:
    states = {optuna.trial.TrialState.COMPLETE: "complete", optuna.trial.TrialState.PRUNED: "pruned",
              optuna.trial.TrialState.FAIL: "failed"}
    front = {t.number for t in study.best_trials} if len(study.directions) == 2 else set()
    out = []
    for t in study.get_trials(deepcopy=False, states=tuple(states)):
        values = t.values or []
        if t.state == optuna.trial.TrialState.PRUNED and t.intermediate_values:
            values = [t.intermediate_values[max(t.intermediate_values)]]  # where it stopped
        out.append(Trial(
            t.number,
            {k: v for k, v in t.params.items() if not isinstance(v, str)},
            values[0] if values else None,
            t.user_attrs.get("seconds", 0.0),
            states[t.state],
            t.user_attrs.get("note", ""),
            choices={k: v for k, v in t.params.items() if isinstance(v, str)},
            p50_ms=values[1] if len(values) > 1 else None,
            pareto=t.number in front,
        ))
    return out


def _best(trials: list[Trial], config: SearchConfig) -> tuple[Trial | None, str]:
    """The trial to train, and why: the best held-out top-1; with two objectives, the fastest on the Pareto front
    within ``accuracy_tolerance`` points of the most accurate trial."""
    complete = [t for t in trials if t.state == "complete"]
    if not complete:
        return None, ""
    top = max(complete, key=lambda t: t.held_out_top1 or 0.0)  # the earliest of equals
    if top.p50_ms is None:
        return top, f"trial {top.number} has the best held-out top-1 ({top.held_out_top1:.2f}) of {len(complete)} complete trials"
    near = [t for t in complete if t.pareto and (t.held_out_top1 or 0.0) >= (top.held_out_top1 or 0.0) - config.accuracy_tolerance]
    chosen = min(near, key=lambda t: (t.p50_ms or 0.0, -(t.held_out_top1 or 0.0)))
    return chosen, (f"trial {chosen.number} is the fastest trial on the Pareto front ({chosen.p50_ms:.3f} ms) within "
                    f"{config.accuracy_tolerance:g} points of the most accurate (trial {top.number}, "
                    f"{top.held_out_top1:.2f}): {chosen.held_out_top1:.2f} held-out top-1")
