"""The node table: compact columns of node data addressed by int slots (the FAISS row ids).

No LlamaIndex objects are kept: per node only its id, text, metadata as a compact JSON string,
``ref_doc_id``, node class name and the remaining node fields as a small JSON string (usually
just the relationships). Nodes are rebuilt only for returned results. Vectors are not here:
they live in the FAISS index alone.

Slots of removed nodes are reused by later adds when the index frees them (Flat, IVF).
"""

from __future__ import annotations

import json
import logging
from typing import Any, Iterable, Sequence

import numpy as np

logger = logging.getLogger(__name__)

# ref_doc_id values filterable as metadata, exactly as SimpleVectorStore exposes them
REF_DOC_KEYS = ("document_id", "doc_id", "ref_doc_id")
NODE_TYPE_KEY = "_node_type"
HIDDEN_KEYS = ("_node_content",)  # popped by SimpleVectorStore, so never filterable
_NO_EXTRAS = "{}"


class NodeTable:
    """Parallel lists of node fields plus a live-slot mask and an id -> slot map."""

    def __init__(self) -> None:
        self.ids: list[str | None] = []
        self.texts: list[str | None] = []
        self.metadata: list[str | None] = []
        self.refs: list[str | None] = []
        self.types: list[str | None] = []
        self.extras: list[str | None] = []
        self.live = np.zeros(0, dtype=bool)
        self.slot_of: dict[str, int] = {}
        self.doc_slots: dict[str, set[int]] = {}  # ref_doc_id -> its live slots
        self._free: list[int] = []
        self._types: dict[str, str] = {}  # node class names: a handful, shared by every row

    def __len__(self) -> int:
        return len(self.slot_of)

    @property
    def capacity(self) -> int:
        return len(self.ids)

    def _intern_type(self, node_type: str) -> str:
        """One shared string per node class name (a low-cardinality column)."""
        return self._types.setdefault(node_type, node_type)

    def allocate(self, n: int, reusable: Sequence[int] = ()) -> np.ndarray:
        """``n`` free slots: reused ones first (``reusable`` are added to the free list)."""
        self._free.extend(int(s) for s in reusable)
        take = min(n, len(self._free))
        reused = [self._free.pop() for _ in range(take)]
        start = self.capacity
        fresh = list(range(start, start + n - take))
        if fresh:
            extra = len(fresh)
            for column in (self.ids, self.texts, self.metadata, self.refs, self.types, self.extras):
                column.extend([None] * extra)
            if self.capacity > len(self.live):
                grown = np.zeros(max(self.capacity, 2 * len(self.live)), dtype=bool)
                grown[: len(self.live)] = self.live
                self.live = grown
        return np.asarray(reused + fresh, dtype=np.int64)

    def put(self, slot: int, node_id: str, text: str, metadata: str, ref: str | None,
            node_type: str, extras: str) -> None:
        self.ids[slot] = node_id
        self.texts[slot] = text
        self.metadata[slot] = metadata
        self.refs[slot] = ref
        self.types[slot] = self._intern_type(node_type)
        self.extras[slot] = _NO_EXTRAS if extras == _NO_EXTRAS else extras
        self.live[slot] = True
        self.slot_of[node_id] = slot
        if ref is not None:
            self.doc_slots.setdefault(ref, set()).add(slot)

    def remove(self, slots: Iterable[int], reusable: bool) -> None:
        """Empty ``slots``; put them on the free list when the index freed their row ids."""
        for slot in slots:
            node_id = self.ids[slot]
            if node_id is not None and self.slot_of.get(node_id) == slot:
                del self.slot_of[node_id]
            ref = self.refs[slot]
            if ref is not None and ref in self.doc_slots:
                doc = self.doc_slots[ref]
                doc.discard(slot)
                if not doc:
                    del self.doc_slots[ref]
            self.ids[slot] = self.texts[slot] = self.metadata[slot] = None
            self.refs[slot] = self.types[slot] = self.extras[slot] = None
            self.live[slot] = False
            if reusable:
                self._free.append(int(slot))

    def free_slots(self, slots: Iterable[int]) -> None:
        """Mark already-empty slots reusable (after an HNSW rebuild freed them)."""
        self._free.extend(int(s) for s in slots)

    def live_slots(self) -> np.ndarray:
        return np.flatnonzero(self.live[: self.capacity]).astype(np.int64)

    def slots_for(self, node_ids: Iterable[str]) -> np.ndarray:
        """Slots of the stored ids among ``node_ids`` (unknown ids skipped, first occurrence kept)."""
        seen: set[int] = set()
        out = []
        get = self.slot_of.get
        for node_id in node_ids:
            slot = get(node_id)
            if slot is not None and slot not in seen:
                seen.add(slot)
                out.append(slot)
        return np.asarray(out, dtype=np.int64)

    def slots_of_docs(self, doc_ids: Iterable[str]) -> np.ndarray:
        """Live slots whose ``ref_doc_id`` is one of ``doc_ids`` (sorted); O(matches)."""
        found: set[int] = set()
        for doc_id in set(doc_ids):
            found |= self.doc_slots.get(doc_id, set())
        return np.asarray(sorted(found), dtype=np.int64)

    # --- metadata as SimpleVectorStore sees it ------------------------------------------
    def effective_metadata(self, metadata: dict[str, Any], ref: str | None, node_type: str) -> dict[str, Any]:
        """The dict SimpleVectorStore filters on: node metadata plus its ref-doc / type keys."""
        effective = dict(metadata)
        for key in HIDDEN_KEYS:
            effective.pop(key, None)
        effective[NODE_TYPE_KEY] = node_type
        for key in REF_DOC_KEYS:
            effective[key] = ref or "None"
        return effective

    def read_key(self, key: str) -> list[Any]:
        """``key``'s filterable value for every slot (None where missing or empty)."""
        if key in REF_DOC_KEYS:
            return [None if i is None else (r or "None") for i, r in zip(self.ids, self.refs)]
        if key == NODE_TYPE_KEY:
            return list(self.types)
        if key in HIDDEN_KEYS:
            return [None] * self.capacity
        needle = json.dumps(key, ensure_ascii=False)
        loads = json.loads
        out: list[Any] = []
        for meta in self.metadata:
            if meta is None or needle not in meta:
                out.append(None)
            else:
                out.append(loads(meta).get(key))
        return out

    def row(self, slot: int) -> tuple[str, str, str, str | None, str, str]:
        """(id, text, metadata JSON, ref_doc_id, node type, extras JSON) of a live slot."""
        node_id = self.ids[slot]
        if node_id is None:
            raise KeyError(slot)
        return (node_id, self.texts[slot] or "", self.metadata[slot] or "{}", self.refs[slot],
                self.types[slot] or "TextNode", self.extras[slot] or "{}")
