"""Feature taps: intermediate outputs taken by module path.

No model's ``forward`` is edited, so any registry model distils with feature
methods: eager modules are tapped with forward hooks, TorchScript modules
(which take none) through a copy of their graph (``script_taps``). Stages of
teacher and student are paired by spatial size when the job names no layers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from distill.script_taps import ScriptTapError, ScriptTaps


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
def tap(
    model: nn.Module, paths: Iterable[str], store: dict[str, torch.Tensor]
) -> Iterator[Callable[[torch.Tensor], torch.Tensor]]:
    """While open, the function it gives runs ``model`` and writes the outputs of ``paths`` into ``store``.

    A path ending in ":input" takes the module's input instead (e.g. the
    embedding that enters the classifier). An eager module is hooked and runs
    as itself; a TorchScript module runs a copy of its graph that returns
    the taps too (``script_taps``).
    """
    keys = list(dict.fromkeys(paths))
    if keys and isinstance(model, torch.jit.ScriptModule):
        taps = _script_taps(model, keys)

        def run(x: torch.Tensor) -> torch.Tensor:
            logits, tapped = taps(x)
            store.update(tapped)
            return logits

        yield run
        return
    handles = []
    for key in keys:
        path, wants_input = key.removesuffix(INPUT_SUFFIX), key.endswith(INPUT_SUFFIX)

        def hook(_module: nn.Module, inputs: tuple, output: torch.Tensor, key: str = key, wants_input: bool = wants_input) -> None:
            store[key] = inputs[0] if wants_input else output

        handles.append(module_by_path(model, path).register_forward_hook(hook))
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()


def _script_taps(model: torch.jit.ScriptModule, keys: list[str], skip_untappable: bool = False) -> ScriptTaps:
    for key in keys:
        module_by_path(model, key.removesuffix(INPUT_SUFFIX))
    try:
        return ScriptTaps(model, keys, INPUT_SUFFIX, skip_untappable)
    except ScriptTapError as e:
        raise FeatureError(str(e)) from e


def _probe(run: Callable[[torch.Tensor], object], model: nn.Module, input_shape: tuple[int, int, int]) -> object:
    """``run`` (the model, or what runs it) on a zero image, on whatever device the model lives."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return run(torch.zeros(1, *input_shape, device=device))


def stage_outputs(model: nn.Module, input_shape: tuple[int, int, int]) -> list[tuple[str, tuple[int, int, int]]]:
    """The last module to produce each spatial size, in forward order: the ends of the model's stages.

    Returns (module path, (channels, height, width)) from the largest
    resolution to the smallest. Containers fire after their children, so a
    stage's Sequential wins over its last block. 1x1 maps (pooled vectors)
    carry no spatial information and are left out.
    """
    if isinstance(model, torch.jit.ScriptModule):
        return _stages(_script_outputs(model, input_shape))
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
            _probe(model, model, input_shape)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return _stages(seen)


def _script_outputs(model: torch.jit.ScriptModule, input_shape: tuple[int, int, int]) -> list[tuple[str, tuple[int, int, int]]]:
    """What hooks on every module would see, in the order they would fire (a container after its last child)."""
    taps = _script_taps(model, [path for path, _ in model.named_modules() if path], skip_untappable=True)
    was_training = model.training
    try:
        model.eval()
        with torch.inference_mode():
            _, outputs = _probe(taps, model, input_shape)
    finally:
        model.train(was_training)
    order = sorted(taps.keys, key=lambda path: (taps.positions[path], -path.count(".")))
    return [(path, tuple(outputs[path].shape[1:])) for path in order if outputs[path].ndim == 4]


def _stages(seen: list[tuple[str, tuple[int, int, int]]]) -> list[tuple[str, tuple[int, int, int]]]:
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
        with tap(model, [path], store) as run, torch.inference_mode():
            _probe(run, model, input_shape)
    finally:
        model.train(was_training)
    return tuple(store[path].shape[1:])


def embedding(model: nn.Module) -> str:
    """Tap key of the embedding: the input of the last Linear layer (the classifier)."""
    linears = [path for path, m in model.named_modules() if isinstance(m, nn.Linear) or getattr(m, "original_name", "") == "Linear"]
    if not linears:
        raise FeatureError(f"{type(model).__name__} has no Linear classifier")
    return linears[-1] + INPUT_SUFFIX


def adapter(in_shape: tuple[int, ...], out_channels: int) -> nn.Module:
    """A learned map from student to teacher channels: 1x1 conv for maps, linear for vectors."""
    if len(in_shape) == 3:
        return nn.Conv2d(in_shape[0], out_channels, kernel_size=1, bias=False)
    return nn.Linear(in_shape[0], out_channels, bias=False)
