"""Hostile model files, built the way an attacker would: a few lines each, no binary blobs in the repo.

Every payload that runs code creates a marker file; a test passes only if the
marker never appears. ``HealthProbe`` watches the server while they arrive.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import struct
import sys
import threading
import time
import zipfile
import zlib
from pathlib import Path

import grpc
import onnx
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from onnx import TensorProto, helper

ONE_MIB = 1 << 20


class RunsShell:
    """What an attacker pickles: loading it calls ``os.system``."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (self.command,))


def touch(marker: Path) -> RunsShell:
    return RunsShell(f"touch {marker}")


def memo_trick_pickle(marker: Path) -> bytes:
    """Protocol 4, with STACK_GLOBAL's module and name fetched from the memo (a scanner that reads
    only the strings just before STACK_GLOBAL sees other names)."""
    command = f"touch {marker}".encode()
    assert len(command) < 256
    return (
        b"\x80\x04"
        + b"\x8c\x05posix\x940"  # SHORT_BINUNICODE 'posix', MEMOIZE (0), POP
        + b"\x8c\x06system\x940"  # 'system', MEMOIZE (1), POP
        + b"\x8c\x0bcollections\x8c\x0bOrderedDict\x30\x30"  # two harmless strings, popped
        + b"h\x00h\x01\x93"  # BINGET 0, BINGET 1, STACK_GLOBAL -> posix.system
        + b"\x8c" + bytes([len(command)]) + command  # SHORT_BINUNICODE: the shell command
        + b"\x85R."  # TUPLE1, REDUCE, STOP
    )


def rewrite_archive(source: Path, target: Path, edits: dict[str, bytes | None]) -> Path:
    """Copy a torch archive, replacing (bytes), removing (None) or adding members named below its root folder."""
    edits = dict(edits)
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w") as zout:
        root = zin.namelist()[0].split("/", 1)[0]
        for info in zin.infolist():
            member = info.filename.split("/", 1)[1]
            data = edits.pop(member) if member in edits else zin.read(info.filename)
            if data is not None:
                zout.writestr(info, data)
        for member, data in edits.items():
            if data is not None:
                zout.writestr(f"{root}/{member}", data)
    return target


def read_member(archive: Path, member: str) -> bytes:
    with zipfile.ZipFile(archive) as z:
        root = z.namelist()[0].split("/", 1)[0]
        return z.read(f"{root}/{member}")


def torch_save_bytes(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def script_module(folder: Path, name: str, source: str) -> torch.jit.ScriptModule:
    """Script a module written as source (TorchScript needs the .py file), as an attacker's own would be."""
    path = folder / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return torch.jit.script(module.Model())


# ---------------------------------------------------------------- zip bombs


def deflated_zeros(inflated_bytes: int) -> tuple[bytes, int]:
    """A raw deflate stream of ``inflated_bytes`` zeros (~1,000:1) and its CRC-32, built in seconds.

    After a full flush deflate restarts from an empty window, so every MiB of
    zeros compresses to the same bytes: the stream is one block repeated.
    """
    assert inflated_bytes % ONE_MIB == 0
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(bytes(ONE_MIB)) + compressor.flush(zlib.Z_FULL_FLUSH)
    stream = block * (inflated_bytes // ONE_MIB) + compressor.flush(zlib.Z_FINISH)
    zeros, crc = bytes(64 * ONE_MIB), 0
    for _ in range(inflated_bytes // len(zeros)):
        crc = zlib.crc32(zeros, crc)
    crc = zlib.crc32(bytes(inflated_bytes % len(zeros)), crc)
    return stream, crc


def write_zip64(path: Path, members: list[tuple[str, bytes, int, int, int]]) -> Path:
    """A zip (ZIP64 sizes throughout) from (name, stored bytes, method, CRC-32, declared size) entries.

    Written by hand because zipfile would inflate nothing but also compress
    everything itself: a bomb needs its stream and its declared size chosen.
    """
    local, central = io.BytesIO(), io.BytesIO()
    for name, data, method, crc, size in members:
        offset = local.tell()
        encoded = name.encode()
        extra = struct.pack("<HHQQ", 1, 16, size, len(data))
        local.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, method, 0, 0x21, crc, 0xFFFFFFFF, 0xFFFFFFFF, len(encoded), len(extra)))
        local.write(encoded + extra + data)
        extra = struct.pack("<HHQQQ", 1, 24, size, len(data), offset)
        central.write(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, method, 0, 0x21, crc, 0xFFFFFFFF, 0xFFFFFFFF,
                                  len(encoded), len(extra), 0, 0, 0, 0, 0xFFFFFFFF))
        central.write(encoded + extra)
    start, directory = local.tell(), central.getvalue()
    end64 = start + len(directory)
    n = len(members)
    with open(path, "wb") as f:
        f.write(local.getvalue() + directory)
        f.write(struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, n, n, len(directory), start))
        f.write(struct.pack("<IIQI", 0x07064B50, 0, end64, 1))
        f.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0))
    return path


def zip_bomb(path: Path, layout: dict[str, bytes], bomb_member: str, stream: bytes, crc: int, declared: int) -> Path:
    """A torch-shaped archive (``layout``'s members, stored) whose ``bomb_member`` is the deflate ``stream``.

    ``declared`` is the size the directory states: the true inflated size for
    an honest bomb, a small one for a directory that lies.
    """
    members = [(f"archive/{name}", data, zipfile.ZIP_STORED, zlib.crc32(data), len(data)) for name, data in layout.items()]
    members.append((f"archive/{bomb_member}", stream, zipfile.ZIP_DEFLATED, crc, declared))
    return write_zip64(path, members)


# ---------------------------------------------------------------- ONNX


def onnx_matmul(path: Path, weight: TensorProto, extra_nodes: list[onnx.NodeProto] | None = None) -> Path:
    """An ONNX classifier y = x @ W (x: N x 4) around the given weight tensor, saved as one file."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", weight.name], ["y"]), *(extra_nodes or [])],
        "hostile",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path.write_bytes(model.SerializeToString())
    return path


def external_weight(location: str) -> TensorProto:
    """A weight whose bytes onnxruntime would read from ``location`` (relative to the model's folder)."""
    tensor = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[4, 3], data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", "0"), ("length", "48")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def absurd_weight() -> TensorProto:
    """A weight declaring 4 x 2^38 floats (4 TiB) with 48 bytes of data."""
    return TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[4, 1 << 38], raw_data=bytes(48))


def json_bytes(document: object) -> bytes:
    return json.dumps(document).encode()


class HealthProbe:
    """Asks the server's health over and over, on a channel of its own, each call with ``deadline_s``; records
    every answer's latency (seconds) and every miss, until the ``with`` block ends."""

    def __init__(self, address: str, deadline_s: float = 1.0) -> None:
        self.address, self.deadline_s = address, deadline_s
        self.latencies: list[float] = []
        self.misses: list[str] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while not self._done.is_set():
                started = time.perf_counter()
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(), timeout=self.deadline_s).status
                except grpc.RpcError as e:
                    self.misses.append(f"{e.code().name}: {e.details()}")
                    continue
                if status == health_pb2.HealthCheckResponse.SERVING:
                    self.latencies.append(time.perf_counter() - started)
                else:
                    self.misses.append(f"status {status}")
