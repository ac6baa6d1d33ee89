"""Teacher files: every supported format loads; pickled objects are refused without running them."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from distill import loading, models


def _model() -> torch.nn.Module:
    return models.build("lenet5", 10, 1).eval()


def test_state_dict_loads_into_the_named_architecture(tmp_path: Path) -> None:
    model = _model()
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    assert loading.detect_format(tmp_path / "sd.pt") == loading.STATE_DICT
    teacher = loading.load_teacher(tmp_path / "sd.pt", loading.STATE_DICT, "lenet5", (1, 28, 28))
    x = torch.randn(3, 1, 28, 28)
    assert torch.allclose(teacher.model(x), model(x))
    assert teacher.num_classes == 10
    with pytest.raises(loading.ModelFileError, match="does not fit architecture"):
        loading.load_teacher(tmp_path / "sd.pt", loading.STATE_DICT, "resnet8_cifar", (1, 28, 28))


def test_torchscript_and_exported_program_load(tmp_path: Path) -> None:
    model = _model()
    x = torch.randn(5, 1, 28, 28)
    torch.jit.save(torch.jit.script(model), tmp_path / "ts.pt")
    # Exported with a static batch of 2: the loader must still take any batch size.
    torch.export.save(torch.export.export(model, (torch.randn(2, 1, 28, 28),)), tmp_path / "m.pt2")
    for name, fmt in (("ts.pt", loading.TORCHSCRIPT), ("m.pt2", loading.EXPORTED_PROGRAM)):
        assert loading.detect_format(tmp_path / name) == fmt
        teacher = loading.load_teacher(tmp_path / name, fmt, "", (1, 28, 28))
        assert torch.allclose(teacher.model(x), model(x), atol=1e-5), name


def test_pickled_module_is_refused_with_advice(tmp_path: Path) -> None:
    torch.save(_model(), tmp_path / "full.pt")
    with pytest.raises(loading.ModelFileError, match="arbitrary code") as info:
        loading.detect_format(tmp_path / "full.pt")
    assert "state_dict" in str(info.value)


class _WritesAFile:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # what an attacker's pickle does on load
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    # Inside a torch-style zip (what torch.save writes), and as a raw pickle.
    with zipfile.ZipFile(tmp_path / "evil.pt", "w") as z:
        z.writestr("evil/data.pkl", pickle.dumps({"weight": _WritesAFile(marker)}, protocol=2))
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(_WritesAFile(marker), protocol=4))
    for name in ("evil.pt", "evil.pkl"):
        with pytest.raises(loading.ModelFileError):
            loading.detect_format(tmp_path / name)
    with pytest.raises(loading.ModelFileError):
        loading.load_teacher(tmp_path / "evil.pt", loading.STATE_DICT, "lenet5", (1, 28, 28))
    assert not marker.exists()


def test_pickle_globals_reads_stack_global_too() -> None:
    names = loading.pickle_globals(pickle.dumps(_WritesAFile(Path("/x")), protocol=4))
    assert "posix.system" in names or "os.system" in names
