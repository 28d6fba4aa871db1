"""Any LlamaIndex vector store that keeps text, as a :class:`~.backend.Backend`.

Everything goes through the store's public API: ``query`` (one call per query vector),
``get_nodes``, ``add``, ``delete``, ``delete_nodes`` and ``clear``. The engine adapters
(:mod:`.qdrant`, :mod:`.chroma`, :mod:`.milvus`, :mod:`.postgres`, :mod:`.lancedb`) subclass it and replace what
their engine does better or differently. Scores are cosine similarity (the store must rank by it).

A store that cannot list its nodes (``get_nodes()`` without ids raises) lists the nodes added
through this adapter, read back by id.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import OrderedDict
from typing import Any, Iterator, Optional, Sequence

import numpy as np
from llama_index.core.schema import BaseNode
from llama_index.core.vector_stores.types import BasePydanticVectorStore, MetadataFilters, VectorStoreQuery

from llama_index_deepmemory.engine.backend import Hits, Restriction
from llama_index_deepmemory.engine.ids import check_owners, check_reserved, engine_id, from_engine, owner, to_engine
from llama_index_deepmemory.rwlock import ReadWriteLock

logger = logging.getLogger(__name__)

GET_BATCH = 256  # ids per read
# ids per owner check of an add: stores bind each id (PostgreSQL: 65,535 parameters a statement;
# Milvus: an expression length); VectorStoreIndex adds 2048 at a time, checked in one read
OWNER_BATCH = 2048
ROWS = 4096  # rows kept from reads, to build a Deep Memory result's nodes without another read
NAMES = 400_000  # stored id -> node id entries kept


class GenericAdapter:
    """A LlamaIndex vector store (``engine``) as a backend."""

    name = "generic"
    pays_per_hit = False  # True: each hit a search asks costs (rows, ANN breadth), so callers ask few spare hits
    reads_together = False  # True: reads run concurrently, a write alone (an engine whose reads fail under a write)
    replaces = False  # True: _replace deletes, so an add reads the nodes it replaces first (restored if it fails)

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.version = 0
        self._lock = threading.RLock()
        self._added: dict[str, Optional[str]] = {}  # id -> source document, of nodes added here (listing fallback)
        self._serial: Any = contextlib.nullcontext()  # a lock where the client is not thread safe
        self._rw = ReadWriteLock() if self.reads_together else None
        self._rows: OrderedDict[str, Any] = OrderedDict()  # node id -> the engine's row, until the next write
        # stored id -> node id, of every row seen; a stored id changes owner only by an add (which
        # sets it here) after a delete, so deletes need not forget (another process's: see README)
        self._names: dict[str, str] = {}

    # --- checks ---------------------------------------------------------------------------------
    def check(self) -> None:
        """A clear error when the engine cannot serve (it must keep text and read nodes by id)."""
        name = type(self.engine).__name__
        if not getattr(self.engine, "stores_text", False):
            raise ValueError(
                f"{name} keeps no node text (stores_text=False), so Deep Memory could not return nodes or score "
                "keywords; wrap a store that keeps text (Qdrant, Milvus, Chroma, PostgreSQL, ...), or use the "
                "embedded DeepMemoryVectorStore() without vector_store="
            )
        if type(self.engine).get_nodes is BasePydanticVectorStore.get_nodes:
            raise ValueError(
                f"{name} does not implement get_nodes(node_ids=...): Deep Memory reads the nodes its model "
                "names (memory, keyword re-scoring, training) by id; implement it (listing every node with "
                "node_ids=None is optional), or use the embedded DeepMemoryVectorStore() without vector_store="
            )

    @property
    def client(self) -> Any:
        return getattr(self.engine, "client", None)

    def _reading(self) -> Any:
        """Held around every read of the engine (see :meth:`_writing`)."""
        return self._rw.read() if self._rw is not None else self._serial

    def _writing(self) -> Any:
        """Held around every write to the engine: alone where reads run together, else the same
        serialisation as reads."""
        return self._rw.write() if self._rw is not None else self._serial

    # --- writes ---------------------------------------------------------------------------------
    def add(self, nodes: Sequence[BaseNode]) -> None:
        nodes = list({n.node_id: n for n in nodes}.values())  # an id twice in one batch: its last node
        check_reserved(nodes)
        owners = self._owners([engine_id(n.node_id) for n in nodes])
        check_owners(nodes, owners)
        held = [i for i in (engine_id(n.node_id) for n in nodes) if i in owners]  # ids already unique
        old = self._held(held)
        with self._writing():
            if held:
                self._replace(held)
            try:
                self._add([to_engine(n) for n in nodes])
            except Exception:
                if old:  # the add refused (its nodes' metadata, say): the nodes it replaced, back as they were
                    self._add(old)
                raise
        with self._lock:
            self._added.update((n.node_id, n.ref_doc_id) for n in nodes)
            self._name({engine_id(n.node_id): n.node_id for n in nodes})
            self._rows.clear()
            self.version += 1

    def delete(self, ref_doc_id: str) -> list[str]:
        """Delete the nodes of a source document; the ids of those added here (now forgotten)."""
        with self._writing():
            self._delete_document(ref_doc_id)
        with self._lock:
            gone = [i for i, doc in self._added.items() if doc == ref_doc_id]
            for node_id in gone:
                del self._added[node_id]
        self._wrote()
        return gone

    def delete_nodes(self, node_ids: Optional[list[str]], filters: Optional[MetadataFilters]) -> list[str]:
        """Delete the named nodes that pass ``filters``; the named ids no longer stored."""
        ids = None if node_ids is None else [engine_id(i) for i in node_ids]
        with self._writing():
            self._delete_nodes(ids, filters)
        gone = self._gone(node_ids or [], filters)
        with self._lock:
            for node_id in gone:
                self._added.pop(node_id, None)
        self._wrote()
        return gone

    def _gone(self, node_ids: Sequence[str], filters: Optional[MetadataFilters]) -> list[str]:
        """Of ``node_ids`` named to a delete with ``filters``, those no longer stored (the filters may keep some)."""
        if not node_ids or filters is None or not filters.filters:
            return list(node_ids)
        kept = {n.node_id for n in self.get(list(node_ids), with_vectors=False)}
        return [i for i in node_ids if i not in kept]

    def clear(self) -> None:
        with self._writing():
            self._clear()
        self._wrote(forget_added=True)

    def _wrote(self, forget_added: bool = False) -> None:
        with self._lock:
            if forget_added:
                self._added.clear()
            self._rows.clear()
            self.version += 1

    # --- rows kept between reads (adapters that call _keep and implement _build) -----------------
    def _keep(self, rows: Sequence[tuple[str, Any]], version: int) -> None:
        """Keep the engine's rows (node id, row) read at ``version`` (dropped if a write came since)."""
        with self._lock:
            if version != self.version:
                return
            for node_id, row in rows:
                self._rows[node_id] = row
                self._rows.move_to_end(node_id)
            while len(self._rows) > ROWS:
                self._rows.popitem(last=False)

    def _build(self, row: Any) -> BaseNode:
        """A fresh node from a kept row."""
        raise NotImplementedError

    def bodies(self, node_ids: Sequence[str]) -> list[BaseNode]:
        """Fresh nodes (without vectors) for ``node_ids`` (unknown ids skipped): built from the rows
        read since this adapter's last write, the rest in one read."""
        with self._lock:
            rows = {i: self._rows[i] for i in node_ids if i in self._rows}
        built = {i: self._build(row) for i, row in rows.items()}
        unknown = [i for i in node_ids if i not in built]
        if unknown:
            built.update((n.node_id, n) for n in self.get(unknown, with_vectors=False))
        return [built[i] for i in dict.fromkeys(node_ids) if i in built]

    def _named(self, stored_ids: Sequence[str]) -> dict[str, str]:
        """Node ids of stored ids (remembered; unknown ones read in one call; gone ones left out)."""
        with self._lock:
            names = {i: self._names[i] for i in stored_ids if i in self._names}
        unknown = [i for i in dict.fromkeys(stored_ids) if i not in names]
        if unknown:
            found = self._owners(unknown)
            self._name(found)
            names.update(found)
        return names

    def _named_hits(self, rows: Sequence[Sequence[tuple[str, float]]], similarity: Any = None) -> Hits:
        """Ids-only search rows of ``(stored id, score)`` as hits: the stored ids named in one
        call (:meth:`_named`), those deleted meanwhile dropped; ``similarity`` turns each row's
        float32 scores into cosines (default: they are cosines)."""
        names = self._named([i for row in rows for i, _ in row])
        hits = Hits([], [])
        for row in rows:
            found = [(names[i], s) for i, s in row if i in names]
            scores = np.asarray([s for _, s in found], dtype=np.float32)
            hits.handles.append([i for i, _ in found])
            hits.scores.append(similarity(scores) if similarity is not None else scores)
        return hits

    def _listed(self, nodes: list[BaseNode]) -> list[BaseNode]:
        """A listed page, its stored ids named on the way (a deep search then needs no lookup)."""
        self._name({engine_id(n.node_id): n.node_id for n in nodes})
        return nodes

    def _name(self, names: dict[str, str]) -> None:
        with self._lock:
            if len(self._names) + len(names) > NAMES:
                self._names.clear()
            self._names.update(names)

    # --- reads ----------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int, restriction: Restriction, bodies: bool | None = True) -> Hits:
        """Top ``k`` per query as cosine scores, node ids and (``bodies``; an adapter may return
        them anyway) the nodes returned with them."""
        if k <= 0 or restriction.empty:
            return Hits.none(len(queries))
        hits = Hits([], [])
        for q in np.asarray(queries, dtype=np.float32):
            with self._reading():
                nodes, scores = self._query_one(q, int(k), restriction)
            pairs = [(from_engine(n), s) for n, s in zip(nodes, scores)]
            pairs = [(n, s) for n, s in pairs if restriction.allows(n)]  # for stores that ignore ids
            hits.scores.append(np.asarray([s for _, s in pairs], dtype=np.float32))
            hits.handles.append([n.node_id for n, _ in pairs])
            hits.nodes.update((n.node_id, n) for n, _ in pairs)
        return hits

    def ids(self, handles: Sequence[str]) -> list[str]:
        return list(handles)  # a handle is the node id

    def get(self, node_ids: Sequence[str], filters: Optional[MetadataFilters] = None,
            with_vectors: bool = True) -> list[BaseNode]:
        """Stored nodes by id, in the given order (unknown ids skipped), one read per batch."""
        by_id: dict[str, BaseNode] = {}
        node_ids = list(node_ids)
        for start in range(0, len(node_ids), GET_BATCH):
            chunk = [engine_id(i) for i in node_ids[start : start + GET_BATCH]]
            with self._reading():
                found = self._get(chunk, filters, with_vectors)
            for node in found:
                node = from_engine(node)
                by_id[node.node_id] = node
        return [by_id[i] for i in dict.fromkeys(node_ids) if i in by_id]

    def texts(self, node_ids: Sequence[str]) -> dict[str, str]:
        return {n.node_id: n.get_content() for n in self.get(node_ids, with_vectors=False)}

    def filtered(self, filters: MetadataFilters) -> list[BaseNode]:
        """Every stored node passing ``filters``."""
        with self._reading():
            return [from_engine(n) for n in self.engine.get_nodes(filters=filters)]

    def pages(self, with_vectors: bool, limit: int) -> Iterator[list[BaseNode]]:
        """Every node, a page at a time; NotImplementedError when the engine cannot list."""
        try:
            with self._reading():
                nodes = self.engine.get_nodes()
        except (NotImplementedError, TypeError, ValueError, AssertionError) as error:
            raise NotImplementedError(f"{type(self.engine).__name__} cannot list its nodes ({error})") from None
        nodes = [from_engine(n) for n in nodes]
        for start in range(0, len(nodes), limit):
            yield nodes[start : start + limit]

    def added_ids(self) -> list[str]:
        """The ids added through this adapter and not deleted through it."""
        with self._lock:
            return list(self._added)

    def count(self) -> int:
        try:
            return sum(len(page) for page in self.pages(with_vectors=False, limit=4096))
        except NotImplementedError:  # a store that cannot list: the nodes added through this adapter
            return len(self.added_ids())

    # --- engine specifics (subclasses replace these) --------------------------------------------
    def _add(self, nodes: list[BaseNode]) -> None:
        self.engine.add(nodes)

    def _replace(self, stored_ids: list[str]) -> None:
        """Make way for nodes re-added under ``stored_ids`` (stored now), before ``_add``: nothing
        where the store's add replaces a node; an engine whose add keeps the old row, or skips the
        new one (``replaces``), has them deleted."""
        if self.replaces:
            self._delete_nodes(stored_ids, None)

    def _held(self, stored_ids: list[str]) -> list[BaseNode]:
        """The stored nodes an add replaces, as the engine stores them, where ``_replace`` deletes them."""
        if not stored_ids or not self.replaces:
            return []
        with self._reading():
            return [to_engine(from_engine(n)) for n in self._get(stored_ids, None, True)]

    def _delete_document(self, ref_doc_id: str) -> None:
        self.engine.delete(ref_doc_id)

    def _delete_nodes(self, ids: Optional[list[str]], filters: Optional[MetadataFilters]) -> None:
        self.engine.delete_nodes(ids, filters=filters)

    def _clear(self) -> None:
        self.engine.clear()

    def _get(self, stored_ids: list[str], filters: Optional[MetadataFilters], with_vectors: bool) -> list[BaseNode]:
        return self.engine.get_nodes(node_ids=stored_ids, filters=filters)

    def _owners(self, stored_ids: list[str]) -> dict[str, str]:
        """Which node each stored id holds now (for the add guard), one read per ``OWNER_BATCH`` ids."""
        unique, found = list(dict.fromkeys(stored_ids)), []
        for start in range(0, len(unique), OWNER_BATCH):
            with self._reading():
                found.extend(self._get(unique[start : start + OWNER_BATCH], None, False))
        return {n.node_id: owner(n.node_id, n.metadata) for n in found}

    def _query_one(self, q: np.ndarray, k: int, restriction: Restriction) -> tuple[list[BaseNode], list[float]]:
        result = self.engine.query(VectorStoreQuery(
            query_embedding=q.astype(np.float64).tolist(), similarity_top_k=k, filters=restriction.filters,
            node_ids=[engine_id(i) for i in restriction.node_ids] if restriction.node_ids else None,
            doc_ids=list(restriction.doc_ids) if restriction.doc_ids is not None else None,
        ))
        nodes = result.nodes or []
        return nodes, list(result.similarities or [1.0] * len(nodes))
