"""Feature taps on TorchScript modules, which take no forward hooks.

A copy of the module's forward graph is inlined. TorchScript keeps, on every
inlined op, the submodule instance it came from (``block1(B).conv(Conv2d)``),
so a module path's output is the last value computed inside it and its input
the first tensor that enters it from outside. The copy returns those values
after the logits and runs as a TorchScript function on the module itself:
the same weights, the same train/eval behaviour (BatchNorm statistics,
dropout), gradients included. The module is never changed, so it exports as
uploaded.

TorchScript's graph API is torch-internal (``torch._C``); it is kept to this file.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch

_INSTANCE = re.compile(r"([^.()]+)\([^()]*\)")  # "name(Type)" in a module hierarchy string
# Hierarchy entries that are not submodules: another method of the same module, a free function (nothing inside it is a module).
_SAME_MODULE, _FUNCTION = "SELF", "UNKNOWN_INSTANCE"
_CONTROL_FLOW = {"prim::If", "prim::Loop"}


class ScriptTapError(ValueError):
    """A path whose output the module's graph does not hold as one tensor."""


def module_path(node: torch._C.Node) -> str:
    """The submodule path an inlined op was compiled from ("" for the root).

    An ``if`` or a loop carries no hierarchy of its own; it belongs where its
    condition (or trip count) was computed.
    """
    if node.kind() in _CONTROL_FLOW:
        node = next(node.inputs()).node()
    names = []
    for instance in _INSTANCE.findall(node.getModuleHierarchy()):
        if instance == _FUNCTION:
            break
        if instance != _SAME_MODULE:
            names.append(instance)
    return ".".join(names)


def _top_level(node: torch._C.Node) -> torch._C.Node:
    """The node of the graph's own block that holds ``node`` (itself, or the if/loop it is nested in)."""
    while node.owningBlock().owningNode() is not None:
        node = node.owningBlock().owningNode()
    return node


def _inside(path: str, module: str) -> bool:
    return path == module or path.startswith(module + ".")


def _is_tensor(value: torch._C.Value) -> bool:
    return isinstance(value.type(), torch._C.TensorType)


class ScriptTaps:
    """A TorchScript module's forward that also returns the outputs (or, for "path:input", inputs) of named submodules.

    Nodes inside control flow are not looked into: a module called under an
    ``if`` cannot be tapped, and says so.
    """

    def __init__(self, module: torch.jit.ScriptModule, keys: Iterable[str], input_suffix: str, skip_untappable: bool = False) -> None:
        self.module = module
        graph = module.forward.graph.copy()
        torch._C._jit_pass_inline(graph)
        nodes = [n for n in graph.nodes() if n.kind() != "prim::Constant"]  # constants are hoisted, away from their module
        paths = [module_path(n) for n in nodes]
        self.keys: list[str] = []
        self.positions: dict[str, int] = {}  # where in the forward each tapped value is computed
        values = []
        for key in dict.fromkeys(keys):
            try:
                position, value = _find(nodes, paths, key.removesuffix(input_suffix), key.endswith(input_suffix))
            except ScriptTapError:
                if skip_untappable:
                    continue
                raise
            self.keys.append(key)
            self.positions[key] = position
            values.append(value)
        returned = graph.return_node()
        outputs = graph.create("prim::TupleConstruct", [returned.input(), *values])
        outputs.output().setType(torch._C.TupleType([v.type() for v in outputs.inputs()]))
        outputs.insertBefore(returned)
        returned.replaceInput(0, outputs.output())
        self.function = torch._C._create_function_from_graph("forward_with_taps", graph)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits, *tapped = self.function(self.module._c, x)
        return logits, dict(zip(self.keys, tapped))


def _find(nodes: list[torch._C.Node], paths: list[str], module: str, wants_input: bool) -> tuple[int, torch._C.Value]:
    """Where module's output (or input) is computed, and the value: its last call's, as a forward hook would see it."""
    inside = [i for i, path in enumerate(paths) if _inside(path, module)]
    if not inside:
        raise ScriptTapError(f"module {module!r} computes nothing of its own in the TorchScript graph (an identity, "
                             "or called under control flow); name another layer")
    start = end = inside[-1]  # a call's ops are inlined together: the last call is the last run of them
    while start > 0 and _inside(paths[start - 1], module):
        start -= 1
    if wants_input:
        for i in range(start, end + 1):
            for value in nodes[i].inputs():
                producer = value.node()
                if _is_tensor(value) and (producer.kind() == "prim::Param" or not _inside(module_path(producer), module)):
                    return i, value
        raise ScriptTapError(f"no tensor enters module {module!r} in the TorchScript graph")
    # The last op that returns something: side effects (a counter's update) return nothing.
    last = next((i for i in range(end, start - 1, -1) if nodes[i].outputsSize() > 0), end)
    outputs = list(nodes[last].outputs())
    if len(outputs) != 1 or not _is_tensor(outputs[0]):
        raise ScriptTapError(f"module {module!r} does not end in one tensor in the TorchScript graph (it returns "
                             f"{', '.join(str(o.type()) for o in outputs)}); name a layer that outputs a feature map")
    leaves = any(use.user.kind() == "prim::Return" or not _inside(module_path(_top_level(use.user)), module)
                 for use in outputs[0].uses())
    if not leaves:  # then it is not what the module returned
        raise ScriptTapError(f"module {module!r}'s output could not be told apart in the TorchScript graph; name another layer")
    return last, outputs[0]
