"""Deep Memory over PostgreSQL with pgvector (LlamaIndex's ``PGVectorStore``; a real server that
``tests/pg_server.py`` starts on a Unix socket, never a mock).

Plain results through the wrapper equal the store's own; the same model ranks over PostgreSQL as
over the embedded FAISS store; filters, node and document restrictions, deletes, listing (the
store's ``get_nodes()`` cannot list), training and model persistence.
"""

from __future__ import annotations

import itertools

import pytest

pytest.importorskip("pgserver")
pytest.importorskip("llama_index.vector_stores.postgres")
from llama_index.vector_stores.postgres import PGVectorStore  # noqa: E402

from llama_index_deepmemory.deep_memory.models import LEXICAL_DEPTH  # noqa: E402
from llama_index_deepmemory.store import DeepMemoryVectorStore  # noqa: E402
from synthetic import DIM, N_TRAIN, OPTIONS, KeywordTask  # noqa: E402
from wrapped_checks import (  # noqa: E402
    EVEN, ask, check_delete_nodes_like_simple, check_deletes_filters_and_get_nodes,
    check_failed_readd_keeps_the_node, check_filters_like_simple, check_ids_cannot_impersonate, check_listing,
    check_threads, check_plain_equals_engine, check_ranks_like_faiss, check_readding_replaces, check_reopened,
    check_restrictions, faiss_twin, nodes_with_docs, with_model,
)

_tables = itertools.count()


def pg_engine(uri: str, table: str) -> PGVectorStore:
    """A ``PGVectorStore`` on the test server (sync psycopg2 and async asyncpg URLs, one socket)."""
    rest = uri.split("://", 1)[1]
    return PGVectorStore(connection_string=f"postgresql+psycopg2://{rest}",
                         async_connection_string=f"postgresql+asyncpg://{rest}", table_name=table, embed_dim=DIM)


def pg_store(uri: str, task: KeywordTask, table: str | None = None, **kwargs) -> DeepMemoryVectorStore:
    store = DeepMemoryVectorStore(vector_store=pg_engine(uri, table or f"docs{next(_tables)}"), **kwargs)
    store.add(nodes_with_docs(task))
    return store


@pytest.fixture(scope="module")
def shared(task, postgres_server):
    """One table for the read-only tests."""
    faiss_store, pg = faiss_twin(task), pg_store(postgres_server, task)
    with_model(task, faiss_store, pg)
    return faiss_store, pg


@pytest.mark.parametrize("filters", [None, EVEN], ids=["all", "filtered"])
def test_plain_results_equal_the_stores_own(task, shared, filters) -> None:
    check_plain_equals_engine(task, shared[1], filters)


@pytest.mark.parametrize("filters", [None, EVEN], ids=["all", "filtered"])
@pytest.mark.parametrize("with_text", [True, False], ids=["keywords", "dense"])
def test_the_same_model_ranks_alike_over_postgres_and_faiss(task, shared, filters, with_text) -> None:
    check_ranks_like_faiss(task, *shared, filters, with_text, n_queries=25)


def test_node_and_doc_restrictions(task, shared) -> None:
    check_restrictions(task, *shared)  # the store's query ignores both: the adapter's SQL applies them


def test_listing_reads_every_node_a_page_at_a_time(task, shared) -> None:
    check_listing(task, shared[1])  # its get_nodes() cannot list ("Either node_ids or filters must be provided")


def test_deletes_filters_and_get_nodes_pass_through(task, postgres_server) -> None:
    store = pg_store(postgres_server, task)
    with_model(task, store)
    check_deletes_filters_and_get_nodes(task, store)


def test_re_adding_an_id_replaces_the_node(task, postgres_server) -> None:
    store = pg_store(postgres_server, task)
    again = nodes_with_docs(task)[:3]
    again[0].text = "replaced text"
    store.add(again)  # the store's own add would keep a second row per id
    assert len(store) == len(task.ids)
    assert store.get_nodes(["node_0"])[0].text == "replaced text"


def test_reads_by_id_use_the_keys_seen_and_see_other_handles_writes(task, postgres_server) -> None:
    """After a listing, a read by id goes by the table's key (the store indexes no node_id, so its
    own read scans); a row another handle deleted, or deleted and re-added, reads as it is now."""
    from sqlalchemy import event

    store = pg_store(postgres_server, task, table="keyed")
    listed = {n.node_id: n for n in store.get_nodes()}  # the listing sees every row's key
    engine = store._backend.backend._sql()
    statements: list[str] = []
    record = lambda conn, cursor, statement, *args: statements.append(statement)  # noqa: E731
    event.listen(engine, "before_cursor_execute", record)
    try:
        ids = ["node_3", "node_0", "nowhere", "node_5"]
        got = store.get_nodes(ids)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert [(n.node_id, n.text, n.metadata) for n in got] == [
        (i, listed[i].text, listed[i].metadata) for i in ids if i in listed]
    assert any("WHERE id = ANY(" in s for s in statements), statements
    other = DeepMemoryVectorStore(vector_store=pg_engine(postgres_server, "keyed"))  # as another process
    again = nodes_with_docs(task)[1]
    again.text = "re-added"
    other.delete_nodes(["node_1", "node_2"])
    other.add([again])
    assert [(n.node_id, n.text) for n in store.get_nodes(["node_1", "node_2", "node_0"])] == [
        ("node_1", "re-added"), ("node_0", listed["node_0"].text)]


def test_models_persist_and_a_reopened_table_serves_the_same(task, postgres_server, tmp_path) -> None:
    model_dir = tmp_path / "models"
    first = pg_store(postgres_server, task, table="reopened", model_dir=model_dir)

    def reopen():
        return DeepMemoryVectorStore(vector_store=pg_engine(postgres_server, "reopened"), model_dir=model_dir)

    check_reopened(task, first, reopen)


def test_ids_cannot_replace_hide_or_impersonate_a_node(task, postgres_server) -> None:
    check_ids_cannot_impersonate(task, pg_store(postgres_server, task))


def test_ids_cannot_impersonate_a_node_whose_row_a_search_has_seen(task, postgres_server) -> None:
    """The add guard reads rows a search saw by their key: those must still name the stored id."""
    store = pg_store(postgres_server, task, table="seen_rows")
    assert "node_7" in ask(store, task.docs[7], k=3).ids  # the search keeps node_7's row key
    check_ids_cannot_impersonate(task, store)


def test_queries_under_threads_while_adding_and_deleting(task, postgres_server) -> None:
    store = pg_store(postgres_server, task)
    with_model(task, store)
    check_threads(task, store)


@pytest.mark.slow
def test_training_over_postgres_matches_training_over_faiss(task, postgres_server) -> None:
    """Same data, same seed: the model trained over PostgreSQL evaluates as the one trained over FAISS."""
    options = dict(OPTIONS, epochs=3, validation_folds=2, key_thresholds=(0.8,), key_weights=(0.4,),
                   lexical_weights=(0.2, 0.5))
    results = {}
    for name, store in (("faiss", task.store()), ("postgres", pg_store(postgres_server, task))):
        store.keyword_depth = LEXICAL_DEPTH  # the model's own head over both (the task's dense ranks are random)
        store.deep_memory.train(task.texts[:N_TRAIN], task.relevance[:N_TRAIN], embedding=task.queries[:N_TRAIN],
                                **options)
        results[name] = store.deep_memory.evaluate(task.texts[N_TRAIN:], task.relevance[N_TRAIN:],
                                                   embedding=task.queries[N_TRAIN:], top_k=(1, 10))
    assert results["postgres"] == results["faiss"]
    assert results["postgres"]["with model"]["recall@10"] > results["postgres"]["without model"]["recall@10"] + 0.2


def test_query_vectors_are_sent_as_exact_float32_text() -> None:
    """pgvector stores float32: the text a search sends names each query float32 exactly (9
    significant digits), extremes included, and the server reads the same vector back."""
    import numpy as np

    from llama_index_deepmemory.engine.postgres import _vector

    rng = np.random.default_rng(0)
    q = np.concatenate([rng.normal(size=380), [1e-45, -3.4028235e38, 1.1754944e-38, 0.0]]).astype(np.float32)
    text = _vector(q)
    assert text.startswith("[") and text.endswith("]") and " " not in text
    np.testing.assert_array_equal(np.array(text[1:-1].split(","), dtype=np.float64).astype(np.float32), q)
    assert _vector(q[:3].astype(np.float64)) == _vector(q[:3])  # float64 input: as the float32 it is stored as


def test_the_server_reads_a_sent_vector_back_exactly(postgres_server) -> None:
    import numpy as np
    from sqlalchemy import create_engine, text

    from llama_index_deepmemory.engine.postgres import _vector

    q = np.random.default_rng(1).normal(size=DIM).astype(np.float32)
    rest = postgres_server.split("://", 1)[1]
    with create_engine(f"postgresql+psycopg2://{rest}").connect() as connection:
        connection.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
        back = connection.execute(text("SELECT CAST(:v AS vector)::text"), {"v": _vector(q)}).scalar()
    np.testing.assert_array_equal(np.array(back[1:-1].split(","), dtype=np.float32), q)


def test_delete_nodes_removes_only_the_named_nodes_that_pass_the_filters(task, postgres_server) -> None:
    """The store's delete_nodes([], filters=...) deleted every node passing the filters."""
    check_delete_nodes_like_simple(task, DeepMemoryVectorStore(
        vector_store=pg_engine(postgres_server, f"docs{next(_tables)}")))


def test_filter_values_are_bound_not_spliced_into_sql(task, postgres_server) -> None:
    """The store writes filter values into its SQL unescaped (get_nodes and delete_nodes by
    filters): ``it's`` failed, and ``x' OR '1'='1`` matched and deleted every node."""
    from llama_index.core.schema import TextNode
    from llama_index.core.vector_stores.types import FilterOperator, MetadataFilter, MetadataFilters

    store = DeepMemoryVectorStore(vector_store=pg_engine(postgres_server, f"docs{next(_tables)}"))
    values = ["it's", "plain", "o''k"]
    store.add([TextNode(id_=f"n{j}", text=f"t{j}", metadata={"s": v}, embedding=task.docs[j].tolist())
               for j, v in enumerate(values)])
    for j, value in enumerate(values):
        filters = MetadataFilters(filters=[MetadataFilter(key="s", value=value)])
        assert [n.node_id for n in store.get_nodes(filters=filters)] == [f"n{j}"]
        assert [n.node_id for n in store.get_nodes(["n0", "n1", "n2"], filters=filters)] == [f"n{j}"]
        assert ask(store, task.docs[0], k=3, filters=filters).ids == [f"n{j}"]
    for operator in (FilterOperator.EQ, FilterOperator.TEXT_MATCH, FilterOperator.IN):
        value = "x' OR '1'='1"
        injection = MetadataFilters(filters=[MetadataFilter(key="s", value=[value] if operator == "in" else value,
                                                            operator=operator)])
        assert store.get_nodes(filters=injection) == []
        store.delete_nodes(filters=injection)
        assert len(store.get_nodes()) == 3, operator
    for value, expected in (("'", ["n0", "n2"]), ("%", []), ("l_i", [])):  # a substring; LIKE's wildcards literal
        filters = MetadataFilters(filters=[MetadataFilter(key="s", value=value, operator=FilterOperator.TEXT_MATCH)])
        assert [n.node_id for n in store.get_nodes(filters=filters)] == expected, value
        assert sorted(ask(store, task.docs[0], k=3, filters=filters).ids) == expected, value
    store.delete_nodes(filters=MetadataFilters(filters=[MetadataFilter(key="s", value="it's")]))
    assert sorted(n.node_id for n in store.get_nodes()) == ["n1", "n2"]


def test_filters_select_what_simple_vector_store_selects(task, postgres_server) -> None:
    """NE and NIN skipped rows missing the key (SQL's NULL), and IN compared numbers as text
    (``1.0`` is not ``'1'``); SimpleVectorStore keeps those rows and compares the numbers."""
    check_filters_like_simple(task, DeepMemoryVectorStore(
        vector_store=pg_engine(postgres_server, f"docs{next(_tables)}")))


def test_a_refused_readd_keeps_the_stored_node(task, postgres_server) -> None:
    """The adapter deletes an id's old row before the store's add (which would keep both): metadata
    PostgreSQL refuses (a NUL character in JSONB) lost the node."""
    check_failed_readd_keeps_the_node(task, DeepMemoryVectorStore(
        vector_store=pg_engine(postgres_server, f"docs{next(_tables)}")), {"k": "a\x00b"})


def test_adding_an_id_again_replaces_the_node(task, postgres_server) -> None:
    check_readding_replaces(task, DeepMemoryVectorStore(
        vector_store=pg_engine(postgres_server, f"docs{next(_tables)}")))


def test_a_number_filter_passes_over_rows_holding_text_under_the_key(task, postgres_server) -> None:
    """Numbers compare as ``(metadata_->>key)::float``: one row holding ``"unknown"`` under the key
    failed every query ("invalid input syntax for type double precision"); SimpleVectorStore finds it
    unequal."""
    from llama_index.core.schema import TextNode
    from llama_index.core.vector_stores.types import FilterOperator, MetadataFilter, MetadataFilters

    store = DeepMemoryVectorStore(vector_store=pg_engine(postgres_server, f"docs{next(_tables)}"))
    store.add([TextNode(id_=f"n{j}", text=f"t{j}", metadata=m, embedding=task.docs[j].tolist())
               for j, m in enumerate([{"y": 2020}, {"y": "unknown"}, {}, {"y": 2020.0}])])
    for value, operator, expected in ((2020, "==", ["n0", "n3"]), (2020, "!=", ["n1", "n2"]),
                                      ([2020], "in", ["n0", "n3"]), ([2020], "nin", ["n1", "n2"])):
        filters = MetadataFilters(filters=[MetadataFilter(key="y", value=value, operator=FilterOperator(operator))])
        assert sorted(n.node_id for n in store.get_nodes(filters=filters)) == expected, operator
        assert sorted(ask(store, task.docs[0], k=4, filters=filters).ids) == expected, operator
