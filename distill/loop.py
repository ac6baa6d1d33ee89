"""What every training loop does around its steps: resume, progress, divergence, stop agreement, checkpoints.

Offline distillation (``trainer.distil``) and data-free distillation
(``datafree.distil_data_free``) differ in what a step is; ``StepLoop`` is
the rest. A loop makes one, loads its own state from ``resume()``, and
calls ``finish_step`` after each step with the step's loss and a function
that returns its state for a checkpoint.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from distill import distributed


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite."""


class Interrupted(Exception):
    """Training stopped on request at a step boundary, after its checkpoint was handed over."""


@dataclass(frozen=True)
class Progress:
    step: int
    total_steps: int
    epoch: int
    loss: float  # mean over the steps since the previous report
    pretraining: bool = False  # in a method's first stage (hint / flow transfer)
    epoch_end: bool = False  # the step that ended an epoch (a search scores the student there)
    message: str = ""  # worth telling people, e.g. what a data-free run did when the generator's classes vanished


ProgressFn = Callable[[Progress], None]
# Receives the live training state (its tensors keep changing): persist it before returning.
CheckpointFn = Callable[[dict[str, Any]], None]
# Polled after every step; True asks training to checkpoint and stop (a server draining).
StopFn = Callable[[], bool]


def autocast(device: str) -> torch.autocast:
    # bf16 on CUDA: the tensor-core speed of fp16 without a loss scaler.
    if device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def rng_state(device: str) -> dict[str, torch.Tensor | None]:
    """The random streams a resumed run must continue: the CPU's, and the GPU's when it runs on one."""
    on_cuda = torch.device(device).type == "cuda"
    return {"rng": torch.get_rng_state(), "cuda_rng": torch.cuda.get_rng_state(device) if on_cuda else None}


def restore_rng(saved: dict[str, Any], device: str) -> None:
    if saved.get("rng") is not None:  # checkpoints written before it was saved have none
        torch.set_rng_state(saved["rng"].cpu())  # the worker maps checkpoints to the job's device
    if saved.get("cuda_rng") is not None and torch.device(device).type == "cuda":
        torch.cuda.set_rng_state(saved["cuda_rng"].cpu(), device)


class StepLoop:
    """The bookkeeping around ``total_steps`` steps, the same on every rank.

    Progress is reported at most every half second (and whenever the caller
    says a boundary was reached, and at the end), as the mean loss since the
    last report. Checkpoints go out every ``interval`` steps, and at once when
    any rank is asked to stop, which then raises ``Interrupted`` on all of
    them after the same step.
    """

    REPORT_EVERY_S = 0.5

    def __init__(
        self,
        total_steps: int,
        interval: int,
        device: str,
        on_progress: ProgressFn | None = None,
        on_checkpoint: CheckpointFn | None = None,
        stop_requested: StopFn | None = None,
        divergence_advice: str = "lower the learning rate",
        started: float | None = None,  # when the run began (perf_counter), if its setup should count
    ) -> None:
        self.total_steps, self.interval, self.device = total_steps, interval, device
        self.on_progress, self.on_checkpoint, self.stop_requested = on_progress, on_checkpoint, stop_requested
        self.divergence_advice = divergence_advice
        self.step = 0
        self.started = time.perf_counter() if started is None else started
        self.window_loss, self.window_steps, self.last_report = 0.0, 0, time.perf_counter()
        self.reported_loss = 0.0  # the last report's, for messages between reports (0 before the first)

    def resume(self, saved: dict[str, Any] | None) -> dict[str, Any] | None:
        """Rank 0's checkpoint on every rank; the step, the wall time so far and the random streams are taken
        from it here, the caller loads the rest (its models and optimizers)."""
        saved = distributed.from_leader(saved)
        if saved is not None:
            self.step = int(saved["step"])
            self.started -= saved.get("wall_seconds", 0.0)  # the run's wall time counts what came before the resume
            restore_rng(saved, self.device)
        return saved

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    @property
    def done(self) -> bool:
        return self.step >= self.total_steps

    def tell(self, message: str, step: int | None = None) -> None:
        """A progress event with a message (e.g. what a data-free run did), at ``step`` (default: the current one)."""
        if self.on_progress:
            loss = self.window_loss / self.window_steps if self.window_steps else self.reported_loss
            step = self.step if step is None else step
            self.on_progress(Progress(step, self.total_steps, epoch=0, loss=loss, message=message))

    def finish_step(
        self,
        loss: torch.Tensor | float,
        state: Callable[[], dict[str, Any]],
        epoch: int = 0,
        pretraining: bool = False,
        boundary: bool = False,
        epoch_end: bool = False,
    ) -> float:
        """Count the step done; returns its loss, the mean over ranks.

        One sync a step (cheap next to the step itself): the loss, and whether
        any rank was asked to stop, so that all of them stop after the same step.
        """
        self.step += 1
        asked = float(self.stop_requested is not None and self.stop_requested())
        local = loss.detach().float().cpu().reshape(()) if isinstance(loss, torch.Tensor) else torch.tensor(float(loss))
        agreed = distributed.sum_across(torch.stack([local.double(), torch.tensor(asked, dtype=torch.float64)]))
        step_loss, stop = float(agreed[0]) / distributed.ranks().world, bool(agreed[1] > 0)
        if not math.isfinite(step_loss):
            advice = self.divergence_advice
            if self.step == 1:  # before any update: something was broken from the start
                advice = "the teacher's outputs, the inputs or the student's initial weights are not finite"
            raise TrainingDivergedError(f"loss became {step_loss} at step {self.step}; {advice}")
        self.window_loss += step_loss
        self.window_steps += 1
        now = time.perf_counter()
        if self.on_progress and (now - self.last_report >= self.REPORT_EVERY_S or boundary or epoch_end or self.done):
            self.reported_loss = self.window_loss / self.window_steps
            self.on_progress(Progress(self.step, self.total_steps, epoch, self.reported_loss, pretraining, epoch_end=epoch_end))
            self.window_loss, self.window_steps, self.last_report = 0.0, 0, now
        if self.done:
            return step_loss  # finished: nothing left to resume
        if self.on_checkpoint and (stop or self.step % self.interval == 0):
            self.on_checkpoint({"step": self.step, **state(), **rng_state(self.device), "wall_seconds": self.seconds})
        if stop:
            raise Interrupted(f"stopped at step {self.step} of {self.total_steps}")
        return step_loss
