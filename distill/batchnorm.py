"""A teacher's BatchNorm statistics, reached in every format that has them.

The BatchNorm prior (``datafree.bn_prior``) hooks each BatchNorm layer's input
and compares its batch statistics with the layer's running ones. An eager
module (a registry state_dict) has ``nn.BatchNorm2d`` modules to hook. A
TorchScript module does not let a hook in (its submodules are compiled), and a
torch.export program has batch-norm *ops* in a graph, not modules. Both become
an FX graph here (TorchScript through torch's own TorchScript-to-export
converter), and a pass puts a ``BatchNormTap`` before every batch-norm op: an
identity module that carries the op's running statistics, so the same hook
works on all three.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import fx, nn

from distill.loading import StaticBatchModule, module_of
from distill.model_checks import torch_message

# What batch norm in eval mode is called in an exported graph (torch.export keeps the first; decompositions give the second).
BATCH_NORM_OPS = {"aten.batch_norm.default", "aten._native_batch_norm_legit_no_training.default"}


class BatchNormTap(nn.Module):
    """Stands before one batch-norm op of a graph: passes its input through, carrying the op's running statistics."""

    def __init__(self, running_mean: torch.Tensor, running_var: torch.Tensor) -> None:
        super().__init__()
        self.running_mean = running_mean
        self.running_var = running_var

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@dataclass(frozen=True)
class Reached:
    teacher: nn.Module  # the teacher to train against: computes what the loaded one does, with its BN layers hookable
    layers: list[nn.Module]  # nn.BatchNorm2d or BatchNormTap, each with running_mean and running_var
    how: str  # for the report: where the layers were found, or why none were


def reach_batchnorm(teacher: nn.Module, input_shape: tuple[int, int, int]) -> Reached:
    """The teacher with every 2-D BatchNorm layer it has reachable by a forward pre-hook."""
    eager = [m for m in teacher.modules() if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None]
    if eager:
        return Reached(teacher, eager, f"{len(eager)} BatchNorm2d modules")
    inner = teacher.program if isinstance(teacher, StaticBatchModule) else teacher
    if isinstance(inner, torch.jit.ScriptModule):
        if not any(getattr(m, "original_name", "").startswith("BatchNorm") for m in inner.modules()):
            return Reached(teacher, [], "")
        graph, why_not = _converted(inner, input_shape)
        if graph is None:
            return Reached(teacher, [], f"TorchScript BatchNorm layers not reached: {why_not}")
        where = "TorchScript teacher, through torch's TorchScript-to-export converter"
    elif isinstance(inner, fx.GraphModule):
        graph, where = copy.deepcopy(inner), "torch.export graph"  # the loaded teacher stays as it is, for timing
    else:
        return Reached(teacher, [], "")
    taps = tap_batch_norm_ops(graph)
    if not taps:
        return Reached(teacher, [], "")
    reached = StaticBatchModule(graph, teacher.batch_size) if isinstance(teacher, StaticBatchModule) else graph
    return Reached(reached, taps, f"{len(taps)} batch-norm ops in the {where}")


def tap_batch_norm_ops(graph: fx.GraphModule) -> list[BatchNormTap]:
    """Insert a BatchNormTap before every 2-D batch-norm op whose running statistics are the graph's own tensors."""
    taps: list[BatchNormTap] = []
    for node in list(graph.graph.nodes):
        if node.op != "call_function" or str(node.target) not in BATCH_NORM_OPS:
            continue
        x, mean, var = node.args[0], node.args[3], node.args[4]
        shape = getattr(x.meta.get("val"), "shape", None) if isinstance(x, fx.Node) else None
        if not all(isinstance(n, fx.Node) and n.op == "get_attr" for n in (mean, var)) or (shape is not None and len(shape) != 4):
            continue
        tap = BatchNormTap(_attribute(graph, mean.target), _attribute(graph, var.target))
        name = f"batchnorm_tap_{len(taps)}"
        graph.add_submodule(name, tap)
        with graph.graph.inserting_before(node):
            node.update_arg(0, graph.graph.call_module(name, (x,)))
        taps.append(tap)
    graph.recompile()
    return taps


def _attribute(graph: fx.GraphModule, target: str) -> torch.Tensor:
    value: object = graph
    for part in target.split("."):
        value = getattr(value, part)
    assert isinstance(value, torch.Tensor), target
    return value


def _converted(module: torch.jit.ScriptModule, input_shape: tuple[int, int, int]) -> tuple[fx.GraphModule | None, str]:
    """The TorchScript module as an FX graph that computes the same logits, or None and why not."""
    from torch._export.converter import TS2EPConverter  # torch's own converter; private, so kept to this one place

    device = next(iter([*module.parameters(), *module.buffers()]), torch.empty(0)).device
    probe = torch.randn(4, *input_shape, generator=torch.Generator().manual_seed(0)).to(device)
    try:
        graph = module_of(TS2EPConverter(module, (probe[:2],)).convert())
        with torch.inference_mode():
            same = torch.allclose(graph(probe), module(probe), rtol=1e-3, atol=1e-4)
    except Exception as e:  # the converter does not cover every TorchScript construct
        return None, f"the converter failed ({torch_message(e)[:200]})"
    if not same:
        return None, "the converted graph computes different logits"
    graph.requires_grad_(False)
    return graph, ""
