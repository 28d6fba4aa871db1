"""Snapshots of the embedded store (:class:`~.faiss_store.FaissStore`): write one, load one.

A snapshot is a generation folder of :mod:`llama_index_deepmemory.persistence` (versioned,
checksummed, written atomically) holding ``store.json`` (configuration), ``slots.npy`` (the live
slots), ``dead.npy`` (the FAISS index's tombstones), ``nodes.jsonl`` (one node row per live slot)
and ``index.faiss`` once the dimension is known. Loading checks that these agree with each other.

``store.json`` version 2 (:data:`CONFIG_VERSION`) adds ``"index"``: the factory string of the
index held (``index_factory="auto"`` holds ``"Flat"`` or ``"HNSW32"`` by size), its
``"index_ef_search"`` (the one ``"auto"`` tuned), ``"auto_retry_at"`` (``NEVER``: stays exact) and
``"auto_probe_at"`` (the size at which ``"auto"`` re-probes its graph; absent in older version 2
files: the next doubling of ``AUTO_APPROXIMATE_FROM`` above the count); a version 1 file (none of
these) holds the index its ``index_factory`` names.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

from llama_index_deepmemory import persistence
from llama_index_deepmemory.engine import faiss_auto
from llama_index_deepmemory.index import AUTO, VectorIndex

if TYPE_CHECKING:  # pragma: no cover
    from llama_index.core.base.embeddings.base import BaseEmbedding

    from llama_index_deepmemory.engine.faiss_store import FaissStore

logger = logging.getLogger(__name__)

SNAPSHOT_FILES = ("store.json", "slots.npy", "dead.npy", "nodes.jsonl")
CONFIG_VERSION = 2  # 2: "index" names the index held (index_factory may be "auto")


def persist(
    store: "FaissStore",
    persist_path: str | os.PathLike,
    expect: Any = persistence.ANY,
    side_fields: Callable[[Path], dict[str, str]] | None = None,
    side_prefixes: tuple[str, ...] = (),
) -> str:
    """Write a snapshot of ``store`` to the folder ``persist_path``; returns its generation."""
    # one persist at a time per store (a lock file in the folder serialises other processes)
    with store._persist_lock, store._lock.read():
        gen = persistence.write_generation(persist_path, snapshot_writers(store), expect=expect,
                                           side_fields=side_fields, side_prefixes=side_prefixes)
    return gen.name


def snapshot_writers(store: "FaissStore") -> dict[str, Any]:
    """name -> function writing that file of a snapshot (call under the store's read lock)."""
    table = store._table
    slots = table.live_slots()
    dead = store._index.dead_ids() if store._index is not None else np.zeros(0, dtype=np.int64)
    config = {
        "version": CONFIG_VERSION,
        "dim": store._dim,
        "metric": store._metric,
        "index_factory": store._index_factory,
        "nprobe": store._nprobe,
        "ef_search": store._ef_search,
        "index": store.index_in_use,
        "index_ef_search": store._index.ef_search if store._index is not None else None,
        "auto_retry_at": store._retry_at,
        "auto_probe_at": store._probe_at,
        "count": int(len(slots)),
    }

    def rows() -> Iterator[list[Any]]:
        for slot in slots.tolist():
            yield list(table.row(slot))

    writers = {
        "store.json": lambda p: persistence.write_json(p, config),
        "slots.npy": lambda p: persistence.write_npy(p, slots),
        "dead.npy": lambda p: persistence.write_npy(p, dead),
        "nodes.jsonl": lambda p: persistence.write_jsonl(p, rows()),
    }
    if store._index is not None:
        writers["index.faiss"] = lambda p: store._index.write(str(p))
    return writers


def load(
    cls: "type[FaissStore]",
    persist_path: str,
    embed_model: "BaseEmbedding | None" = None,
    read_extra: Callable[[Path, dict[str, Any]], Any] | None = None,
) -> tuple["FaissStore", dict[str, Any], Any]:
    """Load a snapshot written by :func:`persist` as a ``cls``: the store, its manifest and
    ``read_extra(generation folder, manifest)`` (called while the generation cannot vanish)."""
    for attempt in (1, 2):
        seen = persistence.read_manifest(persist_path)["generation"]
        try:
            with persistence.reading(persist_path):
                gen, manifest = persistence.open_generation(persist_path, SNAPSHOT_FILES)
                store = load_generation(cls, gen, manifest, embed_model)
                return store, manifest, read_extra(gen, manifest) if read_extra is not None else None
        except (FileNotFoundError, persistence.CorruptStoreError):
            # a writer that ignores the folder's lock may have replaced the generation under
            # us: read the manifest again and retry once if it moved on
            if attempt == 2 or persistence.read_manifest(persist_path)["generation"] == seen:
                raise
            logger.info("generation %s of %s vanished while loading; retrying", seen, persist_path)
    raise AssertionError("unreachable")  # pragma: no cover


def load_generation(
    cls: "type[FaissStore]", gen: Path, manifest: dict[str, Any], embed_model: "BaseEmbedding | None"
) -> "FaissStore":
    """A ``cls`` store rebuilt from the generation folder ``gen`` (its files' checksums already
    verified against ``manifest``); CorruptStoreError when its files disagree."""
    config = persistence.read_json(gen / "store.json")
    store_json = str(gen / "store.json")
    if not isinstance(config, dict) or not {"dim", "metric", "index_factory", "count"} <= set(config):
        raise persistence.CorruptStoreError(f"{store_json!r} is not a store configuration")
    version = config.get("version", 1)
    if not isinstance(version, int) or not 1 <= version <= CONFIG_VERSION:
        raise persistence.CorruptStoreError(
            f"{store_json!r} has version {version!r}; this llama-index-deepmemory reads versions "
            f"1..{CONFIG_VERSION}. Upgrade the package to load it."
        )
    held = config.get("index") or config["index_factory"]  # version 1: the factory string named it
    if config["dim"] is not None and (not isinstance(held, str) or held == AUTO):
        raise persistence.CorruptStoreError(f"{store_json!r} names no index it holds (index={held!r})")
    try:
        store = cls(
            dim=config["dim"],
            metric=config["metric"],
            index_factory=config["index_factory"],
            embed_model=embed_model,
            nprobe=config.get("nprobe"),
            ef_search=config.get("ef_search"),
        )
    except (TypeError, ValueError) as exc:
        raise persistence.CorruptStoreError(f"{store_json!r} holds an invalid configuration: {exc}") from None
    retry_at = config.get("auto_retry_at", 0)
    store._retry_at = retry_at if isinstance(retry_at, int) and not isinstance(retry_at, bool) else 0
    probe_at = config.get("auto_probe_at")  # absent before re-probes: the next doubling of the size
    store._probe_at = (probe_at if isinstance(probe_at, int) and not isinstance(probe_at, bool)
                       else faiss_auto.next_probe_at(config["count"] if isinstance(config["count"], int) else 0))
    slots = _read_ids(gen / "slots.npy")
    dead = _read_ids(gen / "dead.npy")
    if config["dim"] is not None:
        if "index.faiss" not in manifest["files"]:
            raise persistence.CorruptStoreError(
                f"the manifest of {str(gen)!r} does not list index.faiss, which a store of dim "
                f"{config['dim']} needs"
            )
        index_path = gen / "index.faiss"
        store._index = persistence.load_file(
            index_path, "FAISS index",
            lambda p: VectorIndex.read(
                str(p), config["dim"], config["metric"], held,
                config.get("nprobe"), config.get("index_ef_search", config.get("ef_search")), dead,
            ),
        )
        _check_slots(index_path, store._index.all_ids(), slots, dead)
    elif len(slots) or len(dead):
        raise persistence.CorruptStoreError(
            f"{str(gen / 'slots.npy')!r} lists {len(slots)} slots but the store has no index"
        )
    table = store._table
    capacity = int(max(slots.max(initial=-1), dead.max(initial=-1))) + 1
    table.allocate(capacity)  # empty slots; filled below
    count = 0
    nodes_path = gen / "nodes.jsonl"
    for slot, row in zip(slots.tolist(), persistence.iter_jsonl(nodes_path)):
        if not _valid_row(row):
            raise persistence.CorruptStoreError(
                f"{str(nodes_path)!r} line {count + 1} is not a node row (id, text, metadata, "
                "ref_doc_id, type, fields)"
            )
        table.put(slot, *row)
        count += 1
    if count != len(slots) or count != config["count"]:
        raise persistence.CorruptStoreError(
            f"{str(nodes_path)!r} holds {count} nodes, expected {len(slots)}"
        )
    if len(table) != count:
        raise persistence.CorruptStoreError(f"{str(nodes_path)!r} holds duplicate node ids")
    holes = np.ones(capacity, dtype=bool)
    holes[slots] = False
    holes[dead] = False
    table.free_slots(np.flatnonzero(holes).tolist())
    return store


def _read_ids(path: Path) -> np.ndarray:
    """A 1-D integer ``.npy`` array of slot numbers, as int64."""
    array = persistence.read_npy(path)
    if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
        raise persistence.CorruptStoreError(
            f"persisted store file {str(path)!r} holds a {array.dtype} array of shape {array.shape}, "
            "expected 1-D integer slot numbers"
        )
    return array.astype(np.int64, copy=False)


def _check_slots(index_path: Path, index_ids: np.ndarray, slots: np.ndarray, dead: np.ndarray) -> None:
    """The live slots and tombstones must be exactly the FAISS index's row ids, each once."""
    listed = np.concatenate([slots, dead])
    if len(listed) != len(index_ids) or not np.array_equal(np.sort(listed), np.sort(index_ids)):
        raise persistence.CorruptStoreError(
            f"slots.npy and dead.npy ({len(slots)} + {len(dead)} slots) do not match the "
            f"{len(index_ids)} row ids of {str(index_path)!r}: the snapshot is inconsistent"
        )
    if len(np.unique(listed)) != len(listed):
        raise persistence.CorruptStoreError(
            f"slots.npy and dead.npy list a slot twice (inconsistent with {str(index_path)!r})"
        )


def _valid_row(row: Any) -> bool:
    """Whether a ``nodes.jsonl`` line is a node row (id, text, metadata, ref_doc_id, type, fields)."""
    return (
        isinstance(row, list) and len(row) == 6
        and all(isinstance(v, str) for v in (row[0], row[1], row[2], row[4], row[5]))
        and (row[3] is None or isinstance(row[3], str))
    )
