"""PostgreSQL with pgvector (LlamaIndex's ``PGVectorStore``) as a backend.

Writes and reads by id go through the store (``add``, ``delete``, ``delete_nodes``, ``clear``,
``get_nodes(node_ids=...)``); what the store cannot do runs as this module's own SQL over the
store's table (``<schema>.data_<table_name>``, through the store's SQLAlchemy engine), every value
a bound parameter:

* searching: the store's ``query`` ignores ``node_ids`` and ``doc_ids`` and asks one query per
  call; here every query vector of a search goes out in one statement (a ``LATERAL`` top ``k`` per
  vector, pgvector's cosine distance ``<=>``, so an HNSW index serves it), restricted by ids,
  documents and metadata filters;
* listing and counting: its ``get_nodes()`` needs ids or filters
  ("AssertionError: Either node_ids or filters must be provided");
* re-adding an id: its ``add`` inserts a second row, so the old row is deleted first (and written
  back if the add fails);
* reading and deleting by metadata filters: the store writes filter values into its SQL unescaped
  (``x' OR '1'='1`` matched, and deleted, every row), and its NE and NIN skip rows missing the key.
"""

from __future__ import annotations

import json
from typing import Any, Iterator, Optional

import numpy as np
from llama_index.core.schema import BaseNode
from llama_index.core.vector_stores.types import FilterOperator, MetadataFilters
from llama_index.core.vector_stores.utils import metadata_dict_to_node

from llama_index_deepmemory.engine.backend import Hits, Restriction
from llama_index_deepmemory.engine.generic import NAMES, GenericAdapter
from llama_index_deepmemory.engine.ids import ID_KEY, engine_id, from_engine, owner

_COMPARE = {FilterOperator.EQ: "=", FilterOperator.NE: "!=", FilterOperator.GT: ">", FilterOperator.LT: "<",
            FilterOperator.GTE: ">=", FilterOperator.LTE: "<="}


def is_postgres(store: Any) -> bool:
    return type(store).__name__ == "PGVectorStore"


class _Params:
    """Bound parameters of one statement (``:p0``, ``:p1``, ...)."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def __call__(self, value: Any) -> str:
        name = f"p{len(self.values)}"
        self.values[name] = value
        return f":{name}"


def sql_where(filters: MetadataFilters, bind: _Params) -> str:
    """LlamaIndex filters as a SQL condition over ``metadata_`` (as ``PGVectorStore`` compares:
    numbers as float, everything else as text), every value bound, selecting what
    ``SimpleVectorStore`` selects (a row missing the key passes NE and NIN only)."""
    parts = []
    for f in filters.filters:
        if isinstance(f, MetadataFilters):
            if f.filters:
                parts.append(f"({sql_where(f, bind)})")
            continue
        name = bind(f.key)
        op, value, field = f.operator or FilterOperator.EQ, f.value, f"metadata_->>{name}"
        # a number compares with a row's number only (another row's text under the key failed the cast)
        number = f"(CASE WHEN jsonb_typeof((metadata_->{name})::jsonb) = 'number' THEN ({field})::float END)"
        # NE and NIN as "not EQ" / "not IN": a row missing the key passes them, as in SimpleVectorStore
        negate = {FilterOperator.NE: FilterOperator.EQ, FilterOperator.NIN: FilterOperator.IN}.get(op)
        test = op if negate is None else negate
        if test in _COMPARE and _number(value):
            condition = f"{number} {_COMPARE[test]} {bind(float(value))}"
        elif test in _COMPARE:
            condition = f"{field} {_COMPARE[test]} {bind(_text(value))}"
        elif test == FilterOperator.IN and value and all(_number(v) for v in value):  # numbers compare as numbers
            condition = f"{number} = ANY(CAST({bind([float(v) for v in value])} AS float8[]))"
        elif test == FilterOperator.IN:
            condition = f"{field} = ANY(CAST({bind([_text(v) for v in value])} AS text[]))"
        elif op in (FilterOperator.TEXT_MATCH, FilterOperator.TEXT_MATCH_INSENSITIVE):  # a substring, wildcards literal
            like = "LIKE" if op == FilterOperator.TEXT_MATCH else "ILIKE"
            escaped = str(value).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            condition = f"{field} {like} {bind('%' + escaped + '%')}"
        elif op == FilterOperator.IS_EMPTY:
            condition = f"{field} IS NULL"
        else:
            raise ValueError(f"filter operator {op.value!r} on {f.key!r} is not supported over PostgreSQL; use "
                             "EQ, NE, GT, GTE, LT, LTE, IN, NIN, TEXT_MATCH or IS_EMPTY")
        parts.append(f"COALESCE({condition}, FALSE)" if negate is None else f"NOT COALESCE({condition}, FALSE)")
    condition = str(getattr(filters.condition, "value", filters.condition) or "and").lower()
    if condition not in ("and", "or"):
        raise ValueError(f"filter condition {condition!r} is not supported over PostgreSQL; use 'and' or 'or'")
    return f" {condition.upper()} ".join(parts) or "TRUE"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _vector(q: np.ndarray) -> str:
    """A query vector as pgvector's text input: 9 significant digits, which name every float32
    exactly (pgvector stores float32), in one format call (a 384-d query: ~60 us, where a
    ``repr`` per element took ~170 us and a string 60% longer for the server to parse)."""
    values = np.asarray(q, dtype=np.float32).tolist()
    return "[" + ",".join(["%.9g"] * len(values)) % tuple(values) + "]"


def _stored_node(node_id: str, text: str, metadata: Any, embedding: Any = None) -> BaseNode:
    """A row as the engine stores it (its stored id and id key kept, as ``get_nodes`` returns it)."""
    node = metadata_dict_to_node(json.loads(metadata) if isinstance(metadata, str) else metadata)
    node.set_content(str(text))
    if embedding is not None:
        node.embedding = [float(x) for x in (embedding if not isinstance(embedding, str) else embedding[1:-1].split(","))]
    return node


def _node(node_id: str, text: str, metadata: Any, embedding: Any = None) -> BaseNode:
    """A row as it was added (its original id restored)."""
    return from_engine(_stored_node(node_id, text, metadata, embedding))


class PostgresAdapter(GenericAdapter):
    name = "postgres"
    pays_per_hit = True  # each hit a search asks costs (rows read, a wider HNSW walk): Deep Memory asks few beyond
    replaces = True  # its add inserts a second row under an id it holds: _replace deletes the old row first

    def __init__(self, engine: Any) -> None:
        super().__init__(engine)
        self._autocommit: tuple[Any, Any] | None = None  # (the store's SQLAlchemy engine, its autocommit twin)
        # stored id -> the table's primary key, of rows seen (the store indexes no node_id: a read by
        # node id scans the table, a read by key does not); a key is never reused, and a row re-added
        # under the same id gets a new one, so a stale key finds nothing and the read falls back
        self._keys: dict[str, int] = {}

    def _sql(self) -> Any:
        """The store's SQLAlchemy engine (the store connects and creates its table on first use)."""
        if self.engine.client is None:
            self.engine.get_nodes(node_ids=["\x01"])  # any public call initialises the store
        return self.engine.client

    @property
    def _table(self) -> str:
        schema, table = self.engine.schema_name, f"data_{self.engine.table_name}"
        return '"' + schema.replace('"', '""') + '"."' + table.replace('"', '""') + '"'

    def _execute(self, statement: str, values: dict[str, Any], ef_search: int | None = None) -> list[Any]:
        """Rows of one read. With ``ef_search`` (as the store's query sets it; pgvector's HNSW
        returns at most ``hnsw.ef_search`` rows) it holds for this statement only: over psycopg2,
        ``SET LOCAL`` and the statement go as one query string in autocommit mode, which PostgreSQL
        runs as one transaction (one round trip where BEGIN, SET, the statement and COMMIT are four);
        over another driver, in an explicit transaction."""
        from sqlalchemy import text

        sql = self._sql()
        setting = f"SET LOCAL hnsw.ef_search = {int(ef_search)}; " if ef_search is not None else ""
        if sql.dialect.driver == "psycopg2":  # binds client-side: several statements in one string work
            if self._autocommit is None or self._autocommit[0] is not sql:
                self._autocommit = (sql, sql.execution_options(isolation_level="AUTOCOMMIT"))
            with self._autocommit[1].connect() as connection:
                return list(connection.execute(text(setting + statement), values))
        with sql.connect() as connection, connection.begin():
            if setting:
                connection.execute(text(setting.rstrip("; ")))
            return list(connection.execute(text(statement), values))


    def search(self, queries: np.ndarray, k: int, restriction: Restriction, bodies: bool | None = True) -> Hits:
        """Every query's top ``k`` in one statement (without ``bodies``: ids and distances only)."""
        queries = np.asarray(queries, dtype=np.float32)
        if k <= 0 or restriction.empty or len(queries) == 0:
            return Hits.none(len(queries))
        bind = _Params()
        where = ["TRUE"]
        if restriction.filters is not None:
            where.append(f"({sql_where(restriction.filters, bind)})")
        if restriction.node_ids:
            where.append(f"node_id = ANY({bind([engine_id(i) for i in restriction.node_ids])})")
        if restriction.doc_ids:
            where.append(f"metadata_->>'ref_doc_id' = ANY({bind(list(restriction.doc_ids))})")
        kind = "halfvec" if getattr(self.engine, "use_halfvec", False) else "vector"
        vectors = ", ".join(f"({i}, CAST({bind(_vector(q))} AS {kind}))" for i, q in enumerate(queries))
        # without bodies the rows still come (reading them by id later would scan the table: the store
        # indexes no node_id), kept unparsed; only the k a result returns are built into nodes
        columns = "metadata_ AS b" if bodies else "metadata_::text AS b"
        statement = (
            f"SELECT q.i, r.node_id, r.text, r.b, r.original, r.distance, r.id FROM (VALUES {vectors}) AS q(i, v) "
            f"CROSS JOIN LATERAL (SELECT id, node_id, text, {columns}, metadata_->>'{ID_KEY}' AS original, "
            f"embedding <=> q.v AS distance FROM {self._table} "
            f"WHERE {' AND '.join(where)} ORDER BY embedding <=> q.v LIMIT {int(k)}) AS r ORDER BY q.i, r.distance"
        )
        version = self.version
        hnsw = self.engine.hnsw_kwargs
        ef_search = max(int(hnsw.get("hnsw_ef_search", 40)), int(k)) if hnsw else None
        with self._reading():
            rows = self._execute(statement, bind.values, ef_search)
        hits = Hits.none(len(queries))
        handles: list[list[str]] = [[] for _ in queries]
        distances: list[list[float]] = [[] for _ in queries]
        kept = []
        texts, nodes = hits.texts, hits.nodes
        self._key_rows({r[1]: r[6] for r in rows})
        for i, stored_id, text, metadata, original, distance, _ in rows:
            # a row without the original-id key is stored under its own id
            node_id = stored_id if original is None else owner(stored_id, {ID_KEY: original})
            if bodies:
                nodes[node_id] = _node(stored_id, text, metadata)
            texts[node_id] = text
            kept.append((node_id, (stored_id, text, metadata)))
            handles[i].append(node_id)
            distances[i].append(distance)
        self._keep(kept, version)
        hits.handles = handles
        # 1 - distance in float64, then float32: as the per-row ``1.0 - float(distance)`` was
        hits.scores = [(1.0 - np.asarray(d, dtype=np.float64)).astype(np.float32) for d in distances]
        return hits

    def _build(self, row: Any) -> BaseNode:
        return _node(*row)

    def _key_rows(self, keys: dict[str, int]) -> None:
        with self._lock:
            if len(self._keys) + len(keys) > NAMES:
                self._keys.clear()
            self._keys.update(keys)

    def _get(self, stored_ids: list[str], filters: Optional[MetadataFilters], with_vectors: bool) -> list[BaseNode]:
        """Rows by stored id: those whose key a search or listing saw, by key (one statement), the
        rest (and, with filters, all) through the store's ``get_nodes``."""
        if not stored_ids:  # its get_nodes(node_ids=[]) returns every row
            return []
        if filters is not None and filters.filters:  # the store writes filter values into its SQL unescaped
            return [_stored_node(r[1], r[2], r[3], r[4] if with_vectors else None)
                    for r in self._filtered_rows(filters, with_vectors, stored_ids)]
        with self._lock:
            known = {i: self._keys[i] for i in stored_ids if i in self._keys}
        found: list[BaseNode] = []
        if known:
            columns = "node_id, text, metadata_" + (", embedding::text" if with_vectors else "")
            rows = self._execute(f"SELECT {columns} FROM {self._table} WHERE id = ANY(:keys) AND node_id = ANY(:ids)",
                                 {"keys": list(known.values()), "ids": list(known)})
            found = [_stored_node(r[0], r[1], r[2], r[3] if with_vectors else None) for r in rows]  # as get_nodes
            done = {r[0] for r in rows}
            stored_ids = [i for i in stored_ids if i not in done]
            if not stored_ids:
                return found
        nodes = found + self.engine.get_nodes(node_ids=stored_ids)
        for node in nodes:
            if node.embedding is not None and not isinstance(node.embedding, list):
                node.embedding = [float(x) for x in node.embedding]  # pgvector hands out numpy arrays
        return nodes

    def _filtered_rows(self, filters: MetadataFilters, with_vectors: bool,
                       stored_ids: Optional[list[str]] = None) -> list[Any]:
        """Rows (key, node id, text, metadata[, vector text]) passing ``filters`` (and among
        ``stored_ids``), by this module's SQL: the store's own writes filter values into its SQL
        unescaped (``it's`` failed; ``x' OR '1'='1`` matched, and deleted, every row)."""
        bind = _Params()
        where = [f"({sql_where(filters, bind)})"]
        if stored_ids is not None:
            where.append(f"node_id = ANY({bind(list(stored_ids))})")
        columns = "id, node_id, text, metadata_" + (", embedding::text" if with_vectors else "")
        rows = self._execute(f"SELECT {columns} FROM {self._table} WHERE {' AND '.join(where)} ORDER BY id",
                             bind.values)
        self._key_rows({r[1]: int(r[0]) for r in rows})
        return rows

    def filtered(self, filters: MetadataFilters) -> list[BaseNode]:
        with self._reading():
            rows = self._filtered_rows(filters, True)
        return [_node(r[1], r[2], r[3], r[4]) for r in rows]

    def _delete_nodes(self, ids: Optional[list[str]], filters: Optional[MetadataFilters]) -> None:
        if ids is not None and not ids:  # nothing named (the store would delete every filter match)
            return
        if filters is None or not filters.filters:
            super()._delete_nodes(ids, filters)
            return
        bind = _Params()  # by this module's SQL (see _filtered_rows)
        where = [f"({sql_where(filters, bind)})"]
        if ids is not None:
            where.append(f"node_id = ANY({bind(list(ids))})")
        self._execute(f"DELETE FROM {self._table} WHERE {' AND '.join(where)} RETURNING id", bind.values)

    def pages(self, with_vectors: bool, limit: int) -> Iterator[list[BaseNode]]:
        """Every row, a page at a time (keyset on the table's ``id``)."""
        last = -1
        columns = "id, node_id, text, metadata_" + (", embedding::text" if with_vectors else "")
        while True:
            with self._reading():
                rows = self._execute(f"SELECT {columns} FROM {self._table} WHERE id > :last ORDER BY id LIMIT :n",
                                  {"last": last, "n": int(limit)})
            if not rows:
                return
            self._key_rows({r[1]: int(r[0]) for r in rows})
            yield [_node(r[1], r[2], r[3], r[4] if with_vectors else None) for r in rows]
            last = int(rows[-1][0])
            if len(rows) < limit:
                return

    def count(self) -> int:
        with self._reading():
            return int(self._execute(f"SELECT count(*) FROM {self._table}", {})[0][0])
