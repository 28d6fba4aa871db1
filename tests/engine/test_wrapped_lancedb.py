"""Deep Memory over LanceDB (``LanceDBVectorStore`` on an embedded folder, never a mock).

Plain results through the wrapper equal LanceDB's own (its ``query`` scores ``exp(-distance)``:
turned back into cosine here); the same model ranks over LanceDB as over the embedded FAISS store;
filters, node and document restrictions, deletes, ``get_nodes``, listing a page at a time, ids
that cannot impersonate, a reopened folder and threads. The adapter reads and deletes through
LanceDB's table API: the store's own ``get_nodes(node_ids=...)``, ``delete_nodes`` and ``delete``
double-quote ids (LanceDB reads them as column names), and its ``get_nodes()`` loads the whole table.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("lancedb")
pytest.importorskip("llama_index.vector_stores.lancedb")
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode  # noqa: E402
from llama_index.core.vector_stores.types import (  # noqa: E402
    FilterCondition, FilterOperator, MetadataFilter, MetadataFilters,
)
from llama_index.vector_stores.lancedb import LanceDBVectorStore  # noqa: E402

from llama_index_deepmemory.engine.lancedb import LanceDBAdapter  # noqa: E402
from llama_index_deepmemory.store import DeepMemoryVectorStore  # noqa: E402
from synthetic import DIM, KeywordTask  # noqa: E402
from wrapped_checks import (  # noqa: E402
    EVEN, check_deletes_filters_and_get_nodes, check_failed_readd_keeps_the_node, check_ids_cannot_impersonate,
    check_listing, check_plain_equals_engine, check_ranks_like_faiss, check_readding_replaces, check_reopened,
    check_restrictions, check_threads, faiss_twin, nodes_with_docs, with_model,
)


def lancedb_engine(uri: str, mode: str = "overwrite") -> LanceDBVectorStore:
    return LanceDBVectorStore(uri=uri, table_name="docs", mode=mode)


def lancedb_store(uri: str, task: KeywordTask, **kwargs) -> DeepMemoryVectorStore:
    store = DeepMemoryVectorStore(vector_store=lancedb_engine(uri), **kwargs)
    store.add(nodes_with_docs(task))
    return store


def l2_to_cosine(similarities: list[float]) -> list[float]:
    """LanceDB's own scores, ``exp(-d)`` of the squared L2 distance of unit vectors, as cosines."""
    return [1.0 + math.log(s) / 2.0 for s in similarities]


@pytest.fixture(scope="module")
def shared(task, tmp_path_factory):
    """One LanceDB folder for the read-only tests."""
    faiss_store = faiss_twin(task)
    lance = lancedb_store(str(tmp_path_factory.mktemp("lancedb")), task)
    with_model(task, faiss_store, lance)
    return faiss_store, lance


def test_the_adapter_serves_lancedb(shared) -> None:
    assert isinstance(shared[1]._backend.backend, LanceDBAdapter)


@pytest.mark.parametrize("filters", [None, EVEN], ids=["all", "filtered"])
def test_plain_results_equal_lancedbs_own(task, shared, filters) -> None:
    check_plain_equals_engine(task, shared[1], filters, to_cosine=l2_to_cosine)


@pytest.mark.parametrize("filters", [None, EVEN], ids=["all", "filtered"])
@pytest.mark.parametrize("with_text", [True, False], ids=["keywords", "dense"])
def test_the_same_model_ranks_alike_over_lancedb_and_faiss(task, shared, filters, with_text) -> None:
    check_ranks_like_faiss(task, *shared, filters, with_text, n_queries=15)


def test_node_and_doc_restrictions(task, shared) -> None:
    check_restrictions(task, *shared)


def test_listing_reads_every_node_a_page_at_a_time(task, shared) -> None:
    check_listing(task, shared[1])


def test_listing_streams_pages_of_the_size_asked(task, shared, monkeypatch) -> None:
    """Pages come from a streamed scan (``to_batches``), never the store's ``get_nodes()``,
    which loads the whole table (1M nodes ran out of 24 GiB)."""
    store = shared[1]

    def refuse(self, *args, **kwargs):
        raise AssertionError("read through LanceDBVectorStore.get_nodes")

    monkeypatch.setattr(LanceDBVectorStore, "get_nodes", refuse)
    n = len(task.ids)
    assert [len(ids) for ids, _ in store.iter_vectors(batch_size=7)] == [7] * (n // 7) + ([n % 7] if n % 7 else [])
    assert [len(ids) for ids, _ in store.iter_texts(batch_size=50)] == [50, n - 50]
    assert [len(ids) for ids, _ in store.iter_texts()] == [n]
    assert len(store) == n


@pytest.mark.parametrize("node_id", ["it's", "o''brien", '"quoted"', "a,b)", "x' OR '1'='1"])
def test_ids_with_quotes_survive_get_and_delete(task, tmp_path, node_id) -> None:
    """Ids are SQL string literals (the store's own get_nodes/delete_nodes write ``id in ("a")``)."""
    store = DeepMemoryVectorStore(vector_store=lancedb_engine(str(tmp_path)))
    nodes = [TextNode(id_=i, text=f"text {i}", embedding=task.docs[j].tolist(), metadata={"parity": j % 2})
             for j, i in enumerate([node_id, "plain", "other"])]
    nodes[0].relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=node_id)
    store.add(nodes)
    assert [n.node_id for n in store.get_nodes([node_id, "plain"])] == [node_id, "plain"]
    assert store.get_nodes([node_id])[0].text == f"text {node_id}"
    assert ask_ids(store, task.docs[0], node_ids=[node_id]) == [node_id]
    store.delete_nodes([node_id])
    assert store.get_nodes([node_id]) == [] and len(store) == 2
    store.add(nodes[:1])
    store.delete(node_id)  # by its source document, named like it
    assert store.get_nodes([node_id]) == [] and len(store) == 2


def ask_ids(store, q, **kwargs) -> list[str]:
    from llama_index.core.vector_stores.types import VectorStoreQuery

    return store.query(VectorStoreQuery(query_embedding=q.tolist(), similarity_top_k=5, **kwargs)).ids


def test_filters_follow_simple_vector_store_semantics(task, shared) -> None:
    """Each operator, as the embedded store answers it (missing keys match only NE/NIN/IS_EMPTY)."""
    faiss_store, lance = shared
    cases = [
        MetadataFilter(key="parity", value=1, operator=FilterOperator.NE),
        MetadataFilter(key="parity", value=0, operator=FilterOperator.GT),
        MetadataFilter(key="parity", value=[1], operator=FilterOperator.IN),
        MetadataFilter(key="parity", value=[1], operator=FilterOperator.NIN),
        MetadataFilter(key="nope", value=1, operator=FilterOperator.EQ),
        MetadataFilter(key="nope", value=1, operator=FilterOperator.NE),
    ]
    for leaf in cases:
        for condition in (FilterCondition.AND, FilterCondition.NOT):
            filters = MetadataFilters(filters=[leaf], condition=condition)
            expected = {n.node_id for n in faiss_store.get_nodes(filters=filters)}
            assert {n.node_id for n in lance.get_nodes(filters=filters)} == expected, (leaf, condition)
    either = MetadataFilters(filters=[EVEN, MetadataFilters(filters=[MetadataFilter(key="parity", value=1)])],
                             condition=FilterCondition.OR)
    assert len(lance.get_nodes(filters=either)) == len(task.ids)


def test_deletes_filters_and_get_nodes_pass_through(task, tmp_path) -> None:
    store = lancedb_store(str(tmp_path), task)
    with_model(task, store)
    check_deletes_filters_and_get_nodes(task, store)  # clear deletes the rows, the table stays


def test_an_empty_store_answers_nothing_before_its_first_add(task, tmp_path) -> None:
    store = DeepMemoryVectorStore(vector_store=lancedb_engine(str(tmp_path)))
    assert len(store) == 0 and store.get_nodes(["node_1"]) == [] and list(store.iter_texts()) == []
    assert ask_ids(store, task.queries[0]) == []
    store.delete_nodes(["node_1"])
    store.delete("doc_1")


def test_models_persist_and_a_reopened_folder_serves_the_same(task, tmp_path) -> None:
    uri, model_dir = str(tmp_path / "db"), tmp_path / "models"
    first = lancedb_store(uri, task, model_dir=model_dir)
    check_reopened(task, first, lambda: DeepMemoryVectorStore(vector_store=lancedb_engine(uri, mode="append"),
                                                              model_dir=model_dir), n_queries=10)


def test_ids_cannot_replace_hide_or_impersonate_a_node(task, tmp_path) -> None:
    check_ids_cannot_impersonate(task, lancedb_store(str(tmp_path), task))


def test_queries_under_threads_while_adding_and_deleting(task, tmp_path) -> None:
    store = lancedb_store(str(tmp_path), task)
    with_model(task, store)
    out = check_threads(task, store, seconds=1.5)
    assert np.isfinite(out["queries"])


def test_ids_only_searches_name_uuid_and_mapped_ids(task, shared, tmp_path) -> None:
    """A plain ``search_ids`` asks ids and distances only: mapped ids (``node_3``) are named from
    their metadata, UUID ids in a table without a ``deepmemory_id`` field name themselves."""
    import uuid

    faiss_store, lance = shared
    queries = task.queries[:5]
    assert lance.deep_memory.search_ids(queries, 10, deep_memory=False) == \
        faiss_store.deep_memory.search_ids(queries, 10, deep_memory=False)
    uuids = [str(uuid.UUID(int=j + 1)) for j in range(len(task.ids))]
    nodes = [TextNode(id_=u, text=t, embedding=v.tolist()) for u, t, v in zip(uuids, task.doc_texts, task.docs)]
    store = DeepMemoryVectorStore(vector_store=lancedb_engine(str(tmp_path)))
    store.add(nodes)
    expected = [[uuids[j] for j in np.argsort(-(task.docs @ q), kind="stable")[:10]] for q in queries]
    assert store.deep_memory.search_ids(queries, 10, deep_memory=False) == expected


def test_two_writer_processes_keep_each_others_nodes(tmp_path) -> None:
    """Two real processes add and delete through the adapter over one LanceDB folder at the same
    moment: afterwards a fresh handle holds exactly what each kept, and finds each by id."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    tests = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(tests), os.environ.get("PYTHONPATH", "")])}
    uri = str(tmp_path / "db")
    seed = DeepMemoryVectorStore(vector_store=lancedb_engine(uri))  # the table exists before the writers start
    seed.add([TextNode(id_="seed", text="seed", metadata={"writer": "seed"}, embedding=[1.0] + [0.0] * 7)])
    children = [subprocess.Popen([sys.executable, str(tests / "lancedb_child.py"), uri, name, "60"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=env) for name in ("a", "b")]
    try:
        for child in children:
            ready = child.stdout.readline()
            assert ready and json.loads(ready)["ready"], child.stderr.read()[-2000:]
        for child in children:
            child.stdin.write("go\n")
            child.stdin.flush()
        kept = ["seed"]
        for child in children:
            out, err = child.communicate(timeout=120)
            assert child.returncode == 0, err[-2000:]
            kept += json.loads(out.strip().splitlines()[-1])["kept"]
    finally:
        for child in children:
            child.kill()
    assert len(kept) == 1 + 2 * 48
    fresh = DeepMemoryVectorStore(vector_store=lancedb_engine(uri, mode="append"))
    assert len(fresh) == len(kept)
    assert sorted(n.node_id for n in fresh.get_nodes(kept)) == sorted(kept)
    assert sorted(i for ids, _ in fresh.iter_texts() for i in ids) == sorted(kept)


def test_float_filter_values_compare_with_integer_metadata(task, tmp_path) -> None:
    """LanceDB refused a float literal against an int field ("could not convert to literal of
    type 'Int64'"); SimpleVectorStore compares the numbers."""
    from llama_index.core.vector_stores import SimpleVectorStore
    from llama_index.core.vector_stores.types import VectorStoreQuery

    nodes = [TextNode(id_=f"n{j}", text=f"t{j}", metadata={"a": j, "f": j / 2}, embedding=task.docs[j].tolist())
             for j in range(5)]
    simple = SimpleVectorStore()
    simple.add([n.model_copy(deep=True) for n in nodes])
    store = DeepMemoryVectorStore(vector_store=lancedb_engine(str(tmp_path)))
    store.add(nodes)
    for leaf in (MetadataFilter(key="a", value=2.0), MetadataFilter(key="a", value=1.5, operator=FilterOperator.GT),
                 MetadataFilter(key="a", value=2.5, operator=FilterOperator.LTE),
                 MetadataFilter(key="a", value=[1.0, 3.0], operator=FilterOperator.IN),
                 MetadataFilter(key="a", value=2.0, operator=FilterOperator.NE),
                 MetadataFilter(key="f", value=1, operator=FilterOperator.GTE)):
        filters = MetadataFilters(filters=[leaf])
        expected = set(simple.query(VectorStoreQuery(query_embedding=task.docs[0].tolist(), similarity_top_k=10,
                                                     filters=filters)).ids)
        assert {n.node_id for n in store.get_nodes(filters=filters)} == expected, leaf
        assert set(ask_ids(store, task.docs[0], filters=filters)) == expected, leaf


def test_adding_an_id_again_replaces_the_node(task, tmp_path) -> None:
    """The store appends: the old row stayed beside the new one (the id twice in results)."""
    check_readding_replaces(task, DeepMemoryVectorStore(vector_store=lancedb_engine(str(tmp_path))))


def test_a_refused_readd_keeps_the_stored_node(task, tmp_path) -> None:
    """LanceDB refuses metadata keys its first add did not fix: the old row stays."""
    check_failed_readd_keeps_the_node(task, DeepMemoryVectorStore(vector_store=lancedb_engine(str(tmp_path))),
                                      {"k": 1, "new": 2})


def test_a_table_first_filled_with_uuid_ids_takes_other_ids_later(task, tmp_path) -> None:
    """LlamaIndex names nodes by uuid4, stored as themselves; the first add fixes the metadata
    fields, so a later ``node_7`` (stored under its uuid5 with the id key) was refused: "field
    'deepmemory_id' does not exist in table schema"."""
    import uuid

    store = DeepMemoryVectorStore(vector_store=lancedb_engine(str(tmp_path)))
    first = str(uuid.uuid4())
    store.add([TextNode(id_=first, text="first", metadata={"k": 1}, embedding=task.docs[0].tolist())])
    store.add([TextNode(id_="node_7", text="seventh", metadata={"k": 2}, embedding=task.docs[1].tolist())])
    assert sorted((n.node_id, n.text, n.metadata) for n in store.get_nodes()) == sorted(
        [(first, "first", {"k": 1}), ("node_7", "seventh", {"k": 2})])
    assert ask_ids(store, task.docs[1])[:1] == ["node_7"] and ask_ids(store, task.docs[0])[:1] == [first]
    assert [n.node_id for n in store.get_nodes(["node_7", first])] == ["node_7", first]
    store.delete_nodes(["node_7"])
    assert [n.node_id for n in store.get_nodes()] == [first]


def test_a_value_of_another_type_than_the_field_matches_as_in_simple_vector_store(task, tmp_path) -> None:
    """LanceDB refused a string literal against an int field (and a number against a string one):
    "could not convert to Int64"; SimpleVectorStore finds no equal value (NE and NIN: every node)."""
    from llama_index.core.vector_stores import SimpleVectorStore
    from llama_index.core.vector_stores.types import VectorStoreQuery

    nodes = [TextNode(id_=f"n{j}", text=f"t{j}", metadata={"a": j, "s": f"v{j}"}, embedding=task.docs[j].tolist())
             for j in range(4)]
    simple = SimpleVectorStore()
    simple.add([n.model_copy(deep=True) for n in nodes])
    store = DeepMemoryVectorStore(vector_store=lancedb_engine(str(tmp_path)))
    store.add(nodes)
    for key, value, operator in (("a", "x", "=="), ("a", "1", "=="), ("a", "x", "!="), ("s", 1, "=="), ("s", 1, "!="),
                                 ("a", ["x", "y"], "in"), ("a", ["x"], "nin"), ("s", [1], "nin"), ("s", [1, 2], "in")):
        filters = MetadataFilters(filters=[MetadataFilter(key=key, value=value, operator=FilterOperator(operator))])
        expected = set(simple.query(VectorStoreQuery(query_embedding=task.docs[0].tolist(), similarity_top_k=10,
                                                     filters=filters)).ids)
        assert {n.node_id for n in store.get_nodes(filters=filters)} == expected, (key, value, operator)
        assert set(ask_ids(store, task.docs[0], filters=filters)) == expected, (key, value, operator)
