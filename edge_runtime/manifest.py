"""The export folder contract: read, validate and write `manifest.json`, and check file checksums.

`dynalora.export` writes a folder (model.onnx, tokenizer files, config.json, maybe adapters/ and
torch/) and then calls `write_manifest(folder, manifest)`, which records a sha256 for every file.
`dynalora.edge_runtime` calls `read_manifest` + `verify_checksums` before loading anything, so a
truncated copy or a hand-edited model is refused with the name of the file that changed.

    from dynalora.edge_runtime.manifest import read_manifest, verify_checksums
    manifest = read_manifest("exports/rt")      # ExportFormatError if this is not an export folder
    verify_checksums("exports/rt", manifest)     # ChecksumError naming the missing / changed file
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from dynalora.atomic import write_json
from dynalora.errors import DynaloraError

MANIFEST_NAME = "manifest.json"
FORMAT = "dynalora-export"
FORMAT_VERSION = 1
KINDS = ("merged", "adapters", "fused", "base")
PROBLEMS = ("classification", "regression", "causal-lm")
PRECISIONS = ("fp32", "fp16", "int8", "int4")


class ExportFormatError(DynaloraError):
    """A folder that is not a (readable, supported) dynalora export."""


class ChecksumError(ExportFormatError):
    """A file listed in the manifest is missing or its content changed after export."""


@dataclass(frozen=True)
class Manifest:
    """The validated fields of manifest.json that the runtime uses; `raw` keeps the whole document."""

    kind: str
    problem: str
    label_names: tuple[str, ...]
    model_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    precision: str
    max_length: int | None
    model_file: str
    adapters: Mapping[str, str] = field(default_factory=dict)
    verification: Mapping[str, Any] | None = None
    files: Mapping[str, str] = field(default_factory=dict)
    raw: Mapping[str, Any] = field(default_factory=dict)


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks so multi-GB weights never sit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def _safe_relpath(folder: Path, rel: str) -> Path:
    """Resolve a manifest path inside `folder`; refuse absolute paths and `..` escapes."""
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts or not pure.parts:
        raise ExportFormatError(f"{folder / MANIFEST_NAME} lists an unsafe path {rel!r}; paths must be relative "
                                "and stay inside the export folder")
    return folder.joinpath(*pure.parts)


def parse_manifest(data: Mapping[str, Any], where: str = MANIFEST_NAME) -> Manifest:
    """Validate a manifest dict (already loaded) and return the typed view; `where` names it in errors."""
    if not isinstance(data, Mapping) or data.get("format") != FORMAT:
        raise ExportFormatError(f"{where} is not a dynalora export manifest (expected \"format\": \"{FORMAT}\"); "
                                "re-create the folder with `dynalora export`")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise ExportFormatError(f"{where} has unknown format_version {version!r}; this dynalora reads version "
                                f"{FORMAT_VERSION}: upgrade dynalora or re-export with this version")

    def need(key: str, mapping: Mapping[str, Any] = data, prefix: str = "") -> Any:
        if key not in mapping:
            raise ExportFormatError(f"{where} is missing the field {prefix + key!r}; re-export the model")
        return mapping[key]

    kind = need("kind")
    if kind not in KINDS:
        raise ExportFormatError(f"{where} has kind {kind!r}; expected one of {', '.join(KINDS)}")
    task = need("task")
    if not isinstance(task, Mapping):
        raise ExportFormatError(f"{where} field 'task' must be an object with 'name' and 'problem'")
    problem = need("problem", task, "task.")
    if problem not in PROBLEMS:
        raise ExportFormatError(f"{where} has task.problem {problem!r}; expected one of {', '.join(PROBLEMS)}")
    precision = data.get("precision", "fp32")
    if precision not in PRECISIONS:
        raise ExportFormatError(f"{where} has precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    files = need("files")
    if not isinstance(files, Mapping) or not all(isinstance(v, str) for v in files.values()):
        raise ExportFormatError(f"{where} field 'files' must map relative paths to sha256 hex strings")
    model_file = data.get("model_file", "model.onnx")
    if model_file not in files:
        raise ExportFormatError(f"{where} names model_file {model_file!r} but 'files' does not list it; re-export")
    adapters = data.get("adapters") or {}
    if kind == "adapters" and not adapters:
        raise ExportFormatError(f"{where} has kind 'adapters' but no 'adapters' entries; re-export with adapters")
    for name, rel in adapters.items():
        if rel not in files:
            raise ExportFormatError(f"{where} lists adapter {name!r} at {rel!r} but 'files' does not; re-export")
    max_length = data.get("max_length")
    return Manifest(
        kind=kind,
        problem=problem,
        label_names=tuple(task.get("label_names") or ()),
        model_type=str(data.get("model_type", "")),
        inputs=tuple(data.get("inputs") or ()),
        outputs=tuple(data.get("outputs") or ()),
        precision=precision,
        max_length=int(max_length) if max_length is not None else None,
        model_file=model_file,
        adapters=dict(adapters),
        verification=data.get("verification"),
        files=dict(files),
        raw=dict(data),
    )


def read_manifest(folder: str | os.PathLike[str]) -> Manifest:
    """Read and validate `folder/manifest.json` (no checksums; see `verify_checksums`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ExportFormatError(f"{folder} is not a folder; pass the folder written by `dynalora export`")
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise ExportFormatError(f"{folder} is not a dynalora export folder: it has no {MANIFEST_NAME} "
                                "(create one with `dynalora export`)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ExportFormatError(f"{path} is not valid JSON ({exc}); re-export the model") from exc
    return parse_manifest(data, where=str(path))


def verify_checksums(folder: str | os.PathLike[str], manifest: Manifest | Mapping[str, Any]) -> None:
    """Check every file listed in the manifest exists and has its recorded sha256."""
    folder = Path(folder)
    files = manifest.files if isinstance(manifest, Manifest) else manifest.get("files", {})
    for rel, expected in sorted(files.items()):
        path = _safe_relpath(folder, rel)
        if not path.is_file():
            raise ChecksumError(f"{folder} is incomplete: {rel} is listed in {MANIFEST_NAME} but missing; "
                                "copy the whole export folder again")
        actual = sha256_file(path)
        if actual != expected:
            raise ChecksumError(f"checksum mismatch for {rel} in {folder}: the file changed after export "
                                "(truncated copy or edit); restore it or re-export")


def _listed_files(folder: Path) -> list[str]:
    """Every regular file under `folder` except manifest.json and hidden temp files, as POSIX paths."""
    out = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if not path.is_file() or rel.as_posix() == MANIFEST_NAME:
            continue
        if any(part.startswith(".") for part in rel.parts):  # atomic-write temp files, caches
            continue
        out.append(rel.as_posix())
    return out


def write_manifest(folder: str | os.PathLike[str], manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Fill `files` with the sha256 of every file in `folder`, validate, and write manifest.json atomically.

    Call it last, after every other file of the export is in place. Returns the dict that was written.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ExportFormatError(f"cannot write a manifest into {folder}: it is not a folder")
    data = dict(manifest)
    data.setdefault("format", FORMAT)
    data.setdefault("format_version", FORMAT_VERSION)
    data["files"] = {rel: sha256_file(folder / rel) for rel in _listed_files(folder)}
    parse_manifest(data, where=f"manifest for {folder}")  # refuse to write one the runtime would reject
    write_json(folder / MANIFEST_NAME, data)
    return data
