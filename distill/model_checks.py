"""Checks a PyTorch model archive before anything loads it: nothing in it may run code.

A user's file is hostile until these checks pass. They read the zip directory
first (sizes, compression ratios, duplicate names) and then every member torch
would interpret, as streams, without loading anything:

- torch.save (a state_dict): ``data.pkl`` may name only the globals torch's
  ``weights_only`` unpickler allows (``torch.serialization.get_unsafe_globals_in_checkpoint``);
  loading then uses ``weights_only=True`` as well.
- TorchScript: every pickle (data, constants, debug info) may name only
  TorchScript's own types and tensor rebuilders, in protocol 2 (what torch's
  C++ unpickler reads); the code may not call an operator that reads or
  writes files (``torch.save``, ``torch.from_file``, torchvision's image file ops).
- torch.export (.pt2): only the members ``torch.export.save`` writes; pickled
  weights, constants and sample inputs are torch.save payloads checked as
  above (and loaded with ``weights_only`` forced, see ``loading``); Python-
  pickled and TorchBind constants and AOTInductor libraries are refused; the
  graph may call no file operator, and its symbolic-shape expressions (which
  torch evaluates with ``sympy.sympify``) and input/output tree specs (which
  can name a module to import) must be plain.
"""

from __future__ import annotations

import ast
import collections
import functools
import io
import json
import pickle
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

import torch
import torch._weights_only_unpickler as weights_only_unpickler
import torch.utils._sympy.functions
import torchvision  # noqa: F401  registers torchvision's operators, file readers and writers among them, which a file could call

TORCHSCRIPT = "torchscript"
EXPORTED_PROGRAM = "exported_program"
STATE_DICT = "state_dict"
SAFETENSORS = "safetensors"
# The safetensors library refuses headers over 100 MB; a file claiming more is not one.
_SAFETENSORS_MAX_HEADER = 100_000_000

WHAT_TO_SEND = (
    "send torch.save(model.state_dict()) or a safetensors file with an architecture name, "
    "a TorchScript archive (torch.jit.save(torch.jit.script(model))), "
    "or a torch.export program (torch.export.save)"
)


def is_safetensors(path: Path) -> bool:
    """Whether the file is laid out as safetensors: an 8-byte little-endian header length that fits the file and
    the library's bound, then a JSON object. Reads 9 bytes; ``safetensors`` parses and bounds-checks the rest."""
    size = path.stat().st_size
    if size < 10:
        return False
    with open(path, "rb") as f:
        head = f.read(9)
    length = int.from_bytes(head[:8], "little")
    return 2 <= length <= min(size - 8, _SAFETENSORS_MAX_HEADER) and head[8:9] == b"{"


class ModelFileError(ValueError):
    """The file is not a model this service can load, or not safely."""


@dataclass(frozen=True)
class ArchiveLimits:
    """What an archive may unpack to. The server derives ``max_inflated_bytes`` from --max-upload-bytes."""

    max_inflated_bytes: int
    # Torch writes its archives stored (ratio 1); TorchScript code is deflated about 3-10x.
    max_ratio: float = 100.0
    max_members: int = 100_000


# Members are inflated this much at a time (see read_member).
_CHUNK_BYTES = 1 << 20
# A member this small cannot be a bomb whatever its ratio (a 4 KiB file of one repeated line compresses 100x).
_RATIO_EXEMPT_BYTES = 1 << 20


def check_directory(archive: zipfile.ZipFile, limits: ArchiveLimits) -> None:
    """Refuse an archive from its directory alone, before a byte of any member is read."""
    members = archive.infolist()
    if len(members) > limits.max_members:
        raise ModelFileError(f"the archive has {len(members)} members; at most {limits.max_members} are accepted")
    duplicates = [name for name, n in collections.Counter(m.filename for m in members).items() if n > 1]
    if duplicates:
        # Readers disagree on which copy of a duplicated name wins: a checked member could differ from the loaded one.
        raise ModelFileError(f"the archive holds {duplicates[0]!r} more than once")
    total = 0
    for member in members:
        if member.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ModelFileError(f"{member.filename}: compression method {member.compress_type} is not accepted (stored or deflated only)")
        total += member.file_size
        if total > limits.max_inflated_bytes:
            raise ModelFileError(
                f"the archive unpacks to more than {limits.max_inflated_bytes} bytes, this server's limit (--max-upload-bytes)"
            )
        if member.file_size > _RATIO_EXEMPT_BYTES and member.file_size > limits.max_ratio * max(member.compress_size, 1):
            raise ModelFileError(
                f"{member.filename} is compressed {member.file_size / max(member.compress_size, 1):.0f}:1, "
                f"more than the {limits.max_ratio:.0f}:1 a model archive can have (a zip bomb?)"
            )


def check_torch_archive(file: str | IO[bytes], limits: ArchiveLimits) -> str:
    """The format of a torch archive (TORCHSCRIPT, EXPORTED_PROGRAM or STATE_DICT), once it is known safe to load.

    Raises ModelFileError, naming the member, for anything unsafe or unknown.
    """
    try:
        with zipfile.ZipFile(file) as archive:
            check_directory(archive, limits)
            fmt, root = _layout(archive.namelist())
            _check_torch_reads_the_same(archive, root, file)
            _CHECKS[fmt](archive, root, file)
            return fmt
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, NotImplementedError) as e:
        raise ModelFileError(f"corrupt model archive: {e}") from e


def _check_torch_reads_the_same(archive: zipfile.ZipFile, root: str, file: str | IO[bytes]) -> None:
    """torch reads archives with its own zip reader (miniz); the checks read them with Python's.

    A crafted zip can look different to the two (prepended data, a second
    directory): the members checked would not be the members loaded. Both
    readers must see the same members at the same offsets with the same sizes.
    """
    if not isinstance(file, str):
        file.seek(0)
    try:
        reader = torch._C.PyTorchFileReader(file)
        records = set(reader.get_all_records())
        ours = {info.filename[len(root) + 1 :]: info for info in archive.infolist() if not info.is_dir()}
        # torch before 2.12 has no get_record_size: read the record's length (loading reads every record anyway).
        size = getattr(reader, "get_record_size", None) or (lambda name: len(reader.get_record(name)))
        same = records == set(ours) and all(
            reader.get_record_header_offset(name) == info.header_offset and size(name) == info.file_size
            for name, info in ours.items()
        )
    except RuntimeError as e:
        raise ModelFileError(f"torch cannot read the archive: {torch_message(e)}") from e
    if not same:
        raise ModelFileError("the archive reads differently to torch's zip reader and to Python's (a crafted zip?)")


def _layout(names: list[str]) -> tuple[str, str]:
    """(format, root folder): torch writes every member under one folder named after the file."""
    roots = {name.split("/", 1)[0] for name in names}
    if len(roots) != 1 or any("/" not in name for name in names):
        raise ModelFileError(f"the zip archive is not a torch.save, TorchScript or torch.export file; {WHAT_TO_SEND}")
    root = roots.pop()
    members = {name[len(root) + 1 :] for name in names}
    if "archive_format" in members:
        return EXPORTED_PROGRAM, root
    if "constants.pkl" in members and any(m.startswith("code/") for m in members):
        return TORCHSCRIPT, root
    if "data.pkl" in members:
        return STATE_DICT, root
    raise ModelFileError(f"the zip archive is not a torch.save, TorchScript or torch.export file; {WHAT_TO_SEND}")


def read_member(archive: zipfile.ZipFile, name: str) -> bytes:
    """A member's bytes, inflated a MiB at a time up to its declared size (the directory was checked).

    ``read()`` in one call would inflate all the compressed data it reads before
    cutting it to the declared size: gigabytes, when the directory understates it.
    """
    info = archive.getinfo(name)
    chunks, left = [], info.file_size
    with archive.open(info) as stream:
        while left > 0 and (chunk := stream.read(min(left, _CHUNK_BYTES))):
            chunks.append(chunk)
            left -= len(chunk)
    return b"".join(chunks)


# ------------------------------------------------------------------ pickles


def _globals_in(stream: IO[bytes], member: str) -> set[str]:
    """Every global a pickle names, read as a stream with torch's own opcode scanner (nothing runs)."""
    try:
        return weights_only_unpickler.get_globals_in_pkl(stream)
    except (pickle.UnpicklingError, EOFError, ValueError, IndexError, TypeError) as e:
        # The scanner knows the opcodes torch's picklers write (protocol 2); anything else is refused.
        raise ModelFileError(f"{member} is not a pickle torch writes ({e or type(e).__name__}); loading it could run arbitrary code") from e


def _refuse_unsafe(member: str, unsafe: list[str] | set[str]) -> None:
    if unsafe:
        names = sorted(unsafe)
        raise ModelFileError(
            f"{member} needs unrestricted unpickling (it names {', '.join(names[:3])}{', ...' if len(names) > 3 else ''}), "
            f"which would run arbitrary code; {WHAT_TO_SEND}"
        )


def check_torch_save(payload: str | IO[bytes], member: str) -> None:
    """A torch.save payload (a file, or a nested one read into memory) names only weights_only-safe globals."""
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(payload)
    except (pickle.UnpicklingError, EOFError) as e:
        raise ModelFileError(
            f"{member} is not a pickle torch's safe scanner can read ({e}): the file is corrupt, "
            "or was saved with a pickle protocol above torch.save's default"
        ) from e
    except (RuntimeError, ValueError) as e:  # torch's reader refuses a malformed or non-torch.save archive
        raise ModelFileError(f"{member} is not a readable torch.save payload: {torch_message(e)}") from e
    _refuse_unsafe(f"{member} (data.pkl)" if member != "data.pkl" else member, unsafe)


def _check_state_dict(archive: zipfile.ZipFile, root: str, file: str | IO[bytes]) -> None:
    if not isinstance(file, str):
        file.seek(0)
    check_torch_save(file, "data.pkl")


# What TorchScript's C++ unpickler resolves: its own classes, tensor rebuilders and list helpers.
_TORCHSCRIPT_GLOBAL = re.compile(
    r"__torch__\..+|torch\.jit\._pickle\.\w+|torch\._utils\._rebuild_\w+|torch\.\w+Storage|"
    r"collections\.OrderedDict|builtins\.set|torch\.device"
)


def _check_torchscript(archive: zipfile.ZipFile, root: str, file: str | IO[bytes]) -> None:
    for name in archive.namelist():
        member = name[len(root) + 1 :]
        if member.endswith((".pkl", ".debug_pkl")):
            with archive.open(name) as stream:
                _refuse_unsafe(member, {g for g in _globals_in(stream, member) if not _TORCHSCRIPT_GLOBAL.fullmatch(g)})
        elif member.startswith("code/") and member.endswith(".py"):
            source = read_member(archive, name).decode("utf-8", "replace")
            called = {m.group(1) for m in _CALL.finditer(source)} & file_operators()
            if called:
                raise ModelFileError(f"{member} calls the operator {', '.join(sorted(called))}, which reads or writes the server's files")


_CALL = re.compile(r"\.(\w+)\s*\(")


@functools.cache
def file_operators() -> frozenset[str]:
    """Names of the registered operators that read or write files (a str argument naming a file or path)."""
    names = set()
    for schema in torch._C._jit_get_all_schemas():
        if any(
            str(arg.type).rstrip("?") == "str" and any(k in arg.name.lower() for k in ("file", "path", "dir"))
            for arg in schema.arguments
        ):
            names.add(schema.name.split("::", 1)[1])
    return frozenset(names)


def torch_message(error: BaseException) -> str:
    """The first line of what torch said, without its plea for a better message."""
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return re.sub(r"\s*(\(Could this error message be improved\?|This is an internal miniz error).*", "", text)


# ------------------------------------------------------------------ torch.export


def _check_exported_program(archive: zipfile.ZipFile, root: str, file: str | IO[bytes]) -> None:
    members = {name[len(root) + 1 :]: name for name in archive.namelist()}
    for member in members:
        if not _PT2_MEMBER.fullmatch(member):
            what = "AOTInductor compiled code" if member.startswith("data/aotinductor/") else "a member torch.export.save does not write"
            raise ModelFileError(f"{member}: {what} is not accepted in a torch.export program")
    pickled: list[str] = [m for m in members if m.startswith("data/sample_inputs/")]
    for config_member in (m for m in members if m.endswith("_config.json")):
        folder = str(PurePosixPath(config_member).parent)
        for fqn, entry in _read_json(archive, members[config_member], config_member).get("config", {}).items():
            path_name = str(entry.get("path_name", ""))
            payload = f"{folder}/{path_name}"
            if payload not in members:
                raise ModelFileError(f"{config_member}: {fqn} points to {path_name!r}, which the archive does not hold")
            if not path_name.startswith(("weight_", "tensor_")):  # custom_obj_ (TorchBind), opaque_obj_ (Python pickle)
                raise ModelFileError(f"{payload}: the constant {fqn} is a pickled Python or TorchBind object; only tensors are accepted")
            if entry.get("use_pickle"):
                pickled.append(payload)
    # Legacy single-file weights and constants are torch.save payloads too.
    pickled += [m for m in members if re.fullmatch(r"data/(weights|constants)/[^/]+\.pt", m)]
    for member in pickled:
        check_torch_save(io.BytesIO(read_member(archive, members[member])), member)
    for member in (m for m in members if m.startswith("models/")):
        _check_program_json(_read_json(archive, members[member], member), member)


_PT2_MEMBER = re.compile(
    r"archive_format|archive_version|byteorder|version|\.data/version|\.data/serialization_id|"
    r"models/[^/]+\.json|data/(weights|constants)/[^/]+|data/sample_inputs/[^/]+\.pt|extra/[^/]+"
)


def _read_json(archive: zipfile.ZipFile, name: str, member: str) -> Any:
    try:
        return json.loads(read_member(archive, name))
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelFileError(f"{member} is not valid JSON: {e}") from e


def _walk(value: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    """Every (key, value) pair in a JSON document, depth first."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield k, v
            yield from _walk(v, k)
    elif isinstance(value, list):
        for v in value:
            yield from _walk(v, key)


def _check_program_json(program: Any, member: str) -> None:
    forbidden = file_operators()
    if isinstance(program, dict):
        for symbol in program.get("range_constraints", {}) or {}:
            check_sympy_expression(symbol, member)
    for key, value in _walk(program):
        if key == "expr_str" and isinstance(value, str):
            check_sympy_expression(value, member)
        elif key == "target" and isinstance(value, str):
            op = value.removeprefix("torch.ops.").split(".")
            if len(op) >= 2 and op[1] in forbidden:
                raise ModelFileError(f"{member}: the graph calls {value}, which reads or writes the server's files")
        elif key in ("in_spec", "out_spec") and isinstance(value, str) and value:
            _check_treespec(value, member)


# The callables symbolic shapes are written with: sympy's srepr of its core types, and torch's own shape functions.
_SYMPY_CALLABLES = frozenset(
    "Symbol Integer Rational Float Add Mul Pow Mod Max Min Abs Eq Ne Lt Le Gt Ge StrictLessThan LessThan "
    "StrictGreaterThan GreaterThan Equality Unequality And Or Not Piecewise ExprCondPair floor ceiling".split()
) | frozenset(torch.utils._sympy.functions.__all__)
_SYMPY_NAMES = frozenset("oo zoo nan true false True False None pi E".split())
_SYMBOL = re.compile(r"[a-z]+[0-9]+")
_NUMBER = re.compile(r"[-+]?[0-9.]+(e[-+]?[0-9]+)?")  # Float('1.5', precision=53)


def check_sympy_expression(text: str, member: str) -> None:
    """An expression torch will ``sympy.sympify`` (an ``eval``) is only numbers, symbols and sympy calls."""
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise ModelFileError(f"{member}: the shape expression {text[:80]!r} is not a sympy expression") from e
    for node in ast.walk(tree):
        plain = isinstance(
            node,
            (ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.keyword, ast.Load,
             ast.operator, ast.unaryop, ast.cmpop, ast.boolop),
        )
        if isinstance(node, ast.Call):
            plain = isinstance(node.func, ast.Name) and node.func.id in _SYMPY_CALLABLES
        elif isinstance(node, ast.Name):
            plain = node.id in _SYMPY_CALLABLES or node.id in _SYMPY_NAMES or bool(_SYMBOL.fullmatch(node.id))
        elif isinstance(node, ast.Constant):
            plain = isinstance(node.value, (int, float, bool, type(None))) or (
                isinstance(node.value, str) and bool(_SYMBOL.fullmatch(node.value) or _NUMBER.fullmatch(node.value))
            )
        if not plain:
            raise ModelFileError(f"{member}: the shape expression {text[:80]!r} is not a plain sympy expression")


# Containers a classifier's inputs and outputs come in; other tree-spec types can name a module to import.
_TREESPEC_TYPES = {None, "builtins.tuple", "builtins.list", "builtins.dict", "collections.OrderedDict"}


def _check_treespec(text: str, member: str) -> None:
    try:
        spec = json.loads(text)
    except ValueError as e:
        raise ModelFileError(f"{member}: a tree spec is not valid JSON") from e
    nodes = [spec[1] if isinstance(spec, list) and len(spec) == 2 else spec]
    while nodes:
        node = nodes.pop()
        if not isinstance(node, dict):
            raise ModelFileError(f"{member}: a tree spec is malformed")
        if node.get("type") not in _TREESPEC_TYPES or "__enum__" in json.dumps(node.get("context")):
            raise ModelFileError(f"{member}: inputs or outputs of type {node.get('type')!r} are not accepted (tensors, tuples, lists and dicts are)")
        nodes.extend(node.get("children_spec") or [])


_CHECKS = {STATE_DICT: _check_state_dict, TORCHSCRIPT: _check_torchscript, EXPORTED_PROGRAM: _check_exported_program}
