"""On-disk layout of a persisted store: versioned, checksummed, written atomically.

``persist_path`` is a directory::

    persist_path/
        manifest.json          # names the current generation + sha256/size of each of its files
        .write.lock .read.lock # advisory lock files (see below)
        gen-<time>-<random>/   # one complete snapshot; older generations are deleted after a switch
            store.json  index.faiss  slots.npy  dead.npy  nodes.jsonl
        dm-<random>/           # side folders a writer names in the manifest (the Deep Memory models,
                               # see :mod:`llama_index_deepmemory.deep_memory.state`)

A snapshot is written into a fresh generation folder (every file fsynced), then ``manifest.json``
is replaced atomically (write aside, fsync, ``os.replace``). A crash at any point leaves the
previous manifest, which names the previous, untouched generation. A writer may say which
generation it expects to replace (the one its handle loaded): when another writer switched the
folder since, it is refused with :class:`StaleStoreError` before anything is written, as SQLite
refuses a stale writer. A manifest that cannot be read is never written over: its snapshot may
still be recoverable. Loading verifies every file's
size and sha256 (every file it reads must be listed) and names the file that does not match; a
file that fails to parse is refused with :class:`CorruptStoreError` naming it.

Concurrency: writers of one folder are serialised by ``flock`` on ``.write.lock``; loaders hold a
shared ``flock`` on ``.read.lock``, which a writer takes exclusively only to delete the previous
generation and side folders, so a loader never sees what its manifest names vanish (it reads the
side folders under that lock too). Nothing is pickled: JSON, ``.npy`` read
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
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from llama_index_deepmemory.atomic import atomic_write, fsync_dir, fsync_file, write_json_atomic  # noqa: F401

logger = logging.getLogger(__name__)

FORMAT_NAME = "llama-index-deepmemory/vector-store"
FORMAT_VERSION = 2  # 2: the manifest may name side folders (the Deep Memory models)
ANY = object()  # write_generation(expect=ANY): replace whatever the folder holds
MANIFEST = "manifest.json"
_GEN_PREFIX = "gen-"
_CHUNK = 1 << 22
_MANIFEST_KEYS = frozenset({"format", "format_version", "generation", "files", "sides"})
_WRITE_LOCK = ".write.lock"  # held by the one writer of a folder
_READ_LOCK = ".read.lock"  # shared by loaders; exclusive while old generations are deleted


class CorruptStoreError(ValueError):
    """A persisted file is missing, truncated or altered."""


class StaleStoreError(ValueError):
    """A folder another writer changed since this handle loaded (or last wrote) it."""


# appended to damage errors: loading never changes the folder, so these are the ways out
DAMAGE_REMEDY = (
    "nothing was changed: restore the store folder from a backup, or rebuild it from its sources "
    "(deepmemory ingest SOURCE --store DIR --replace, or persist a new store there)"
)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def _flock(path: Path, exclusive: bool) -> Iterator[None]:
    """An advisory ``fcntl.flock`` on ``path`` (created if needed); a no-op where unavailable.

    ``flock`` locks belong to open file descriptions, so they also exclude other threads of
    this process that open the file themselves.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:  # read-only folder without a lock file: nothing to coordinate with
            yield
            return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def lock_file(path: Path, exclusive: bool = True) -> Any:
    """An advisory ``flock`` on ``path`` as a context manager (see :func:`_flock`)."""
    return _flock(path, exclusive)


@contextmanager
def reading(persist_path: str | os.PathLike) -> Iterator[None]:
    """Hold while loading a snapshot: a writer deletes old generations only between readers."""
    root = Path(persist_path)
    if not root.is_dir():
        yield
        return
    with _flock(root / _READ_LOCK, exclusive=False):
        yield


def write_generation(
    persist_path: str | os.PathLike,
    writers: dict[str, Callable[[Path], None]],
    *,
    expect: Any = ANY,
    side_fields: Callable[[Path], dict[str, str]] | None = None,
    side_prefixes: tuple[str, ...] = (),
) -> Path:
    """Write one snapshot: ``side_fields`` first, then each ``writers[name](path)`` writes file
    ``name``; then switch to it.

    Returns the new generation folder. Writers of one folder are serialised (a lock file in the
    folder). ``expect`` is the generation the caller last saw there (None: no store): when the
    folder now names another one, :class:`StaleStoreError` is raised before anything is written
    (``ANY`` skips the check; a folder without a manifest is always writable). ``side_fields(root)``,
    called under the lock before the snapshot's files, may write folders beside the generations
    and returns names for them, kept in the manifest's ``sides`` table. Older generations, side folders starting with ``side_prefixes`` that the new
    manifest does not name, and leftovers of crashed writes are removed only after the manifest
    names the new generation, and only while no reader (see :func:`reading`) is loading.
    """
    if not os.fspath(persist_path).strip():  # Path("") is the working directory
        raise ValueError(
            f"persist_path is empty ({os.fspath(persist_path)!r}), which would write the snapshot into the "
            "working directory; pass a folder for the store, e.g. './storage/vector_store'"
        )
    root = Path(persist_path)
    if root.exists() and not root.is_dir():
        raise ValueError(
            f"persist_path {str(root)!r} is an existing file, not a DeepMemoryVectorStore folder "
            "(perhaps a SimpleVectorStore JSON). Choose another path or remove that file."
        )
    root.mkdir(parents=True, exist_ok=True)
    with _flock(root / _WRITE_LOCK, exclusive=True):
        before = _current_manifest(root, side_prefixes)
        current = str(before["generation"]) if before is not None else None
        if expect is not ANY and current is not None and current != expect:
            raise StaleStoreError(
                f"{str(root)!r} changed since this store was loaded or last persisted there (generation "
                f"{expect or 'none'} -> {current}): another handle or process persisted it. Nothing was "
                f"written: load it again (DeepMemoryVectorStore.from_persist_path({str(root)!r})) and redo "
                "your change, persist to another path, or pass overwrite=True to replace what is there"
            )
        named_before = set(before.get("sides", {}).values()) if before is not None else set()
        sides = dict(side_fields(root)) if side_fields is not None else {}
        gen_name = f"{_GEN_PREFIX}{time.time_ns()}-{uuid.uuid4().hex[:8]}"
        gen_dir = root / gen_name
        files: dict[str, dict[str, Any]] = {}
        try:
            gen_dir.mkdir()
            for name, write in writers.items():
                path = gen_dir / name
                write(path)
                fsync_file(path)
                files[name] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
            fsync_dir(gen_dir)
            manifest = {
                "format": FORMAT_NAME,
                "format_version": FORMAT_VERSION,
                "generation": gen_name,
                "files": files,
                "sides": sides,
            }
            write_json_atomic(root / MANIFEST, manifest)
        except BaseException:
            shutil.rmtree(gen_dir, ignore_errors=True)
            for side in set(sides.values()) - named_before:  # written for this snapshot only
                shutil.rmtree(root / Path(side).name, ignore_errors=True)
            raise
        # every other generation is the previous one or a crashed write (writers are serialised)
        named = set(sides.values())
        with _flock(root / _READ_LOCK, exclusive=True):
            for entry in root.iterdir():
                old_gen = entry.name.startswith(_GEN_PREFIX) and entry.name != gen_name
                old_side = entry.name.startswith(side_prefixes) if side_prefixes else False
                if (old_gen or (old_side and entry.name not in named)) and entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
    return gen_dir


def _current_manifest(root: Path, side_prefixes: tuple[str, ...] = ()) -> dict[str, Any] | None:
    """The folder's manifest, read once (None: no manifest); a manifest that cannot be read is
    refused, since writing would delete the snapshot it may still name."""
    if not (root / MANIFEST).exists():
        _refuse_orphan_generations(root, side_prefixes)
        return None
    try:
        return read_manifest(root)
    except (ValueError, OSError) as exc:
        snapshots = sorted(p.name for p in root.glob(f"{_GEN_PREFIX}*") if p.is_dir())
        raise CorruptStoreError(
            f"{str(root / MANIFEST)!r} cannot be read ({str(exc)[:160]}), so persisting there could delete "
            f"the {len(snapshots)} snapshot folder(s) it may still name. Nothing was changed: restore "
            f"{MANIFEST} from a backup, persist to another folder, or delete the folder if it is not needed."
        ) from None


def _refuse_orphan_generations(root: Path, side_prefixes: tuple[str, ...] = ()) -> None:
    """Refuse to write into a folder holding snapshot (or side) folders but no manifest: a damaged
    store (its manifest lost) whose nodes and models a new snapshot would delete after the switch."""
    if (root / MANIFEST).exists():
        return
    groups = [(prefix, sorted(p.name for p in root.glob(f"{prefix}*") if p.is_dir()))
              for prefix in (_GEN_PREFIX, *side_prefixes)]
    held = [f"{len(names)} {'snapshot' if prefix == _GEN_PREFIX else 'side'} folder(s) ({names[-1]})"
            for prefix, names in groups if names]
    if held:
        raise ValueError(
            f"{str(root)!r} holds {' and '.join(held)} but no {MANIFEST}: it is a damaged store, and "
            f"persisting there would delete them. Nothing was changed: restore {MANIFEST} from a backup, "
            f"persist to another folder, or delete the {'/'.join(p + '*' for p, names in groups if names)} "
            "folders if they are not needed."
        )


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
    unknown = sorted(set(manifest) - _MANIFEST_KEYS)
    sides = manifest.get("sides", {})
    if unknown or (version >= 2 and "sides" not in manifest) or not isinstance(sides, dict) or not all(
        isinstance(v, str) and v and Path(v).name == v and not v.startswith((".", _GEN_PREFIX)) for v in sides.values()
    ):
        raise CorruptStoreError(
            f"{str(manifest_path)!r} has unknown keys {unknown} or an invalid 'sides' table; it was altered"
        )
    generation = manifest.get("generation")
    if not isinstance(generation, str) or not generation.startswith(_GEN_PREFIX) or Path(generation).name != generation:
        raise CorruptStoreError(f"{str(manifest_path)!r} names an invalid generation {generation!r}")
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(
        isinstance(info, dict) and isinstance(info.get("bytes"), int) and isinstance(info.get("sha256"), str)
        for info in files.values()
    ):
        raise CorruptStoreError(
            f"{str(manifest_path)!r} has no valid 'files' table (name -> bytes and sha256); "
            "it was altered or truncated"
        )
    return manifest


def open_generation(
    persist_path: str | os.PathLike, required: Iterable[str] = ()
) -> tuple[Path, dict[str, Any]]:
    """The current generation folder and manifest, after checking every file's size and sha256.

    Every name in ``required`` must be listed by the manifest (so every file a loader reads is
    verified); a missing entry is refused with :class:`CorruptStoreError`.
    """
    manifest = read_manifest(persist_path)
    manifest_path = Path(persist_path) / MANIFEST
    files = manifest["files"]
    unlisted = [name for name in required if name not in files]
    if unlisted:
        raise CorruptStoreError(
            f"{str(manifest_path)!r} does not list {unlisted}, so they cannot be verified; "
            "the manifest was altered or written by an incompatible version"
        )
    gen_dir = Path(persist_path) / manifest["generation"]
    for name, info in files.items():
        path = gen_dir / name
        if Path(name).name != name or not path.is_file():
            raise CorruptStoreError(f"persisted store file {str(path)!r} is missing; {DAMAGE_REMEDY}")
        size = path.stat().st_size
        if size != info["bytes"]:
            raise CorruptStoreError(
                f"persisted store file {str(path)!r} has {size} bytes, the manifest says "
                f"{info['bytes']} (truncated or modified); {DAMAGE_REMEDY}"
            )
        if sha256_file(path) != info["sha256"]:
            raise CorruptStoreError(
                f"persisted store file {str(path)!r} fails its sha256 check (corrupted or modified); {DAMAGE_REMEDY}"
            )
    return gen_dir, manifest


def load_file(path: Path, what: str, read: Callable[[Path], Any]) -> Any:
    """``read(path)``, with any parse failure refused as :class:`CorruptStoreError` naming the file."""
    try:
        return read(path)
    except (CorruptStoreError, FileNotFoundError):
        raise
    except Exception as exc:  # noqa: BLE001 - every parser has its own error types
        raise CorruptStoreError(
            f"persisted store file {str(path)!r} is not a valid {what} "
            f"({type(exc).__name__}: {str(exc)[:200]})"
        ) from None


# --- file helpers -------------------------------------------------------------------------
def write_json(path: Path, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, ensure_ascii=False)


def read_json(path: Path) -> Any:
    """Parsed JSON; CorruptStoreError naming the file when it is not UTF-8 JSON."""

    def read(p: Path) -> Any:
        with open(p, encoding="utf-8") as fh:
            return json.load(fh)

    return load_file(path, "JSON file", read)


def write_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, np.ascontiguousarray(array), allow_pickle=False)


def read_npy(path: Path) -> np.ndarray:
    """One ``.npy`` array (never pickled objects); CorruptStoreError naming the file otherwise."""

    def read(p: Path) -> np.ndarray:
        array = np.load(p, allow_pickle=False)
        if not isinstance(array, np.ndarray):  # e.g. a zip read as an .npz archive
            raise ValueError(f"holds a {type(array).__name__}, not one .npy array")
        return array

    return load_file(path, ".npy array", read)


def write_jsonl(path: Path, rows: Iterable[list[Any]]) -> None:
    """One compact JSON array per line, streamed."""
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    with open(path, "w", encoding="utf-8", buffering=1 << 20) as fh:
        for row in rows:
            fh.write(dumps(row))
            fh.write("\n")


def iter_jsonl(path: Path) -> Iterator[list[Any]]:
    loads = json.loads
    line_no = 0
    with open(path, encoding="utf-8", buffering=1 << 20) as fh:
        try:
            for line_no, line in enumerate(fh, 1):
                try:
                    row = loads(line)
                except json.JSONDecodeError as exc:
                    raise CorruptStoreError(f"{str(path)!r} line {line_no} is not valid JSON ({exc})") from None
                yield row
        except UnicodeDecodeError as exc:
            raise CorruptStoreError(f"{str(path)!r} is not UTF-8 near line {line_no + 1} ({exc})") from None


def write_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Named numpy arrays as safetensors (no pickle)."""
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path))


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file as load_safetensors

    return load_file(path, "safetensors file", lambda p: dict(load_safetensors(str(p))))
