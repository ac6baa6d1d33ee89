"""The committed gRPC stubs are exactly what the pinned tools generate."""

from __future__ import annotations

import re
from pathlib import Path

import google.protobuf

from protos import codegen


def test_committed_stubs_match_regenerated(tmp_path: Path) -> None:
    generated = codegen.generate(tmp_path)
    assert generated, "no proto files found"
    for path in generated:
        committed = codegen.REPO_ROOT / path.relative_to(tmp_path)
        assert committed.exists(), f"{committed} is missing: run `make protos`"
        assert committed.read_bytes() == path.read_bytes(), f"{committed} is stale: run `make protos`"


def test_stub_gencode_matches_protobuf_runtime() -> None:
    stub = (codegen.REPO_ROOT / "protos/distillery/v1/distillery_pb2.py").read_text()
    gencode = re.search(r"Protobuf Python Version: (\d+)\.(\d+)", stub)
    assert gencode, "generated stub carries no protobuf version"
    runtime_major = int(google.protobuf.__version__.split(".")[0])
    # protobuf accepts gencode of the same major version, not newer than the runtime.
    assert int(gencode.group(1)) == runtime_major
    assert tuple(map(int, gencode.groups())) <= tuple(map(int, google.protobuf.__version__.split(".")[:2]))
