"""On-disk layout of a persisted store: versioned, checksummed, written atomically.

``persist_path`` is a directory::

    persist_path/
        manifest.json          # names the current generation + sha256/size of each of its files
        gen-<time>-<random>/   # one complete snapshot; older generations are deleted after a switch
            store.json  index.faiss  slots.npy  dead.npy  nodes.jsonl  deep_memory.json  ...

A snapshot is written into a fresh generation folder (every file fsynced), then ``manifest.json``
is replaced atomically (write aside, fsync, ``os.replace``). A crash at any point leaves the
previous manifest, which names the previous, untouched generation. Loading verifies every file's
size and sha256 and names the file that does not match. Nothing is pickled: JSON, ``.npy`` read
with ``allow_pickle=False``, safetensors, and FAISS's own binary index format.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

logger = logging.getLogger(__name__)

FORMAT_NAME = "llama-index-deepmemory/vector-store"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_GEN_PREFIX = "gen-"
_CHUNK = 1 << 22


class CorruptStoreError(ValueError):
    """A persisted file is missing, truncated or altered."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON beside ``path``, fsync, then ``os.replace`` it into place."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def write_generation(persist_path: str | os.PathLike, writers: dict[str, Callable[[Path], None]]) -> Path:
    """Write one snapshot: each ``writers[name](path)`` writes file ``name``; then switch to it.

    Returns the new generation folder. Older generations (and leftovers of crashed writes) are
    removed only after the manifest names the new one.
    """
    root = Path(persist_path)
    if root.exists() and not root.is_dir():
        raise ValueError(
            f"persist_path {str(root)!r} is an existing file, not a DeepMemoryVectorStore folder "
            "(perhaps a SimpleVectorStore JSON). Choose another path or remove that file."
        )
    root.mkdir(parents=True, exist_ok=True)
    gen_name = f"{_GEN_PREFIX}{time.time_ns()}-{uuid.uuid4().hex[:8]}"
    gen_dir = root / gen_name
    gen_dir.mkdir()
    files: dict[str, dict[str, Any]] = {}
    try:
        for name, write in writers.items():
            path = gen_dir / name
            write(path)
            _fsync_file(path)
            files[name] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
        _fsync_dir(gen_dir)
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "generation": gen_name,
            "files": files,
        }
        write_json_atomic(root / MANIFEST, manifest)
    except BaseException:
        shutil.rmtree(gen_dir, ignore_errors=True)
        raise
    for entry in root.iterdir():
        if entry.name.startswith(_GEN_PREFIX) and entry.name != gen_name and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
    return gen_dir


def read_manifest(persist_path: str | os.PathLike) -> dict[str, Any]:
    """The validated manifest of a persisted store."""
    root = Path(persist_path)
    manifest_path = root / MANIFEST
    if not root.exists():
        raise FileNotFoundError(f"no persisted DeepMemoryVectorStore at {str(root)!r}")
    if not root.is_dir() or not manifest_path.is_file():
        raise ValueError(
            f"{str(root)!r} is not a persisted DeepMemoryVectorStore (no {MANIFEST}); it may have "
            "been written by another vector store (e.g. SimpleVectorStore)."
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptStoreError(f"{str(manifest_path)!r} is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise ValueError(f"{str(manifest_path)!r} does not describe a {FORMAT_NAME} snapshot")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise ValueError(
            f"{str(manifest_path)!r} has format_version {version!r}; this llama-index-deepmemory "
            f"reads versions 1..{FORMAT_VERSION}. Upgrade the package to load it."
        )
    return manifest


def open_generation(persist_path: str | os.PathLike, verify: bool = True) -> tuple[Path, dict[str, Any]]:
    """The current generation folder and manifest, after checking every file's size and sha256."""
    manifest = read_manifest(persist_path)
    gen_dir = Path(persist_path) / str(manifest["generation"])
    for name, info in manifest.get("files", {}).items():
        path = gen_dir / name
        if not path.is_file():
            raise CorruptStoreError(f"persisted store file {str(path)!r} is missing")
        size = path.stat().st_size
        if size != info.get("bytes"):
            raise CorruptStoreError(
                f"persisted store file {str(path)!r} has {size} bytes, the manifest says "
                f"{info.get('bytes')} (truncated or modified)"
            )
        if verify and sha256_file(path) != info.get("sha256"):
            raise CorruptStoreError(
                f"persisted store file {str(path)!r} fails its sha256 check (corrupted or modified)"
            )
    return gen_dir, manifest


# --- file helpers -------------------------------------------------------------------------
def write_json(path: Path, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, ensure_ascii=False)


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def write_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, np.ascontiguousarray(array), allow_pickle=False)


def read_npy(path: Path) -> np.ndarray:
    return np.load(path, allow_pickle=False)


def write_jsonl(path: Path, rows: Iterable[list[Any]]) -> None:
    """One compact JSON array per line, streamed."""
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    with open(path, "w", encoding="utf-8", buffering=1 << 20) as fh:
        for row in rows:
            fh.write(dumps(row))
            fh.write("\n")


def iter_jsonl(path: Path) -> Iterator[list[Any]]:
    loads = json.loads
    with open(path, encoding="utf-8", buffering=1 << 20) as fh:
        for line_no, line in enumerate(fh, 1):
            try:
                yield loads(line)
            except json.JSONDecodeError as exc:
                raise CorruptStoreError(f"{str(path)!r} line {line_no} is not valid JSON ({exc})") from None


def write_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Named numpy arrays as safetensors (no pickle)."""
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path))


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return dict(load_file(str(path)))
