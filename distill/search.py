"""Search: Optuna's TPE over a job's hyper-parameters, each trial one ``engine.run``, scored on held-out training data.

Honest selection: the training split is cut once (seeded) into what the trials
train on and a held-out part they are scored on. The validation split is
never seen by the search. What a search finds is values: ``with_values(job,
result.best.params)`` is the job to train on the whole split for the full
budget (trials may be shorter, ``trial_epochs``); the service ships that run's
student, scored on the validation split once like any job's.

With a ``folder``, the study lives in an Optuna journal file there, so a
search stopped mid-way (a server restart) goes on from its finished trials:
a trial that was running is marked failed and run again under a new number.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import optuna
import torch
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from torch import nn

from distill import engine
from distill.data import ImageData, Splits
from distill.loop import TrainingDivergedError
from distill.losses import MethodConfig, method
from distill.streaming import ImageFiles

# What a search may tune: a method's parameter as "method.parameter" (kd.temperature, dkd.beta, ...), or these.
TRAINING_PARAMETERS = {"training.learning_rate": (1e-5, 10.0), "training.weight_decay": (0.0, 1.0)}
_STUDY = "search"
_STOPPED = "stopped by a restart; run again"


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
    parameters: tuple[Parameter, ...]
    trials: int = 10  # finished trials wanted, those before a restart included
    held_out_fraction: float = 0.2  # of the training split, scored and never trained on
    seed: int = 0  # the held-out cut and the sampler
    trial_epochs: int = 0  # each trial's epochs; 0: the job's

    def __post_init__(self) -> None:
        if not self.parameters:
            raise SearchError("a search needs at least one parameter")
        if not 1 <= self.trials <= 1000:
            raise SearchError("trials must be 1..1000")
        if not 0.01 <= self.held_out_fraction <= 0.5:
            raise SearchError("held_out_fraction must be in [0.01, 0.5]")
        if not 0 <= self.trial_epochs <= 10_000:
            raise SearchError("trial_epochs must be 0..10000 (0: the job's epochs)")
        for p in self.parameters:
            if not (math.isfinite(p.low) and math.isfinite(p.high) and p.low < p.high) or (p.log and p.low <= 0):
                raise SearchError(f"{p.name}: need low < high (and low > 0 on a log scale), got {p.low:g}..{p.high:g}")


@dataclass(frozen=True)
class Trial:
    number: int
    params: dict[str, float]
    held_out_top1: float | None  # None when the trial failed
    seconds: float
    state: str  # "complete" | "failed"
    note: str = ""  # why it failed


@dataclass(frozen=True)
class SearchResult:
    trials: list[Trial]
    best: Trial  # its values are what the search found: ``with_values(job, best.params)`` is the job to train
    train_samples: int  # what each trial trained on
    held_out_samples: int  # what each trial was scored on


def check(methods: tuple[MethodConfig, ...], parameters: tuple[Parameter, ...]) -> None:
    """SearchError unless every parameter is one a job with these loss terms has, within the bounds it accepts."""
    names = {m.method for m in methods}
    for p in parameters:
        if p.name in TRAINING_PARAMETERS:
            low, high = TRAINING_PARAMETERS[p.name]
        else:
            owner, _, name = p.name.partition(".")
            if owner not in names:
                raise SearchError(f"{p.name}: the job has no {owner!r} loss term; it has {', '.join(sorted(names))}")
            bounds = method(owner).params.get(name)
            if bounds is None:
                raise SearchError(f"{p.name}: {owner} has no parameter {name!r}; it has {', '.join(method(owner).params)}")
            low, high = bounds.low, bounds.high
        if p.low < low or p.high > high:
            raise SearchError(f"{p.name}: {p.low:g}..{p.high:g} leaves its bounds {low:g}..{high:g}")


def with_values(job: engine.Job, values: dict[str, float]) -> engine.Job:
    """``job`` with a trial's values put where they belong: method parameters and training fields."""
    training = job.training
    for name in ("learning_rate", "weight_decay"):
        if f"training.{name}" in values:
            training = replace(training, **{name: values[f"training.{name}"]})
    methods = tuple(
        replace(m, params={**m.params, **{k.partition(".")[2]: v for k, v in values.items() if k.partition(".")[0] == m.method}})
        for m in job.methods
    )
    return replace(job, training=training, methods=methods)


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
    on_trial: Callable[[Trial, Trial | None], None] | None = None,
) -> SearchResult:
    """Run trials until ``config.trials`` have finished (counting a resumed search's); the best by held-out top-1.

    ``on_trial(trial, best so far)`` hears of each trial as it ends. A trial whose training fails in a way the
    job could not fix by other values (bad input, out of memory) ends the search with that error; a diverged
    trial is recorded as failed and the search goes on.
    """
    if job.data is None or job.data_free is not None:
        raise SearchError("a search needs labelled training data (not data-free)")
    if not isinstance(job.data.train, (ImageData, ImageFiles)):
        raise SearchError("a search holds part of the training split out: WebDataset shards cannot be cut")
    check(job.methods, config.parameters)
    fit, held_out = split_held_out(job.data.train, config.held_out_fraction, config.seed)
    splits = Splits(fit, held_out, job.data.normalization)
    if config.trial_epochs:
        job = replace(job, training=replace(job.training, epochs=config.trial_epochs))
    storage = None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        storage = JournalStorage(JournalFileBackend(str(folder / "study.journal")))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=_STUDY, storage=storage, load_if_exists=True, direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=config.seed))
    for stale in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):  # cut off by a restart
        study._storage.set_trial_user_attr(stale._trial_id, "note", _STOPPED)
        study._storage.set_trial_state_values(stale._trial_id, optuna.trial.TrialState.FAIL)

    while _finished(study) < config.trials:
        trial = study.ask()
        values = {p.name: trial.suggest_float(p.name, p.low, p.high, log=p.log) for p in config.parameters}
        started = time.perf_counter()
        student = copy.deepcopy(job.student) if isinstance(job.student, nn.Module) else job.student
        try:
            outcome = engine.run(replace(with_values(job, values), student=student, data=splits, evaluate=True))
        except TrainingDivergedError as e:
            trial.set_user_attr("note", str(e))
            trial.set_user_attr("seconds", time.perf_counter() - started)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        else:
            assert outcome.evaluation is not None
            trial.set_user_attr("seconds", time.perf_counter() - started)
            study.tell(trial, outcome.evaluation.student.top1)
        if on_trial:
            trials = _trials(study)
            on_trial(trials[-1], _best(trials))
    trials = _trials(study)
    best = _best(trials)
    if best is None:
        raise SearchError(f"every one of the {config.trials} trials failed (diverged); narrow the ranges")
    return SearchResult(trials, best, len(fit), len(held_out))


def _finished(study: optuna.Study) -> int:
    """Trials that count towards the budget: complete or diverged, not those a restart cut off (they run again)."""
    return len([t for t in _trials(study) if t.note != _STOPPED])


def _trials(study: optuna.Study) -> list[Trial]:
    out = []
    for t in study.get_trials(deepcopy=False):
        if t.state == optuna.trial.TrialState.COMPLETE:
            out.append(Trial(t.number, dict(t.params), t.value, t.user_attrs.get("seconds", 0.0), "complete"))
        elif t.state == optuna.trial.TrialState.FAIL:
            out.append(Trial(t.number, dict(t.params), None, t.user_attrs.get("seconds", 0.0), "failed", t.user_attrs.get("note", "")))
    return out


def _best(trials: list[Trial]) -> Trial | None:
    """The complete trial with the best held-out top-1 (the earliest of equals)."""
    complete = [t for t in trials if t.state == "complete"]
    return max(complete, key=lambda t: t.held_out_top1 or 0.0) if complete else None
