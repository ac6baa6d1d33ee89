"""Generate the Python gRPC stubs from protos/distillery/v1/*.proto.

The stubs are committed next to the .proto files. They are generated with the
repository root as the import root, so they import as
``protos.distillery.v1.distillery_pb2``. ``tests/test_protos.py`` regenerates
them and fails when the committed copies differ, so the stubs, grpcio-tools
and the protobuf runtime cannot drift apart unnoticed.

Usage: python -m protos.codegen [OUT_DIR]   (default: the repository root)
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_FILES = sorted(
    p.relative_to(REPO_ROOT).as_posix() for p in (REPO_ROOT / "protos").rglob("*.proto")
)


def generate(out_dir: Path = REPO_ROOT) -> list[Path]:
    """Write *_pb2.py, *_pb2.pyi and *_pb2_grpc.py for every proto under out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    well_known = str(resources.files("grpc_tools") / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{REPO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *PROTO_FILES,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    return [
        out_dir / Path(proto).with_name(Path(proto).stem + suffix)
        for proto in PROTO_FILES
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
    ]


if __name__ == "__main__":
    for path in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO_ROOT):
        print(path)
