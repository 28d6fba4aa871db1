"""LanceDB (``LanceDBVectorStore``, an embedded folder) as a backend, through ``lancedb``'s table API.

Why not the store's own methods (llama-index-vector-stores-lancedb 0.6.0):

* ``get_nodes()`` without ids loads the whole table into pandas and builds a Python list of floats
  per node: listing 1M nodes of 384 dims ran out of 24 GiB. :meth:`LanceDBAdapter.pages` streams
  ``table.search().to_batches(limit)`` instead, a page in memory at a time.
* ``get_nodes(node_ids=...)``, ``delete_nodes`` and ``delete(ref_doc_id)`` write ``id in ("a","b")``:
  LanceDB's SQL reads double quotes as column names and fails. Here ids are SQL string literals
  (``'a'``, a ``'`` doubled), and ``delete_nodes`` also honours its filters (the store ignores them).
* ``query`` returns ``exp(-distance)`` (not cosine), ignores ``node_ids``/``doc_ids``, raises
  ``Warning`` when nothing matches, and translates ``NE`` to ``NOT LIKE '%v%'``; searches here ask
  LanceDB for cosine distance (``1 - d`` is the cosine), put the restrictions in the ``where``
  (prefiltered), and translate filters with :func:`lance_where` (``SimpleVectorStore``'s semantics).

The store's ``nprobes`` and ``refine_factor`` apply as in its ``query``. A table indexed for another
metric than cosine is searched exactly (LanceDB falls back to a flat scan). The table's metadata is
one struct column whose fields the first add fixes: LanceDB refuses a later node whose metadata has
other keys (an upstream limit, left as it is; the first add through this adapter carries the id key,
so ids stored under a uuid5 can follow). Its ``add`` appends, so re-adding an id deletes the old row
first. Reads run together, a write alone.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Optional, Sequence

import numpy as np
from llama_index.core.schema import BaseNode
from llama_index.core.vector_stores.types import FilterCondition, FilterOperator, MetadataFilters
from llama_index.core.vector_stores.utils import metadata_dict_to_node

from llama_index_deepmemory.engine.backend import Hits, Restriction
from llama_index_deepmemory.engine.generic import GenericAdapter
from llama_index_deepmemory.engine.ids import ID_KEY, engine_id, from_engine, naming_itself, owner

_COMPARE = {FilterOperator.EQ: "=", FilterOperator.GT: ">", FilterOperator.GTE: ">=", FilterOperator.LT: "<",
            FilterOperator.LTE: "<="}


def sql_literal(value: Any) -> str:
    """``value`` as a LanceDB SQL literal (strings single-quoted, ``'`` doubled; floats cast to
    DOUBLE, so they compare with int fields as numbers)."""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, (float, np.floating)):  # typed: LanceDB refuses a bare float against an int field
        return f"CAST({float(value)!r} AS DOUBLE)"
    if isinstance(value, (int, np.integer)):
        return repr(int(value))
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    raise TypeError(f"cannot compare LanceDB metadata with {type(value).__name__} {value!r}; "
                    "filter with a str, int, float or bool value")


def id_in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({','.join(sql_literal(str(v)) for v in values)})"


def _kind(value: Any) -> str:
    """``str``, ``number`` or ``other``: a value's kind, or (a pyarrow type) a field's."""
    import pyarrow as pa

    if isinstance(value, pa.DataType):
        return "str" if pa.types.is_string(value) or pa.types.is_large_string(value) else \
            "number" if pa.types.is_integer(value) or pa.types.is_floating(value) else "other"
    return "str" if isinstance(value, str) else \
        "number" if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) else "other"


def lance_where(filters: MetadataFilters, fields: Mapping[str, str]) -> str:
    """LlamaIndex filters as a LanceDB SQL predicate over ``metadata.<key>`` (``fields``: the
    metadata struct's keys and their :func:`_kind`; a key not among them is missing on every row). Each leaf is two-valued
    as in ``SimpleVectorStore``: a missing or null value matches only ``NE``, ``NIN`` and ``IS_EMPTY``."""
    parts = []
    for f in filters.filters:
        if isinstance(f, MetadataFilters):
            if f.filters:
                parts.append(lance_where(f, fields))
            continue
        parts.append(_leaf(f, fields))
    if not parts:
        return "TRUE"
    condition = filters.condition or FilterCondition.AND
    if condition == FilterCondition.OR:
        return "(" + " OR ".join(parts) + ")"
    if condition == FilterCondition.NOT:  # none of them
        return "NOT (" + " OR ".join(parts) + ")"
    return "(" + " AND ".join(parts) + ")"


def _leaf(f: Any, fields: Mapping[str, str]) -> str:
    op = f.operator or FilterOperator.EQ
    negative = op in (FilterOperator.NE, FilterOperator.NIN, FilterOperator.IS_EMPTY)
    if f.key not in fields:
        return "TRUE" if negative else "FALSE"
    key = "metadata.`" + f.key.replace("`", "``") + "`"
    values = f.value if isinstance(f.value, list) else [f.value]
    if op in (FilterOperator.EQ, FilterOperator.NE, FilterOperator.IN, FilterOperator.NIN):
        # a value of another kind than the field's equals no stored value (LanceDB refuses the literal)
        values = [v for v in values if fields[f.key] == "other" or _kind(v) in (fields[f.key], "other")]
        if not values:
            return "TRUE" if negative else "FALSE"
    if op in _COMPARE:
        return f"({key} IS NOT NULL AND {key} {_COMPARE[op]} {sql_literal(f.value)})"
    if op == FilterOperator.NE:
        return f"({key} IS NULL OR {key} <> {sql_literal(f.value)})"
    if op == FilterOperator.IN:
        return f"({key} IS NOT NULL AND {key} IN ({','.join(sql_literal(v) for v in values)}))" if values else "FALSE"
    if op == FilterOperator.NIN:
        return f"({key} IS NULL OR {key} NOT IN ({','.join(sql_literal(v) for v in values)}))" if values else "TRUE"
    if op == FilterOperator.TEXT_MATCH:
        return f"({key} IS NOT NULL AND strpos({key}, {sql_literal(str(f.value))}) > 0)"
    if op == FilterOperator.TEXT_MATCH_INSENSITIVE:
        return f"({key} IS NOT NULL AND strpos(lower({key}), lower({sql_literal(str(f.value))})) > 0)"
    if op == FilterOperator.IS_EMPTY:
        return f"({key} IS NULL OR CAST({key} AS VARCHAR) = '')"
    raise ValueError(f"filter operator {op.value!r} on {f.key!r} is not supported over LanceDB; use EQ, NE, GT, "
                     "GTE, LT, LTE, IN, NIN, TEXT_MATCH, TEXT_MATCH_INSENSITIVE or IS_EMPTY")


def _missing_table(error: Exception) -> bool:
    return type(error).__name__ == "TableNotFoundError"


class LanceDBAdapter(GenericAdapter):
    name = "lancedb"
    # each hit asked costs: ``refine_factor`` full vectors re-ranked and its row read; Deep Memory asks few beyond
    pays_per_hit = True
    reads_together = True
    replaces = True  # its add appends (the old row beside the new): _replace deletes the old row first

    def __init__(self, engine: Any) -> None:
        super().__init__(engine)
        self._fields_of: tuple[Any, dict[str, str]] | None = None  # (table, its metadata fields' kinds), read once

    def _table(self) -> Any:
        """The store's table; None before its first add (the store creates it then)."""
        try:
            return self.engine.table
        except Exception as error:  # noqa: BLE001 - the store's own TableNotFoundError
            if _missing_table(error):
                return None
            raise

    def _fields(self, table: Any) -> dict[str, str]:
        """The keys of the table's metadata struct, read once per table object: LanceDB fixes them at
        the first add, and reading the schema costs ~0.4 ms (each ids-only search and filter asks)."""
        known = self._fields_of
        if known is None or known[0] is not table:
            kind = table.schema.field("metadata").type
            known = self._fields_of = (table, {kind.field(i).name: _kind(kind.field(i).type)
                                               for i in range(kind.num_fields)})
        return known[1]

    def _where(self, table: Any, filters: Optional[MetadataFilters], *parts: str) -> Optional[str]:
        """``parts`` and ``filters`` ANDed as one predicate (None: no restriction)."""
        found = [p for p in parts if p]
        if filters is not None and filters.filters:
            found.append(lance_where(filters, self._fields(table)))
        return " AND ".join(f"({p})" for p in found) if found else None

    def _node(self, row: dict, vector: Any = None) -> BaseNode:
        node = from_engine(metadata_dict_to_node(row["metadata"]))
        if vector is not None:
            node.embedding = vector.tolist()
        return node

    # --- reads ----------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int, restriction: Restriction, bodies: bool | None = True) -> Hits:
        """One LanceDB vector search per query by cosine distance (restrictions prefiltered).
        ``bodies``: the nodes; ``None`` (a Deep Memory ranking): the rows' metadata and text, kept
        unbuilt for the few nodes the query returns (a later read by id scans the table: ``id``
        has no index); ``False``: ids and distances only."""
        table = self._table()
        if k <= 0 or restriction.empty or table is None:
            return Hits.none(len(queries))
        where = self._where(
            table, restriction.filters,
            id_in("id", [engine_id(i) for i in restriction.node_ids]) if restriction.node_ids else "",
            id_in(self.engine.doc_id_key, restriction.doc_ids) if restriction.doc_ids is not None else "")
        columns = ["id", "_distance"] + ({True: ["metadata"], None: ["metadata", self.engine.text_key]}.get(bodies, []))
        version, rows = self.version, []
        for q in np.asarray(queries, dtype=np.float32):
            search = table.search(q, vector_column_name=self.engine.vector_column_name).distance_type("cosine")
            search = search.limit(int(k))
            if self.engine.nprobes:
                search = search.nprobes(int(self.engine.nprobes))
            if self.engine.refine_factor is not None:
                search = search.refine_factor(int(self.engine.refine_factor))
            if where:
                search = search.where(where, prefilter=True)
            with self._reading():
                rows.append(search.select(columns).to_arrow().to_pylist())
        if bodies is False:
            return self._named_hits([[(r["id"], 1.0 - r["_distance"]) for r in row] for row in rows])
        hits, kept, names = Hits([], []), [], {}
        for row in rows:
            if bodies:
                nodes = [self._node(r) for r in row]
                hits.nodes.update((n.node_id, n) for n in nodes)
                handles = [n.node_id for n in nodes]
            else:
                handles = [owner(r["id"], r["metadata"]) for r in row]
                names.update((r["id"], h) for r, h in zip(row, handles))
                kept.extend((h, r["metadata"]) for h, r in zip(handles, row))
                hits.texts.update((h, r[self.engine.text_key]) for h, r in zip(handles, row))
            hits.handles.append(handles)
            hits.scores.append(1.0 - np.asarray([r["_distance"] for r in row], dtype=np.float32))
        if kept:
            self._name(names)
            self._keep(kept, version)
        return hits

    def _build(self, row: Any) -> BaseNode:
        return self._node({"metadata": row})

    def _named(self, stored_ids: Sequence[str]) -> dict[str, str]:
        """Each stored id names itself where the table's metadata has no ``deepmemory_id`` field
        (LanceDB fixes the fields at the first add: no row can carry one); else as remembered or read."""
        table = self._table()
        if table is not None and ID_KEY not in self._fields(table):
            return {i: i for i in stored_ids}
        return super()._named(stored_ids)

    def _scan(self, table: Any, where: Optional[str], columns: list[str], batch: int) -> Iterator[Any]:
        """Record batches of ``columns`` of the rows passing ``where``, ``batch`` rows at a time
        (a plain scan: no row limit, streamed)."""
        query = table.search().select(columns)
        if where:
            query = query.where(where)
        with self._reading():
            reader = query.to_batches(batch)
        while True:
            with self._reading():
                try:
                    record = reader.read_next_batch()
                except StopIteration:
                    return
            yield record

    def _nodes(self, record: Any, with_vectors: bool) -> list[BaseNode]:
        metadata = record.column("metadata").to_pylist()
        if not with_vectors:
            return [self._node({"metadata": m}) for m in metadata]
        vectors = record.column(self.engine.vector_column_name)
        matrix = vectors.flatten().to_numpy(zero_copy_only=False).reshape(len(vectors), -1)
        return [self._node({"metadata": m}, v) for m, v in zip(metadata, matrix)]

    def _columns(self, with_vectors: bool) -> list[str]:
        return ["id", "metadata"] + ([self.engine.vector_column_name] if with_vectors else [])

    def _get(self, stored_ids: list[str], filters: Optional[MetadataFilters], with_vectors: bool) -> list[BaseNode]:
        """By id with quoted ids (the store's ``get_nodes`` double-quotes them and fails)."""
        table = self._table()
        if table is None or not stored_ids:
            return []
        where = self._where(table, filters, id_in("id", stored_ids))
        return [n for record in self._scan(table, where, self._columns(with_vectors), max(1, len(stored_ids)))
                for n in self._nodes(record, with_vectors)]

    def _owners(self, stored_ids: list[str]) -> dict[str, str]:
        """Stored id -> node id, reading ids and metadata only."""
        return {engine_id(n.node_id): n.node_id for n in self._get(list(dict.fromkeys(stored_ids)), None, False)} \
            if stored_ids else {}

    def filtered(self, filters: MetadataFilters) -> list[BaseNode]:
        """Every node passing ``filters`` (translated by :func:`lance_where`), with vectors."""
        table = self._table()
        if table is None:
            return []
        where = self._where(table, filters)
        return [n for record in self._scan(table, where, self._columns(True), 4096) for n in self._nodes(record, True)]

    def pages(self, with_vectors: bool, limit: int) -> Iterator[list[BaseNode]]:
        """Every node, ``limit`` at a time, streamed from a scan (the store's ``get_nodes()`` loads
        the whole table into pandas: 1M nodes ran out of 24 GiB)."""
        table = self._table()
        if table is None:
            return
        page: list[BaseNode] = []
        for record in self._scan(table, None, self._columns(with_vectors), int(limit)):
            page.extend(self._nodes(record, with_vectors))
            while len(page) >= limit:
                yield self._listed(page[:limit])
                page = page[limit:]
        if page:
            yield self._listed(page)

    def count(self) -> int:
        table = self._table()
        if table is None:
            return 0
        with self._reading():
            return int(table.count_rows())

    # --- writes ---------------------------------------------------------------------------------
    def _delete_document(self, ref_doc_id: str) -> None:
        """By source document, quoted (the store's ``delete`` double-quotes the id and fails)."""
        table = self._table()
        if table is not None:
            table.delete(f"{self.engine.doc_id_key} = {sql_literal(str(ref_doc_id))}")

    def _add(self, nodes: list[BaseNode]) -> None:
        if self._table() is None:  # the first add fixes the metadata fields: the id key among them, so
            # that a later node stored under a uuid5 (with the key) is not refused
            nodes = [naming_itself(n) for n in nodes]
        super()._add(nodes)

    def _delete_nodes(self, ids: Optional[list[str]], filters: Optional[MetadataFilters]) -> None:
        """By ids (quoted) and/or filters (the store's ``delete_nodes`` double-quotes ids and ignores filters)."""
        table = self._table()
        if table is None or (ids is not None and not ids):
            return
        where = self._where(table, filters, id_in("id", ids) if ids is not None else "")
        if where is None:
            raise ValueError("delete_nodes needs node_ids or filters; to delete every node, call clear()")
        table.delete(where)

    def _clear(self) -> None:
        """Every row deleted (the store has no ``clear``); the table stays, so adds go on."""
        table = self._table()
        if table is not None:
            table.delete("TRUE")
