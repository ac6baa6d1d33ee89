"""Teacher files: load a file that ``model_checks`` has passed, without letting it run code.

Accepted formats:
- TorchScript archive (``torch.jit.save``);
- torch.export program (``torch.export.save``, .pt2), loaded with torch's
  ``weights_only`` unpickler forced on and without its guard code (which torch
  would ``exec``);
- state_dict (``torch.save(model.state_dict())``) plus a registry architecture,
  loaded with ``weights_only=True``;
- safetensors plus a registry architecture: tensors and a JSON header, read by
  the ``safetensors`` library (no pickle at all).

The two weights formats also give a student its pretrained start (``start_from``).

A pickled ``nn.Module`` (``torch.save(model)``) is refused: unpickling it
imports and calls whatever the file names, which is arbitrary code.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import safetensors
import safetensors.torch
import torch
from torch import nn

from distill import models
from distill.allocator import out_of_memory
from distill.model_checks import (
    EXPORTED_PROGRAM, SAFETENSORS, STATE_DICT, TORCHSCRIPT, WHAT_TO_SEND, ModelFileError, torch_message,
)

WEIGHTS = (STATE_DICT, SAFETENSORS)  # tensors only: an architecture name makes them a module
FORMATS = (TORCHSCRIPT, EXPORTED_PROGRAM, *WEIGHTS)
LAYERED = (TORCHSCRIPT, *WEIGHTS)  # their layers are submodules a feature tap reaches by path (features.tap)
__all__ = ["EXPORTED_PROGRAM", "FORMATS", "LAYERED", "SAFETENSORS", "STATE_DICT", "TORCHSCRIPT", "WEIGHTS", "ModelFileError",
           "PretrainedStart", "Teacher", "load_teacher", "read_weights", "start_from"]


@dataclass
class Teacher:
    """A loaded teacher: a callable in eval mode and what is known of its shape."""

    model: nn.Module
    format: str
    architecture: str  # registry name, or the format for opaque files
    num_classes: int
    input_shape: tuple[int, int, int]  # C, H, W


def load_teacher(path: Path, fmt: str, architecture: str, input_shape: tuple[int, int, int]) -> Teacher:
    """Load a teacher of a known format; ``input_shape`` is the data's (C, H, W)."""
    if fmt in WEIGHTS:
        model = _load_weights_model(path, fmt, architecture, input_shape)
    else:
        model = load_module(path, fmt)
        architecture = architecture or fmt
    return describe_teacher(model, fmt, architecture, input_shape)


def try_load(path: Path, fmt: str) -> None:
    """Load a file as a job will, without running it: what upload inspection does (in a child process).

    Weights need an architecture and a channel count to become a module; here they are only read.
    """
    if fmt in WEIGHTS:
        read_weights(path, fmt)
    else:
        load_module(path, fmt)


def load_module(path: Path, fmt: str) -> nn.Module:
    """A TorchScript or torch.export file as a module in eval mode."""
    if fmt == TORCHSCRIPT:
        try:
            model = torch.jit.load(str(path), map_location="cpu")
        except RuntimeError as e:  # torch's reader: a malformed archive, code that does not compile
            if out_of_memory(e):
                raise
            raise ModelFileError(f"cannot load the TorchScript archive: {torch_message(e)}") from e
        return model.eval()
    if fmt == EXPORTED_PROGRAM:
        return _load_exported_program(path)  # an exported graph is frozen in the mode it was exported in
    raise ModelFileError(f"unknown model format {fmt!r}; known: {', '.join(FORMATS)}")



def describe_teacher(model: nn.Module, fmt: str, architecture: str, input_shape: tuple[int, int, int]) -> Teacher:
    """Freeze a loaded teacher and learn its class count from one probe forward."""
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        with torch.inference_mode():
            out = model(torch.zeros(2, *input_shape))
    except Exception as e:  # a user's model may raise anything on the wrong shape
        if out_of_memory(e):
            raise
        raise ModelFileError(f"the teacher does not accept inputs of shape (N, {', '.join(map(str, input_shape))}): {e}") from e
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[1] < 2:
        raise ModelFileError(
            f"the teacher must return logits of shape (N, classes); it returned {getattr(out, 'shape', type(out).__name__)}"
        )
    return Teacher(model, fmt, architecture, int(out.shape[1]), input_shape)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a torch.save file, read by torch's ``weights_only`` unpickler (mapped, not copied)."""
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # the restricted unpickler refuses anything but tensors and containers
        if out_of_memory(e):
            raise
        raise ModelFileError(f"cannot load the state_dict safely: {torch_message(e)}. {WHAT_TO_SEND}") from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a training checkpoint that wraps the weights
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFileError("the file does not hold a state_dict (a mapping of names to tensors)")
    return state


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (``model_checks.is_safetensors`` has bounded its header)."""
    try:
        return safetensors.torch.load_file(str(path), device="cpu")
    except (safetensors.SafetensorError, ValueError, TypeError) as e:  # a malformed header, offsets, dtype
        raise ModelFileError(f"cannot read the safetensors file: {e}") from e


def read_weights(path: Path, fmt: str) -> dict[str, torch.Tensor]:
    """The named tensors of a weights file of either format."""
    return read_state_dict(path) if fmt == STATE_DICT else read_safetensors(path)


def _load_weights_model(path: Path, fmt: str, architecture: str, input_shape: tuple[int, int, int]) -> nn.Module:
    state = read_weights(path, fmt)
    matrices = [v for v in state.values() if v.ndim == 2]
    if not matrices:
        raise ModelFileError(f"the {fmt} has no linear layer to take the number of classes from")
    model = models.build(architecture, int(matrices[-1].shape[0]), input_shape[0], input_shape[1])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelFileError(f"the {fmt} does not fit architecture {architecture!r}: {e}") from e
    return model


@dataclass(frozen=True)
class PretrainedStart:
    tensors_loaded: int  # taken from the file as they are
    reinitialised: list[str]  # head tensors for another class count, left as the model was built
    adapted: list[str]  # first-convolution weights for another channel count, summed over the file's channels


def start_from(model: nn.Module, weights: dict[str, torch.Tensor]) -> PretrainedStart:
    """Load pretrained ``weights`` into a freshly built ``model``, strictly but for the two differences a new task
    brings: a head for another class count (re-initialised) and a first convolution for another channel count
    (adapted by timm's ``adapt_input_conv``). Anything else that differs is a ModelFileError naming it."""
    own = model.state_dict()
    # Converted checkpoints often lack BatchNorm's step counter; it is a counter, not a weight.
    missing = sorted(k for k in own.keys() - weights.keys() if not k.endswith("num_batches_tracked"))
    unexpected = sorted(weights.keys() - own.keys())
    if missing or unexpected:
        raise ModelFileError(
            f"the weights do not fit this architecture: {len(missing)} of its tensors missing "
            f"({', '.join(missing[:3]) or 'none'}), {len(unexpected)} unknown ({', '.join(unexpected[:3]) or 'none'})"
        )
    head = models.head_parameters(model)
    first_conv = next((f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    taken: dict[str, torch.Tensor] = {}
    reinitialised, adapted = [], []
    for name, tensor in weights.items():
        target = own[name]
        if tensor.shape == target.shape:
            taken[name] = tensor
        elif name in head:
            reinitialised.append(name)
        elif name == first_conv and (summed := _adapted_input_conv(tensor, target)) is not None:
            taken[name] = summed
            adapted.append(name)
        else:
            raise ModelFileError(f"the weights do not fit this architecture: {name} is {tuple(tensor.shape)} in the "
                                 f"file, {tuple(target.shape)} in the model")
    model.load_state_dict(taken, strict=False)  # what is not taken stays as built
    return PretrainedStart(len(taken) - len(adapted), sorted(reinitialised), sorted(adapted))


def _adapted_input_conv(weight: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
    """``weight`` adapted to ``target``'s input channels, or None where timm has no rule for it (1 -> 3 channels)."""
    from timm.models import adapt_input_conv  # timm is imported only where a start needs it

    if weight.ndim != 4 or weight.shape[0] != target.shape[0] or weight.shape[2:] != target.shape[2:]:
        return None
    try:
        summed = adapt_input_conv(target.shape[1], weight.float())
    except NotImplementedError:
        return None
    return summed if summed.shape == target.shape else None


class StaticBatchModule(nn.Module):
    """Runs a program exported for a fixed batch size on batches of any size.

    Batches are cut into chunks of the exported size; the last is padded with
    its own rows cycled (not zeros: hooks on the graph's batch-norm inputs,
    the data-free BatchNorm prior, see real images only).
    """

    def __init__(self, program: nn.Module, batch_size: int) -> None:
        super().__init__()
        self.program = program
        self.batch_size = batch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == self.batch_size:
            return self.program(x)
        outputs = []
        for chunk in x.split(self.batch_size):
            n = chunk.shape[0]
            if n < self.batch_size:
                chunk = chunk[torch.arange(self.batch_size, device=chunk.device) % n]
            outputs.append(self.program(chunk)[:n])
        return torch.cat(outputs)


@contextmanager
def _weights_only_forced() -> Iterator[None]:
    """Make every torch.load inside use the ``weights_only`` unpickler, whatever its caller asks.

    torch.export.load unpickles pickled weights, constants and sample inputs with
    ``weights_only=False``; torch's own switch turns that off. Loading is single-threaded.
    """
    saved = {name: os.environ.pop(name, None) for name in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")}
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value


def module_of(program: torch.export.ExportedProgram) -> nn.Module:
    """An exported program as a module the engine can use like any teacher.

    Guards are Python source carried in the file, which torch would exec: left
    out (a wrong input shape fails in the graph's ops instead). torch makes
    ``eval()``/``train()`` raise on such a module because they cannot change
    the graph (it runs as exported); every teacher gets ``eval()`` here, so the
    plain flag-setting ones are put back.
    """
    module = program.module(check_guards=False)
    for name in ("train", "eval"):
        module.__dict__.pop(name, None)
    return module


def _load_exported_program(path: Path) -> nn.Module:
    try:
        with _weights_only_forced(), open(path, "rb") as f:  # a file object: torch warns about names not ending .pt2
            program = torch.export.load(f)
    except Exception as e:  # torch's deserializer raises many types on a malformed program
        if out_of_memory(e):
            raise
        raise ModelFileError(f"cannot load the torch.export program: {torch_message(e)}") from e
    inputs = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in program.graph_signature.user_inputs]
    if len(inputs) != 1:
        raise ModelFileError(f"the exported program must take one input tensor, it takes {len(inputs)}")
    batch = inputs[0].meta["val"].shape[0]
    module = module_of(program)
    # A program exported with a dynamic batch accepts any size; a static one is adapted.
    return module if not isinstance(batch, int) else StaticBatchModule(module, batch)
