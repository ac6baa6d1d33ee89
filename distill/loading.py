"""Teacher files: detect the format without running anything, then load safely.

Accepted formats:
- TorchScript archive (``torch.jit.save``);
- torch.export program (``torch.export.save``, .pt2);
- state_dict (``torch.save(model.state_dict())``) plus a registry architecture,
  loaded with ``weights_only=True``.

A pickled ``nn.Module`` (``torch.save(model)``) is refused: unpickling it
imports and calls whatever the file names, which is arbitrary code.
"""

from __future__ import annotations

import pickletools
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from distill import models

TORCHSCRIPT = "torchscript"
EXPORTED_PROGRAM = "exported_program"
STATE_DICT = "state_dict"
FORMATS = (TORCHSCRIPT, EXPORTED_PROGRAM, STATE_DICT)

WHAT_TO_SEND = (
    "send torch.save(model.state_dict()) with an architecture name, "
    "a TorchScript archive (torch.jit.save(torch.jit.script(model))), "
    "or a torch.export program (torch.export.save)"
)


class ModelFileError(ValueError):
    """The file is not a model this service can load, or not safely."""


# Globals a tensor-only pickle may name; what torch.load(weights_only=True) accepts.
_SAFE_GLOBAL_PREFIXES = ("torch._utils._rebuild_", "torch._tensor._rebuild_")
_SAFE_GLOBALS = {"collections.OrderedDict", "torch.Size", "torch.device"}


def _is_safe_global(name: str) -> bool:
    module, _, attr = name.rpartition(".")
    if name in _SAFE_GLOBALS or name.startswith(_SAFE_GLOBAL_PREFIXES):
        return True
    # torch.FloatStorage, torch.float32, ...: storage types and dtypes.
    return module == "torch" and (attr.endswith("Storage") or isinstance(getattr(torch, attr, None), torch.dtype))


def pickle_globals(data: bytes) -> set[str]:
    """Every ``module.name`` a pickle would import, read from its opcodes (nothing runs)."""
    names: set[str] = set()
    recent_strings: list[str] = []
    for opcode, arg, _ in pickletools.genops(data):
        if opcode.name == "GLOBAL":
            module, name = arg.split(" ", 1)
            names.add(f"{module}.{name}")
        elif opcode.name == "STACK_GLOBAL" and len(recent_strings) >= 2:
            names.add(f"{recent_strings[-2]}.{recent_strings[-1]}")
        elif isinstance(arg, str):
            recent_strings = (recent_strings + [arg])[-2:]
    return names


def detect_format(path: Path) -> str:
    """The format of a model file, judged from its archive layout and pickle opcodes."""
    if not zipfile.is_zipfile(path):
        raise ModelFileError(
            "not a zip archive: raw pickles and legacy torch.save files are not accepted "
            f"because loading them can run arbitrary code; {WHAT_TO_SEND}"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if any(n.endswith("/archive_format") for n in names):
                return EXPORTED_PROGRAM
            if any("/code/" in n for n in names) and any(n.endswith("/constants.pkl") for n in names):
                return TORCHSCRIPT
            pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
            if len(pickles) != 1:
                raise ModelFileError(f"zip archive is not a torch.save, TorchScript or torch.export file; {WHAT_TO_SEND}")
            unsafe = sorted(g for g in pickle_globals(archive.read(pickles[0])) if not _is_safe_global(g))
    except (zipfile.BadZipFile, ValueError) as e:
        if isinstance(e, ModelFileError):
            raise
        raise ModelFileError(f"corrupt model archive: {e}") from e
    if unsafe:
        raise ModelFileError(
            f"the file is a pickled Python object (it names {', '.join(unsafe[:3])}"
            f"{', ...' if len(unsafe) > 3 else ''}); loading it would run arbitrary code. {WHAT_TO_SEND[0].upper()}{WHAT_TO_SEND[1:]}"
        )
    return STATE_DICT


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
    if fmt == STATE_DICT:
        model = _load_state_dict_model(path, architecture, input_shape[0])
    elif fmt == TORCHSCRIPT:
        model = torch.jit.load(str(path), map_location="cpu")
        architecture = architecture or TORCHSCRIPT
    elif fmt == EXPORTED_PROGRAM:
        model = _load_exported_program(path)
        architecture = architecture or EXPORTED_PROGRAM
    else:
        raise ModelFileError(f"unknown model format {fmt!r}; known: {', '.join(FORMATS)}")
    if fmt != EXPORTED_PROGRAM:  # an exported graph is frozen in the mode it was exported in
        model.eval()
    return describe_teacher(model, fmt, architecture, input_shape)


def describe_teacher(model: nn.Module, fmt: str, architecture: str, input_shape: tuple[int, int, int]) -> Teacher:
    """Freeze a loaded teacher and learn its class count from one probe forward."""
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        with torch.inference_mode():
            out = model(torch.zeros(2, *input_shape))
    except Exception as e:  # a user's model may raise anything on the wrong shape
        raise ModelFileError(f"the teacher does not accept inputs of shape (N, {', '.join(map(str, input_shape))}): {e}") from e
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[1] < 2:
        raise ModelFileError(
            f"the teacher must return logits of shape (N, classes); it returned {getattr(out, 'shape', type(out).__name__)}"
        )
    return Teacher(model, fmt, architecture, int(out.shape[1]), input_shape)


def _load_state_dict_model(path: Path, architecture: str, in_channels: int) -> nn.Module:
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelFileError(f"cannot load the state_dict safely: {e}. {WHAT_TO_SEND}") from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a training checkpoint that wraps the weights
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFileError("the file does not hold a state_dict (a mapping of names to tensors)")
    matrices = [v for v in state.values() if v.ndim == 2]
    if not matrices:
        raise ModelFileError("the state_dict has no linear layer to take the number of classes from")
    model = models.build(architecture, num_classes=int(matrices[-1].shape[0]), in_channels=in_channels)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelFileError(f"the state_dict does not fit architecture {architecture!r}: {e}") from e
    return model


class StaticBatchModule(nn.Module):
    """Runs a program exported for a fixed batch size on batches of any size.

    Batches are cut into chunks of the exported size; the last is padded.
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
                chunk = torch.cat([chunk, chunk.new_zeros(self.batch_size - n, *chunk.shape[1:])])
            outputs.append(self.program(chunk)[:n])
        return torch.cat(outputs)


def _load_exported_program(path: Path) -> nn.Module:
    try:
        program = torch.export.load(str(path))
    except Exception as e:
        raise ModelFileError(f"cannot load the torch.export program: {e}") from e
    inputs = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in program.graph_signature.user_inputs]
    if len(inputs) != 1:
        raise ModelFileError(f"the exported program must take one input tensor, it takes {len(inputs)}")
    batch = inputs[0].meta["val"].shape[0]
    module = program.module()
    # A program exported with a dynamic batch accepts any size; a static one is adapted.
    return module if not isinstance(batch, int) else StaticBatchModule(module, batch)
