"""Milvus (``MilvusVectorStore``: Milvus Lite or a server) as a backend, through ``pymilvus``.

The store's ``get_nodes`` takes ids or filters but not both (combined here into one filter) and
cannot list without either (``query_iterator`` pages instead); its ``clear`` drops the collection,
after which its ``add`` cannot re-create it (the rows are deleted instead). Its ``delete_nodes``
ORs the ids into an OR of filters and, given no ids, deletes every filter match (ids and filters
are ANDed here, no ids delete nothing); its ``delete`` writes the document id unescaped into the
expression (a quote failed it, or widened it to every row: a JSON-escaped literal here). Filters
reach the store through :func:`store_filters` (SimpleVectorStore's selection; NOT refused). The
collection must rank by COSINE (``MilvusVectorStore(..., similarity_metric="COSINE")``; the
store's default is IP).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import threading
from typing import Any, Iterator, Optional

import numpy as np
from llama_index.core.schema import BaseNode
from llama_index.core.vector_stores.types import (
    FilterCondition, FilterOperator, MetadataFilter, MetadataFilters, VectorStoreQuery,
)
from llama_index.core.vector_stores.utils import metadata_dict_to_node

from llama_index_deepmemory.engine.backend import Hits, Restriction
from llama_index_deepmemory.engine.generic import GenericAdapter
from llama_index_deepmemory.engine.ids import ID_KEY, engine_id, from_engine


_FIRST_SEARCH = threading.RLock()  # pymilvus imports scipy.sparse lazily on the first search, racily
ITERATOR_BATCH = 16_384  # rows one query_iterator call may read (pymilvus refuses a larger batch_size)


def milvus_literal(value: str) -> str:
    """``value`` as a Milvus string literal (double-quoted; quotes and backslashes escaped)."""
    return json.dumps(str(value), ensure_ascii=False)


def store_filters(filters: Optional[MetadataFilters]) -> Optional[MetadataFilters]:
    """``filters`` as ``MilvusVectorStore`` should get them, to select what ``SimpleVectorStore``
    selects: NE as NIN of its one value (Milvus's ``!=`` skips a row missing the key, its ``not in``
    keeps it), string values escaped (:func:`_like` for TEXT_MATCH), keys as :func:`_field` names
    them; a NOT condition, at any depth, refused (the store's translation drops it: its one filter
    then matches unnegated, the opposite nodes)."""
    if filters is None:
        return None
    condition = filters.condition or FilterCondition.AND
    if condition not in (FilterCondition.AND, FilterCondition.OR):
        raise ValueError(f"filter condition {condition.value!r} is not supported over Milvus (MilvusVectorStore would "
                         "not negate it, matching the opposite nodes); use 'and' or 'or'")
    parts: list[Any] = []
    for f in filters.filters:
        if isinstance(f, MetadataFilters):
            parts.append(store_filters(f))
            continue
        key = _field(f.key)
        if key != f.key and f.operator in (FilterOperator.NE, FilterOperator.IN, FilterOperator.NIN):
            raise ValueError(f"filter operator {f.operator.value!r} on {f.key!r} is not supported over Milvus: a key "
                             "that is not a plain name is a $meta[...] path, which Milvus cannot test with 'in'; "
                             "rename the metadata key (letters, digits, _), or use EQ/OR")
        if f.operator == FilterOperator.NE:
            parts.append(MetadataFilter(key=key, value=[f.value], operator=FilterOperator.NIN))
        elif f.operator == FilterOperator.TEXT_MATCH and isinstance(f.value, str):
            parts.append(MetadataFilter(key=key, value="%" + _like(f.value), operator=f.operator))
        elif isinstance(f.value, str):  # the store escapes its quotes, not its backslashes
            parts.append(MetadataFilter(key=key, value=f.value.replace("\\", "\\\\"), operator=f.operator))
        else:
            parts.append(MetadataFilter(key=key, value=f.value, operator=f.operator))
    return MetadataFilters(filters=parts, condition=condition)  # None: AND (the store needs one)


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_KEYWORDS = {"and", "or", "not", "in", "like", "exists", "true", "false", "is", "null"}


def _field(key: str) -> str:
    """A metadata key as the store should write it: a plain name bare (a column, or a dynamic field),
    any other (``a-b``: a minus b; ``my key``; a keyword) as the dynamic field ``$meta["<key>"]``."""
    if _NAME.fullmatch(key) and key.lower() not in _KEYWORDS:
        return key
    return f"$meta[{milvus_literal(key)}]"


def _like(value: str) -> str:
    """A TEXT_MATCH value as the store's ``like '<value>%'`` should get it, a substring match as in
    SimpleVectorStore (the store writes it unescaped, as a prefix): backslashes and quotes escaped,
    ``%`` and ``_`` matched literally."""
    return value.replace("\\", "\\\\").replace("'", "\\'").replace("%", "\\\\%").replace("_", "\\\\_")


class MilvusAdapter(GenericAdapter):
    name = "milvus"
    _searched = False  # in this process: until then reads run one at a time (KeyError: 'scipy.sparse')

    def _reading(self) -> Any:
        return contextlib.nullcontext() if MilvusAdapter._searched else _FIRST_SEARCH

    def _has(self) -> bool:
        with self._reading():
            return bool(self.engine.client.has_collection(self.engine.collection_name))

    def metric(self) -> str:
        """The metric the collection's dense index ranks by (the store's setting when unreadable)."""
        store = self.engine
        metric = (store.index_config or {}).get("metric_type", store.similarity_metric)
        try:
            if self._has():
                index = (store.index_config or {}).get("index_name", store.embedding_field)
                metric = store.client.describe_index(store.collection_name, index).get("metric_type", metric)
        except Exception:  # noqa: BLE001 - no index yet: the store's setting
            pass
        return str(metric).upper()

    def check(self) -> None:
        super().check()
        metric = self.metric()
        if metric != "COSINE":
            raise ValueError(
                f"the Milvus collection {self.engine.collection_name!r} ranks by {metric} (MilvusVectorStore's "
                "default is IP), but Deep Memory needs cosine similarity; pass "
                "MilvusVectorStore(..., similarity_metric='COSINE') (an existing collection keeps its index's "
                "metric: re-create it with overwrite=True or under a new collection_name)"
            )

    def search(self, queries: np.ndarray, k: int, restriction: Restriction, bodies: bool | None = True) -> Hits:
        """Without ``bodies``, each query asks only the ids (``VectorStoreQuery.output_fields``; the
        store then fills no metadata, so stored ids are named as remembered, else in one read)."""
        if restriction.filters is not None:  # (most searches have none: no translation, no copy)
            restriction = dataclasses.replace(restriction, filters=store_filters(restriction.filters))
        if bodies or k <= 0 or restriction.empty:
            hits = super().search(queries, k, restriction, bodies)
            MilvusAdapter._searched = MilvusAdapter._searched or k > 0
            return hits
        rows = []
        for q in np.asarray(queries, dtype=np.float32):
            with self._reading():
                result = self.engine.query(self._store_query(q, k, restriction, output_fields=[ID_KEY]))
            rows.append(list(zip([str(i) for i in result.ids or []], result.similarities or [])))
        MilvusAdapter._searched = True
        return self._named_hits(rows)

    def _store_query(self, q: np.ndarray, k: int, restriction: Restriction, **fields: Any) -> VectorStoreQuery:
        """The store's query for ``q``: the document restriction as a filter (the store writes
        ``doc_ids`` into its expression unescaped: a quote failed it, or escaped the other filters)."""
        filters = restriction.filters
        if restriction.doc_ids:
            by_doc = MetadataFilter(key=self.engine.doc_id_field, value=list(restriction.doc_ids),
                                    operator=FilterOperator.IN)
            filters = MetadataFilters(filters=[filters, by_doc] if filters is not None else [by_doc])
        return VectorStoreQuery(
            query_embedding=q.astype(np.float64).tolist(), similarity_top_k=int(k), filters=filters,
            node_ids=[engine_id(i) for i in restriction.node_ids] if restriction.node_ids else None, **fields)

    def _query_one(self, q: np.ndarray, k: int, restriction: Restriction) -> tuple[list[BaseNode], list[float]]:
        result = self.engine.query(self._store_query(q, k, restriction))
        nodes = result.nodes or []
        return nodes, list(result.similarities or [1.0] * len(nodes))

    def _node(self, row: dict) -> BaseNode:
        node = metadata_dict_to_node(row, text=row.get(self.engine.text_key))
        embedding = row.get(self.engine.embedding_field)
        node.embedding = [float(x) for x in embedding] if embedding is not None else None
        return node

    def _get(self, stored_ids: list[str], filters: Optional[MetadataFilters], with_vectors: bool) -> list[BaseNode]:
        if not stored_ids:
            return []
        filters = store_filters(filters)
        by_id = MetadataFilter(key="id", value=list(stored_ids), operator=FilterOperator.IN)
        both = MetadataFilters(filters=[filters, by_id]) if filters is not None and filters.filters else None
        return self.engine.get_nodes(filters=both) if both is not None else self.engine.get_nodes(node_ids=stored_ids)

    def filtered(self, filters: MetadataFilters) -> list[BaseNode]:
        filters = store_filters(filters)
        return super().filtered(filters) if self._has() else []

    def _delete_document(self, ref_doc_id: str) -> None:
        """By source document, its id a quoted literal (the store's own writes it unescaped)."""
        if self._has():
            self.engine.client.delete(self.engine.collection_name,
                                      filter=f"{self.engine.doc_id_field} == {milvus_literal(ref_doc_id)}")

    def _delete_nodes(self, ids: Optional[list[str]], filters: Optional[MetadataFilters]) -> None:
        """The named nodes that pass ``filters`` (ids ANDed with the filters, as ``_get`` reads them)."""
        filters = store_filters(filters)
        if ids is None:
            self.engine.delete_nodes(None, filters=filters)
            return
        if not ids:  # nothing named (the store would delete every filter match, or fail)
            return
        by_id = MetadataFilter(key="id", value=list(ids), operator=FilterOperator.IN)
        both = MetadataFilters(filters=[filters, by_id]) if filters is not None and filters.filters else None
        self.engine.delete_nodes(None if both is not None else ids, filters=both)

    def _clear(self) -> None:  # its clear drops the collection, and its add cannot re-create it
        if self.engine.client.has_collection(self.engine.collection_name):
            self.engine.client.delete(self.engine.collection_name, filter='id != ""')

    def count(self) -> int:
        if not self._has():
            return 0
        with self._reading():
            rows = self.engine.client.query(self.engine.collection_name, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    def pages(self, with_vectors: bool, limit: int) -> Iterator[list[BaseNode]]:
        """Every node, ``limit`` at a time (``query_iterator``, which reads at most
        ``ITERATOR_BATCH`` rows a call: larger pages are gathered from several)."""
        if not self._has():
            return
        client, name = self.engine.client, self.engine.collection_name
        iterator = client.query_iterator(name, batch_size=min(int(limit), ITERATOR_BATCH), filter="",
                                         output_fields=["*"])
        page: list[BaseNode] = []
        try:
            while True:
                with self._reading():
                    rows = iterator.next()
                page.extend(from_engine(self._node(row)) for row in rows)
                while len(page) >= limit or (page and not rows):
                    yield self._listed(page[:limit])
                    page = page[limit:]
                if not rows:
                    return
        finally:
            iterator.close()
