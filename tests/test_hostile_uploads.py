"""Hostile uploads against a real server: no file runs code, bombs are refused, the server keeps serving.

Each attack is built in the test (tests/hostile_files.py). A payload that
would run code creates a marker file; none may appear. Refusals are
INVALID_ARGUMENT (a bad file) or RESOURCE_EXHAUSTED (over a limit), with one
line naming the part of the file at fault; never INTERNAL.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import safetensors.torch
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from exporters import onnx_export
from protos.distillery.v1 import distillery_pb2 as pb
from service.artifacts import BlobStore
from service.client import Client, file_sha256
from service.server import spawn_server, stop_server
from service.store import Store
from tests import hostile_files as hostile
from tests.conftest import TINY_DATA, rpc_error, tiny_spec

JOB_MEMORY_LIMIT = 1 << 30
HEALTH_DEADLINE_S = 1.0
GIB = 1 << 30


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[object, str, Path]]:
    """A server of its own: its memory is measured, and its jobs get a 1 GiB memory limit."""
    data_dir = tmp_path_factory.mktemp("hostile-server")
    process, address = spawn_server(data_dir, ["--job-memory-limit", str(JOB_MEMORY_LIMIT)])
    yield process, address, data_dir
    stop_server(process)


@pytest.fixture(scope="module")
def hclient(hostile_server: tuple[object, str, Path]) -> Iterator[Client]:
    with Client(hostile_server[1], timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, tiny_teacher: torch.nn.Module) -> dict[str, Path]:
    """The tiny teacher in every accepted format: what the attacks start from."""
    folder = tmp_path_factory.mktemp("formats")
    torch.save(tiny_teacher.state_dict(), folder / "teacher.pt")
    torch.jit.save(torch.jit.script(tiny_teacher), folder / "teacher.ts")
    example = torch.randn(2, *[TINY_DATA["channels"], TINY_DATA["image_size"], TINY_DATA["image_size"]])
    torch.export.save(torch.export.export(tiny_teacher, (example,)), folder / "teacher.pt2")
    onnx_export.export_onnx(tiny_teacher, example, folder / "teacher.onnx")
    safetensors.torch.save_file(tiny_teacher.state_dict(), folder / "teacher.safetensors")
    return {"state_dict": folder / "teacher.pt", "torchscript": folder / "teacher.ts",
            "exported_program": folder / "teacher.pt2", "onnx": folder / "teacher.onnx",
            "safetensors": folder / "teacher.safetensors"}


def refusal(client: Client, path: Path, architecture: str = "lenet5", model_format: int = 0) -> grpc.RpcError:
    return rpc_error(lambda: client.upload(path, architecture=architecture, model_format=model_format))


def assert_one_line(error: grpc.RpcError, code: grpc.StatusCode, *fragments: str) -> None:
    details = error.details() or ""
    assert error.code() == code, f"{error.code().name}: {details}"
    assert "\n" not in details and "Traceback" not in details, details
    for fragment in fragments:
        assert fragment in details, f"{fragment!r} not in {details!r}"


# ------------------------------------------------------------ files that carry code


def _code_carriers(folder: Path, marker: Path, files: dict[str, Path]) -> dict[str, tuple[Path, str]]:
    """Attack name -> (file, the member the refusal must name)."""
    ts, pt2 = files["torchscript"], files["exported_program"]
    evil_save = hostile.torch_save_bytes({"weight": hostile.touch(marker)})
    weights_config = json.loads(hostile.read_member(pt2, "data/weights/model_weights_config.json"))
    first = next(iter(weights_config["config"].values()))
    first["use_pickle"] = True
    program = json.loads(hostile.read_member(pt2, "models/model.json"))
    tensor = next(iter(program["graph_module"]["graph"]["tensor_values"].values()))
    tensor["sizes"][0] = {"as_expr": {"expr_str": f"__import__('os').system('touch {marker}')", "hint": {"as_int": 2}}}
    constants = {"config": {"c": {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True, "tensor_meta": None}}}
    saving = hostile.script_module(folder, "saves_a_file", (
        "import torch\n"
        "class Model(torch.nn.Module):\n"
        "    def forward(self, x: torch.Tensor) -> torch.Tensor:\n"
        f"        torch.save(x, {str(marker)!r})\n"
        "        return x.flatten(1)[:, :4]\n"
    ))
    torch.jit.save(saving, folder / "saves.ts")
    torch.save({"weight": hostile.touch(marker)}, folder / "evil_state_dict.pt")
    (folder / "raw.pkl").write_bytes(pickle.dumps(hostile.touch(marker)))
    rewrite = hostile.rewrite_archive
    return {
        "torch.save with an unsafe global": (folder / "evil_state_dict.pt", "data.pkl"),
        "torch.save, global fetched from the memo": (
            rewrite(files["state_dict"], folder / "memo.pt", {"data.pkl": hostile.memo_trick_pickle(marker)}), "data.pkl"),
        "raw pickle": (folder / "raw.pkl", "raw pickles"),
        "TorchScript data.pkl, Python pickle": (rewrite(ts, folder / "data.ts", {"data.pkl": hostile.memo_trick_pickle(marker)}), "data.pkl"),
        "TorchScript constants.pkl, protocol 2": (
            rewrite(ts, folder / "constants.ts", {"constants.pkl": pickle.dumps((hostile.touch(marker),), protocol=2)}),
            "constants.pkl"),
        "TorchScript code calling torch.save": (folder / "saves.ts", "calls the operator save"),
        ".pt2 pickled weight": (rewrite(pt2, folder / "weights.pt2", {
            "data/weights/model_weights_config.json": hostile.json_bytes(weights_config),
            f"data/weights/{first['path_name']}": evil_save}), f"data/weights/{first['path_name']}"),
        ".pt2 pickled sample inputs": (
            rewrite(pt2, folder / "inputs.pt2", {"data/sample_inputs/model.pt": evil_save}), "data/sample_inputs/model.pt"),
        ".pt2 Python-pickled constant": (rewrite(pt2, folder / "opaque.pt2", {
            "data/constants/model_constants_config.json": hostile.json_bytes(constants),
            "data/constants/opaque_obj_0": pickle.dumps(hostile.touch(marker))}), "opaque_obj_0"),
        ".pt2 shape expression (sympify)": (
            rewrite(pt2, folder / "sympy.pt2", {"models/model.json": hostile.json_bytes(program)}), "models/model.json"),
        ".pt2 AOTInductor library": (
            rewrite(pt2, folder / "aoti.pt2", {"data/aotinductor/model/model.so": b"\x7fELF"}), "data/aotinductor/model/model.so"),
    }


def test_files_that_would_run_code_are_refused_at_upload_and_nothing_runs(
    hclient: Client, files: dict[str, Path], tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    for attack, (path, member) in _code_carriers(tmp_path, marker, files).items():
        error = refusal(hclient, path)
        assert_one_line(error, grpc.StatusCode.INVALID_ARGUMENT, member)
        assert not marker.exists(), f"{attack}: the payload ran"


def test_a_hostile_file_stored_before_the_checks_fails_its_job_and_runs_nothing(
    hclient: Client, hostile_server: tuple[object, str, Path], files: dict[str, Path], tmp_path: Path
) -> None:
    """The worker checks again: a blob that reached the store some other way is judged before it loads."""
    marker = tmp_path / "pwned"
    path, _ = _code_carriers(tmp_path, marker, files)[".pt2 pickled weight"]
    data_dir = hostile_server[2]
    sha = file_sha256(path)
    blob = BlobStore(data_dir / "blobs", data_dir / "tmp").path(sha)
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(path.read_bytes())
    store = Store(data_dir / "distillery.db")
    try:
        store.put_model(pb.Model(id="m-stored-before", name="old", format=pb.MODEL_FORMAT_EXPORTED_PROGRAM,
                                 sha256=sha, size_bytes=path.stat().st_size))
    finally:
        store.close()
    job = hclient.wait(hclient.create_job(tiny_spec("m-stored-before")).id)
    assert job.state == pb.JOB_STATE_FAILED and job.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0], job.error
    assert "needs unrestricted unpickling" in job.error.message
    assert not marker.exists()


def test_guard_code_in_an_export_never_runs_through_a_job(hclient: Client, files: dict[str, Path], tmp_path: Path) -> None:
    """torch.export carries input guards as Python source that torch would exec; the file is accepted, the source never runs."""
    marker = tmp_path / "pwned"
    program = json.loads(hostile.read_member(files["exported_program"], "models/model.json"))
    program["guards_code"] = [f"__import__('os').system('touch {marker}') == 0"]
    path = hostile.rewrite_archive(files["exported_program"], tmp_path / "guards.pt2",
                                   {"models/model.json": hostile.json_bytes(program)})
    model = hclient.upload(path)
    job = hclient.wait(hclient.create_job(tiny_spec(model.id)).id)
    assert job.state == pb.JOB_STATE_SUCCEEDED, job.error
    assert not marker.exists()


# ------------------------------------------------------------ bombs, under a watch on health and memory


def _resident_bytes(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for pid {pid}")


def test_zip_bombs_are_refused_from_the_directory_while_health_answers(
    hclient: Client, hostile_server: tuple[object, str, Path], files: dict[str, Path], tmp_path: Path
) -> None:
    """10 MB archives that inflate to 10 GiB, shaped as each torch format, honest and lying about their size."""
    process, address, _ = hostile_server
    stream, crc = hostile.deflated_zeros(10 * GIB)
    assert len(stream) < 11 * 10**6
    layouts = {
        "state_dict": ({"version": b"3\n", "byteorder": b"little"}, "data.pkl"),
        "torchscript": ({"version": b"3\n", "constants.pkl": b"\x80\x02).", "data.pkl": b"\x80\x02}."}, "code/__torch__/model.py"),
        "exported_program": ({"archive_format": b"pt2", "archive_version": b"0"}, "models/model.json"),
    }
    bombs = []
    for name, (layout, member) in layouts.items():
        bombs.append((hostile.zip_bomb(tmp_path / f"{name}.zip", layout, member, stream, crc, 10 * GIB), "unpacks to more than"))
        # A directory that lies: the member says 1 KiB; reading stops there and the check fails.
        bombs.append((hostile.zip_bomb(tmp_path / f"{name}-lying.zip", layout, member, stream, crc, 1024), ""))
    before = _resident_bytes(process.pid, "VmRSS")
    with hostile.HealthProbe(address, HEALTH_DEADLINE_S) as health:
        outcomes = [refusal(hclient, path) for path, _ in bombs]
    assert health.latencies and not health.misses, f"health did not answer within {HEALTH_DEADLINE_S} s: {health.misses[:3]}"
    for (path, fragment), error in zip(bombs, outcomes):
        assert error.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED), (path.name, error.details())
        assert fragment in (error.details() or ""), (path.name, error.details())
    growth = _resident_bytes(process.pid, "VmHWM") - before
    assert growth < GIB, f"the server's peak resident memory grew by {growth / GIB:.2f} GiB"
    assert hclient.upload(files["state_dict"], architecture="lenet5").id  # and it still takes a real model


def test_onnx_external_data_and_absurd_sizes_are_refused_before_onnxruntime(hclient: Client, tmp_path: Path) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(bytes(48))
    for location in ("secret.bin", str(secret), "../../distillery.db"):
        error = refusal(hclient, hostile.onnx_matmul(tmp_path / "external.onnx", hostile.external_weight(location)))
        assert_one_line(error, grpc.StatusCode.INVALID_ARGUMENT, "external file")
    error = refusal(hclient, hostile.onnx_matmul(tmp_path / "absurd.onnx", hostile.absurd_weight()))
    assert_one_line(error, grpc.StatusCode.INVALID_ARGUMENT, "declares", "bytes of data")


def test_a_file_that_needs_more_memory_to_load_is_refused_with_the_limit(hclient: Client, tmp_path: Path) -> None:
    """A TorchScript module whose __setstate__ (run at load) asks for 8 GiB: the inspection's memory limit stops it."""
    hog = hostile.script_module(tmp_path, "loads_8_gib", (
        "import torch\n"
        "from typing import Tuple\n"
        "class Model(torch.nn.Module):\n"
        "    def __init__(self) -> None:\n"
        "        super().__init__()\n"
        "        self.w = torch.ones(4)\n"
        "    def forward(self, x: torch.Tensor) -> torch.Tensor:\n"
        "        return x.flatten(1)[:, :4] * self.w\n"
        "    @torch.jit.export\n"
        "    def __getstate__(self) -> Tuple[torch.Tensor, bool]:\n"
        "        return (self.w, self.training)\n"
        "    @torch.jit.export\n"
        "    def __setstate__(self, state: Tuple[torch.Tensor, bool]) -> None:\n"
        "        self.w = state[0] + torch.ones([1 << 31])[0]\n"
        "        self.training = state[1]\n"
    ))
    torch.jit.save(hog, tmp_path / "hog.ts")
    error = refusal(hclient, tmp_path / "hog.ts")
    assert_one_line(error, grpc.StatusCode.RESOURCE_EXHAUSTED, "needed more memory than its limit of 1024 MiB")


# ------------------------------------------------------------ broken and mislabelled files


def test_truncated_and_mislabelled_files_are_invalid_arguments(hclient: Client, files: dict[str, Path], tmp_path: Path) -> None:
    for name, path in files.items():
        data = path.read_bytes()
        for cut in (len(data) // 2, len(data) - 30):
            truncated = tmp_path / f"{name}-{cut}"
            truncated.write_bytes(data[:cut])
            assert_one_line(refusal(hclient, truncated), grpc.StatusCode.INVALID_ARGUMENT)
    claimed = {"state_dict": pb.MODEL_FORMAT_TORCHSCRIPT, "torchscript": pb.MODEL_FORMAT_EXPORTED_PROGRAM,
               "exported_program": pb.MODEL_FORMAT_ONNX, "onnx": pb.MODEL_FORMAT_SAFETENSORS,
               "safetensors": pb.MODEL_FORMAT_STATE_DICT}
    for name, model_format in claimed.items():
        error = refusal(hclient, files[name], model_format=model_format)
        assert_one_line(error, grpc.StatusCode.INVALID_ARGUMENT, "the header says", pb.ModelFormat.Name(model_format))


def test_every_format_is_accepted_untouched(hclient: Client, files: dict[str, Path]) -> None:
    """The checks refuse attacks, not models: the files the attacks start from all upload."""
    formats = {name: hclient.upload(path, architecture="lenet5").format for name, path in files.items()}
    assert formats == {"state_dict": pb.MODEL_FORMAT_STATE_DICT, "torchscript": pb.MODEL_FORMAT_TORCHSCRIPT,
                       "exported_program": pb.MODEL_FORMAT_EXPORTED_PROGRAM, "onnx": pb.MODEL_FORMAT_ONNX,
                       "safetensors": pb.MODEL_FORMAT_SAFETENSORS}


def test_safetensors_that_lie_about_their_tensors_are_refused(hclient: Client, files: dict[str, Path], tmp_path: Path) -> None:
    """The header is all a safetensors file has: lengths, shapes and offsets that do not add up are refused before
    any tensor is read, and weights without an architecture are refused too."""
    def with_header(name: str, header: bytes, payload: bytes = b"\0" * 64) -> Path:
        path = tmp_path / name
        path.write_bytes(len(header).to_bytes(8, "little") + header + payload)
        return path

    huge = hostile.json_bytes({"w": {"dtype": "F32", "shape": [1 << 20, 1 << 20], "data_offsets": [0, 64]}})
    past_the_end = hostile.json_bytes({"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 1 << 40]}})
    for path in (with_header("huge.safetensors", huge), with_header("past-end.safetensors", past_the_end)):
        assert_one_line(refusal(hclient, path), grpc.StatusCode.INVALID_ARGUMENT, "safetensors")
    claims_a_petabyte = tmp_path / "claims.safetensors"
    claims_a_petabyte.write_bytes((1 << 50).to_bytes(8, "little") + b"{}")  # not read: it cannot fit the file
    assert_one_line(refusal(hclient, claims_a_petabyte), grpc.StatusCode.INVALID_ARGUMENT, "neither")
    assert_one_line(refusal(hclient, files["safetensors"], architecture=""), grpc.StatusCode.INVALID_ARGUMENT,
                    "MODEL_FORMAT_SAFETENSORS holds weights only")


# ------------------------------------------------------------ the worker's memory limit


def test_a_teacher_over_the_job_memory_limit_fails_with_resource_exhausted(
    hclient: Client, hostile_server: tuple[object, str, Path], tmp_path: Path
) -> None:
    hog = hostile.script_module(tmp_path, "asks_for_8_gib", (
        "import torch\n"
        "class Model(torch.nn.Module):\n"
        "    def forward(self, x: torch.Tensor) -> torch.Tensor:\n"
        "        big = torch.ones([1 << 31])\n"
        "        return x.flatten(1)[:, :4] + big[0]\n"
    ))
    torch.jit.save(hog, tmp_path / "hog.ts")
    model = hclient.upload(tmp_path / "hog.ts")
    job = hclient.wait(hclient.create_job(tiny_spec(model.id)).id)
    assert job.state == pb.JOB_STATE_FAILED and job.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], job.error
    assert "--job-memory-limit" in job.error.message and "1.0 GiB" in job.error.message, job.error.message
    with grpc.insecure_channel(hostile_server[1]) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=HEALTH_DEADLINE_S)
    assert check.status == health_pb2.HealthCheckResponse.SERVING
