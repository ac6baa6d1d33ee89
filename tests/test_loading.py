"""Teacher files: every supported format loads; pickled objects are refused without running them."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from distill import loading, model_checks, models
from tests.hostile_files import memo_trick_pickle

LIMITS = model_checks.ArchiveLimits(max_inflated_bytes=1 << 30)


def detect(path: Path) -> str:
    return model_checks.check_torch_archive(str(path), LIMITS)


def _model() -> torch.nn.Module:
    return models.build("lenet5", 10, 1).eval()


def test_state_dict_loads_into_the_named_architecture(tmp_path: Path) -> None:
    model = _model()
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    assert detect(tmp_path / "sd.pt") == loading.STATE_DICT
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
        assert detect(tmp_path / name) == fmt
        teacher = loading.load_teacher(tmp_path / name, fmt, "", (1, 28, 28))
        assert torch.allclose(teacher.model(x), model(x), atol=1e-5), name


def test_pickled_module_is_refused_with_advice(tmp_path: Path) -> None:
    torch.save(_model(), tmp_path / "full.pt")
    with pytest.raises(loading.ModelFileError, match="arbitrary code") as info:
        detect(tmp_path / "full.pt")
    assert "state_dict" in str(info.value)


class _WritesAFile:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # what an attacker's pickle does on load
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    # In what torch.save writes, and as a raw pickle.
    torch.save({"weight": _WritesAFile(marker)}, tmp_path / "evil.pt")
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(_WritesAFile(marker), protocol=4))
    with pytest.raises(loading.ModelFileError, match="data.pkl needs unrestricted unpickling"):
        detect(tmp_path / "evil.pt")
    with pytest.raises(loading.ModelFileError, match="not a zip file"):
        detect(tmp_path / "evil.pkl")
    with pytest.raises(loading.ModelFileError):
        loading.load_teacher(tmp_path / "evil.pt", loading.STATE_DICT, "lenet5", (1, 28, 28))
    assert not marker.exists()


def test_a_global_fetched_from_the_pickle_memo_is_refused_too(tmp_path: Path) -> None:
    """Protocol 4 can name its global with strings fetched from the memo; the scanner must not guess."""
    marker = tmp_path / "pwned"
    with zipfile.ZipFile(tmp_path / "memo.pt", "w") as z:
        z.writestr("memo/data.pkl", memo_trick_pickle(marker))
        z.writestr("memo/version", "3\n")
    with pytest.raises(loading.ModelFileError, match="data.pkl"):
        detect(tmp_path / "memo.pt")
    assert not marker.exists()


def test_an_archive_naming_a_member_twice_is_refused(tmp_path: Path) -> None:
    """Zip readers disagree on which copy wins: the one checked could be other than the one loaded."""
    torch.save(_model().state_dict(), tmp_path / "sd.pt")
    with zipfile.ZipFile(tmp_path / "sd.pt", "a") as z, pytest.warns(UserWarning, match="Duplicate name"):
        z.writestr(z.namelist()[0], b"\x80\x02}.")
    with pytest.raises(loading.ModelFileError, match="more than once"):
        detect(tmp_path / "sd.pt")
