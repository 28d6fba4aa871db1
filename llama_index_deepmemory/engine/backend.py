"""The backend protocol: what a vector engine offers, knowing nothing of Deep Memory or a face.

A backend searches prepared query vectors (``search(queries, k, restriction)`` -> cosine scores
and handles), names its handles (``ids``: for the engine adapters a handle is the node id
itself), reads nodes, texts and vectors by id, lists its corpus a page at a time, takes writes,
and counts its writes (``version``) so a caller's caches know when to forget. The adapters in
:mod:`.generic`, :mod:`.qdrant`, :mod:`.chroma`, :mod:`.milvus` and :mod:`.postgres` implement
it over LlamaIndex's stores; Deep Memory and the face sit on top (``wrapped_store.py``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Protocol, Sequence

import numpy as np


def _key_of(filters: Any, node_ids: Optional[tuple[str, ...]], doc_ids: Optional[tuple[str, ...]]) -> str:
    dumped = filters.model_dump_json() if filters is not None else ""
    return hashlib.sha1(json.dumps([dumped, node_ids, doc_ids]).encode()).hexdigest()


_UNRESTRICTED_KEY = _key_of(None, None, None)  # every unrestricted query's key (one per Deep Memory query)


@dataclass(frozen=True)
class Restriction:
    """What one query may return: metadata ``filters``, ``node_ids`` and ``doc_ids`` (None: any)."""

    filters: Optional[Any] = None  # LlamaIndex MetadataFilters with at least one filter, or None
    node_ids: Optional[tuple[str, ...]] = None
    doc_ids: Optional[tuple[str, ...]] = None

    def key(self) -> str:
        """A digest naming this restriction (a cache key; the unrestricted one made once)."""
        if self.filters is None and self.node_ids is None and self.doc_ids is None:
            return _UNRESTRICTED_KEY
        return _key_of(self.filters, self.node_ids, self.doc_ids)

    def allows(self, node: Any) -> bool:
        """The node and document restrictions (the engine applies the filters)."""
        if self.node_ids is not None and node.node_id not in self.node_ids:
            return False
        return self.doc_ids is None or node.ref_doc_id in self.doc_ids

    @property
    def empty(self) -> bool:
        """True when nothing can pass (an empty ``doc_ids`` list)."""
        return self.doc_ids is not None and not self.doc_ids


@dataclass
class Hits:
    """One search: per query, cosine scores (best first) and handles; plus the node bodies the
    engine returned with them (by node id; empty where it returned ids only) and any node texts
    it returned without bodies."""

    scores: list[np.ndarray]
    handles: list[list[str]]
    nodes: dict[str, Any] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)

    @classmethod
    def none(cls, n_queries: int) -> "Hits":
        return cls([np.zeros(0, np.float32) for _ in range(n_queries)], [[] for _ in range(n_queries)])


class Backend(Protocol):
    """What Deep Memory and the face ask of an engine (all ids are the nodes' own ids)."""

    name: str
    version: int  # bumped by every write through this backend

    def search(self, queries: np.ndarray, k: int, restriction: Restriction, bodies: bool | None = True) -> Hits:
        """``bodies=None``: ids and scores, as ``False``, for a caller that will ask ``bodies()`` of
        a few hits (a Deep Memory query): an adapter may read the rows with the search and keep them."""

    def bodies(self, node_ids: Sequence[str]) -> list[Any]: ...

    def ids(self, handles: Sequence[str]) -> list[str]: ...

    def get(self, node_ids: Sequence[str], filters: Any = None, with_vectors: bool = True) -> list[Any]: ...

    def texts(self, node_ids: Sequence[str]) -> dict[str, str]: ...

    def pages(self, with_vectors: bool, limit: int) -> Iterator[list[Any]]: ...

    def count(self) -> int: ...

    def add(self, nodes: Sequence[Any]) -> None: ...

    def delete(self, ref_doc_id: str) -> list[str]: ...  # the ids of the nodes added here that it removed

    def delete_nodes(self, node_ids: Optional[list[str]], filters: Any) -> list[str]: ...  # the named ids now gone

    def clear(self) -> None: ...
