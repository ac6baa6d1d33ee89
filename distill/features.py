"""Feature taps: intermediate outputs taken with forward hooks by module path.

No model's ``forward`` is edited, so any registry model distils with feature
methods. Stages of teacher and student are paired by spatial size when the
job names no layers.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn


class FeatureError(ValueError):
    """A layer name is unknown, or the models have no stages to pair."""


def module_by_path(model: nn.Module, path: str) -> nn.Module:
    modules = dict(model.named_modules())
    if path not in modules or not path:
        raise FeatureError(
            f"no module {path!r} in {type(model).__name__}; some names: {', '.join(list(modules)[1:12])}, ..."
        )
    return modules[path]


INPUT_SUFFIX = ":input"


@contextmanager
def tap(model: nn.Module, paths: Iterable[str], store: dict[str, torch.Tensor]) -> Iterator[dict[str, torch.Tensor]]:
    """While open, every forward of ``model`` writes the outputs of ``paths`` into ``store``.

    A path ending in ":input" takes the module's input instead (e.g. the
    embedding that enters the classifier).
    """
    keys = list(dict.fromkeys(paths))
    if keys and isinstance(model, torch.jit.ScriptModule):
        raise FeatureError("TorchScript modules take no forward hooks")
    handles = []
    for key in keys:
        path, wants_input = key.removesuffix(INPUT_SUFFIX), key.endswith(INPUT_SUFFIX)

        def hook(_module: nn.Module, inputs: tuple, output: torch.Tensor, key: str = key, wants_input: bool = wants_input) -> None:
            store[key] = inputs[0] if wants_input else output

        handles.append(module_by_path(model, path).register_forward_hook(hook))
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()


def _probe(model: nn.Module, input_shape: tuple[int, int, int]) -> None:
    """One forward of a zero image, on whatever device the model lives."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    model(torch.zeros(1, *input_shape, device=device))


def stage_outputs(model: nn.Module, input_shape: tuple[int, int, int]) -> list[tuple[str, tuple[int, int, int]]]:
    """The last module to produce each spatial size, in forward order: the ends of the model's stages.

    Returns (module path, (channels, height, width)) from the largest
    resolution to the smallest. Containers fire after their children, so a
    stage's Sequential wins over its last block. 1x1 maps (pooled vectors)
    carry no spatial information and are left out.
    """
    seen: list[tuple[str, tuple[int, int, int]]] = []
    handles = []
    for path, module in model.named_modules():
        if not path:
            continue

        def hook(_module: nn.Module, _inputs: tuple, output: object, path: str = path) -> None:
            if isinstance(output, torch.Tensor) and output.ndim == 4:
                seen.append((path, tuple(output.shape[1:])))

        handles.append(module.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.inference_mode():
            _probe(model, input_shape)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    last_by_size: dict[tuple[int, int], tuple[str, tuple[int, int, int]]] = {}
    for path, shape in seen:
        last_by_size[shape[1:]] = (path, shape)  # later wins
    stages = sorted(last_by_size.values(), key=lambda item: -item[1][1] * item[1][2])
    return [s for s in stages if s[1][1] * s[1][2] > 1]


def pair_stages(
    teacher: nn.Module, student: nn.Module, input_shape: tuple[int, int, int]
) -> list[tuple[tuple[str, tuple[int, int, int]], tuple[str, tuple[int, int, int]]]]:
    """Teacher and student stage ends of equal spatial size, largest first."""
    student_by_size = {shape[1:]: (path, shape) for path, shape in stage_outputs(student, input_shape)}
    pairs = [
        ((t_path, t_shape), student_by_size[t_shape[1:]])
        for t_path, t_shape in stage_outputs(teacher, input_shape)
        if t_shape[1:] in student_by_size
    ]
    if not pairs:
        raise FeatureError("teacher and student share no feature-map size to pair; name the layers in the spec")
    return pairs


def output_shape(model: nn.Module, path: str, input_shape: tuple[int, int, int]) -> tuple[int, ...]:
    """The shape (without batch) of a named module's output for one input."""
    store: dict[str, torch.Tensor] = {}
    was_training = model.training
    model.eval()
    try:
        with tap(model, [path], store), torch.inference_mode():
            _probe(model, input_shape)
    finally:
        model.train(was_training)
    return tuple(store[path].shape[1:])


def embedding(model: nn.Module) -> str:
    """Tap key of the embedding: the input of the last Linear layer (the classifier)."""
    linears = [path for path, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise FeatureError(f"{type(model).__name__} has no Linear classifier")
    return linears[-1] + INPUT_SUFFIX


def adapter(in_shape: tuple[int, ...], out_channels: int) -> nn.Module:
    """A learned map from student to teacher channels: 1x1 conv for maps, linear for vectors."""
    if len(in_shape) == 3:
        return nn.Conv2d(in_shape[0], out_channels, kernel_size=1, bias=False)
    return nn.Linear(in_shape[0], out_channels, bias=False)
