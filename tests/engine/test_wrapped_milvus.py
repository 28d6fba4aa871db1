"""Deep Memory over Milvus Lite (``pymilvus`` with the ``milvus-lite`` wheel: a local ``.db`` file,
no server to start, never a mock).

Plain results through the wrapper equal Milvus's own; the same model ranks over Milvus as over the
embedded FAISS store; filters, node and document restrictions, deletes, ``get_nodes`` and model
persistence. Milvus must rank by COSINE (``MilvusVectorStore``'s default is IP): refused otherwise.
"""

from __future__ import annotations

import pytest

pytest.importorskip("milvus_lite")
pytest.importorskip("llama_index.vector_stores.milvus")
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo  # noqa: E402
from llama_index.vector_stores.milvus import MilvusVectorStore  # noqa: E402

from llama_index_deepmemory.store import DeepMemoryVectorStore  # noqa: E402
from synthetic import DIM, KeywordTask  # noqa: E402
from wrapped_checks import (  # noqa: E402
    EVEN, ask, check_deletes_filters_and_get_nodes, check_plain_equals_engine, check_ranks_like_faiss,
    check_delete_nodes_like_simple, check_filters_like_simple, check_ids_cannot_impersonate, check_listing,
    check_reopened, check_restrictions, check_threads, faiss_twin, nodes_with_docs, with_model,
)


def milvus_engine(uri: str, **kwargs) -> MilvusVectorStore:
    return MilvusVectorStore(uri=uri, dim=DIM, similarity_metric="COSINE", use_async_client=False, **kwargs)


def milvus_store(uri: str, task: KeywordTask, **kwargs) -> DeepMemoryVectorStore:
    store = DeepMemoryVectorStore(vector_store=milvus_engine(uri, overwrite=True), **kwargs)
    store.add(nodes_with_docs(task))
    return store


@pytest.fixture(scope="module")
def shared(task, tmp_path_factory):
    """One Milvus Lite file for the read-only tests (opening one costs about a second)."""
    faiss_store = faiss_twin(task)
    milvus = milvus_store(str(tmp_path_factory.mktemp("milvus") / "shared.db"), task)
    with_model(task, faiss_store, milvus)
    yield faiss_store, milvus
    milvus.vector_store.client.close()


@pytest.mark.parametrize("filters", [None, EVEN], ids=["all", "filtered"])
def test_plain_results_equal_milvuss_own(task, shared, filters) -> None:
    check_plain_equals_engine(task, shared[1], filters)


@pytest.mark.parametrize("filters", [None, EVEN], ids=["all", "filtered"])
@pytest.mark.parametrize("with_text", [True, False], ids=["keywords", "dense"])
def test_the_same_model_ranks_alike_over_milvus_and_faiss(task, shared, filters, with_text) -> None:
    check_ranks_like_faiss(task, *shared, filters, with_text, n_queries=15)  # ~20 ms a Milvus Lite search


def test_node_and_doc_restrictions(task, shared) -> None:
    check_restrictions(task, *shared)



def test_listing_reads_every_node_a_page_at_a_time(task, shared) -> None:
    check_listing(task, shared[1])


def test_pages_larger_than_one_iterator_read_are_gathered(task, shared, monkeypatch) -> None:
    """pymilvus reads at most 16,384 rows a ``query_iterator`` call: the face's default page
    (65,536) was refused; a page is now gathered from as many reads as it takes."""
    from llama_index_deepmemory.engine import milvus

    store = shared[1]
    pages = list(store.iter_texts())  # batch_size 65,536
    assert [len(ids) for ids, _ in pages] == [len(task.ids)]
    monkeypatch.setattr(milvus, "ITERATOR_BATCH", 16)
    pages = list(store.iter_vectors(batch_size=50))
    assert [len(ids) for ids, _ in pages] == [50, len(task.ids) - 50]
    assert sorted(i for ids, _ in pages for i in ids) == sorted(task.ids)
    assert [len(ids) for ids, _ in store.iter_texts(batch_size=40)] == [40, 40]


def test_deletes_filters_and_get_nodes_pass_through(task, tmp_path) -> None:
    store = milvus_store(str(tmp_path / "deletes.db"), task)
    with_model(task, store)
    try:
        check_deletes_filters_and_get_nodes(task, store)  # clear keeps the collection: adds work after it
    finally:
        store.vector_store.client.close()


def test_models_persist_and_a_reopened_file_serves_the_same(task, tmp_path) -> None:
    uri, model_dir = str(tmp_path / "persist.db"), tmp_path / "models"
    first = milvus_store(uri, task, model_dir=model_dir)
    second = []

    def reopen():
        second.append(DeepMemoryVectorStore(vector_store=milvus_engine(uri), model_dir=model_dir))
        return second[0]

    try:
        check_reopened(task, first, reopen, close=first.vector_store.client.close, n_queries=10)
    finally:
        for store in second:
            store.vector_store.client.close()


def test_a_collection_not_ranking_by_cosine_is_refused(tmp_path) -> None:
    uri = str(tmp_path / "ip.db")
    engine = MilvusVectorStore(uri=uri, dim=DIM, overwrite=True, use_async_client=False)  # IP, its default
    try:
        with pytest.raises(ValueError, match=r"ranks by IP.*similarity_metric='COSINE'"):
            DeepMemoryVectorStore(vector_store=engine)
    finally:
        engine.client.close()
    # the collection's index decides, not the setting of the store that reopens it
    reopened = milvus_engine(uri)
    try:
        with pytest.raises(ValueError, match=r"ranks by IP.*overwrite=True"):
            DeepMemoryVectorStore(vector_store=reopened)
    finally:
        reopened.client.close()


def test_ids_cannot_replace_hide_or_impersonate_a_node(task, tmp_path) -> None:
    store = milvus_store(str(tmp_path / "ids.db"), task)
    try:
        check_ids_cannot_impersonate(task, store)
    finally:
        store.vector_store.client.close()


def test_queries_under_threads_while_adding_and_deleting(task, tmp_path) -> None:
    store = milvus_store(str(tmp_path / "threads.db"), task)
    with_model(task, store)
    try:
        check_threads(task, store)
    finally:
        store.vector_store.client.close()


@pytest.fixture
def empty(tmp_path):
    """A store over a new Milvus Lite file (closed after the test)."""
    store = DeepMemoryVectorStore(vector_store=milvus_engine(str(tmp_path / "empty.db"), overwrite=True))
    yield store
    store.vector_store.client.close()


def test_delete_nodes_removes_only_the_named_nodes_that_pass_the_filters(task, empty) -> None:
    """The store's delete_nodes ORs the ids into an OR of filters (deleting every match) and,
    given no ids, deletes every filter match."""
    check_delete_nodes_like_simple(task, empty)


def test_a_document_id_with_quotes_restricts_and_deletes_only_its_own_nodes(task, tmp_path) -> None:
    """The store writes ``doc_id in ["<id>"]`` unescaped: a quote broke the expression, and
    ``x"] or doc_id not in ["`` deleted every node."""
    from llama_index.core.schema import TextNode

    store = DeepMemoryVectorStore(vector_store=milvus_engine(str(tmp_path / "docs.db"), overwrite=True))
    docs = ['x"] or doc_id not in ["', 'it\'s "x" \\ \u00fc', "plain"]
    nodes = [TextNode(id_=f"n{j}", text=f"t{j}", embedding=task.docs[j].tolist()) for j in range(len(docs))]
    for node, doc in zip(nodes, docs):
        node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=doc)
    try:
        store.add(nodes)
        for j, doc in enumerate(docs):  # a query restricted to the document (the store wrote it unescaped too)
            assert ask(store, task.docs[j], k=3, doc_ids=[doc]).ids == [f"n{j}"]
            assert ask(store, task.docs[j], k=3, doc_ids=[doc], deep_memory=False, filters=EVEN).ids == []
        store.delete(docs[0])
        assert sorted(n.node_id for n in store.get_nodes()) == ["n1", "n2"]
        store.delete(docs[1])
        assert [n.node_id for n in store.get_nodes()] == ["n2"]
    finally:
        store.vector_store.client.close()


def test_a_not_condition_is_refused_not_ignored(task, tmp_path) -> None:
    """The store joins a NOT group's filters with "not": one filter came back unnegated (the
    opposite nodes matched, and delete_nodes deleted the nodes it should have kept)."""
    from llama_index.core.schema import TextNode
    from llama_index.core.vector_stores.types import FilterCondition, MetadataFilter, MetadataFilters

    store = DeepMemoryVectorStore(vector_store=milvus_engine(str(tmp_path / "not.db"), overwrite=True))
    nodes = [TextNode(id_=f"n{j}", text=f"t{j}", metadata={"a": j}, embedding=task.docs[j].tolist()) for j in range(4)]
    not_one = MetadataFilters(filters=[MetadataFilter(key="a", value=1)], condition=FilterCondition.NOT)
    nested = MetadataFilters(filters=[MetadataFilter(key="a", value=0, operator=">"), not_one])
    try:
        store.add(nodes)
        for filters in (not_one, nested):
            with pytest.raises(ValueError, match="condition 'not' is not supported over Milvus"):
                store.delete_nodes(filters=filters)
            with pytest.raises(ValueError, match="condition 'not' is not supported over Milvus"):
                store.get_nodes(filters=filters)
            with pytest.raises(ValueError, match="condition 'not' is not supported over Milvus"):
                ask(store, task.docs[0], k=4, filters=filters)
        assert len(store.get_nodes()) == 4
    finally:
        store.vector_store.client.close()


def test_filters_select_what_simple_vector_store_selects(task, empty) -> None:
    """Milvus's ``!=`` (the store's NE) skipped rows missing the key; SimpleVectorStore keeps them."""
    check_filters_like_simple(task, empty)


def test_string_filter_values_are_values_not_expressions(task, tmp_path) -> None:
    """The store quotes a TEXT_MATCH value unescaped (and as a prefix: SimpleVectorStore matches a
    substring), and leaves backslashes unescaped in the others: ``x' or a >= 0 or s like '``
    matched (and deleted) every node."""
    from llama_index.core.schema import TextNode
    from llama_index.core.vector_stores import SimpleVectorStore
    from llama_index.core.vector_stores.types import FilterOperator, MetadataFilter, MetadataFilters, VectorStoreQuery

    values = ["a_b", "axb", "a%b", "it's", "y\\z", "Pine"]
    nodes = [TextNode(id_=f"n{j}", text=f"t{j}", metadata={"s": v, "a": j}, embedding=task.docs[j].tolist())
             for j, v in enumerate(values)]
    simple = SimpleVectorStore()
    simple.add([n.model_copy(deep=True) for n in nodes])
    store = DeepMemoryVectorStore(vector_store=milvus_engine(str(tmp_path / "values.db"), overwrite=True))
    injection = "x' or a >= 0 or s like '"
    cases = [("==", "y\\z"), ("==", "it's"), ("!=", "y\\z"), ("text_match", "in"), ("text_match", "a_b"),
             ("text_match", "a%b"), ("text_match", "t's"), ("text_match", "y\\z"), ("text_match", injection)]
    try:
        store.add(nodes)
        for operator, value in cases:
            filters = MetadataFilters(filters=[MetadataFilter(key="s", value=value, operator=FilterOperator(operator))])
            expected = set(simple.query(VectorStoreQuery(query_embedding=task.docs[0].tolist(), similarity_top_k=10,
                                                         filters=filters)).ids)
            assert {n.node_id for n in store.get_nodes(filters=filters)} == expected, (operator, value)
            assert set(ask(store, task.docs[0], k=10, filters=filters).ids) == expected, (operator, value)
        store.delete_nodes(filters=MetadataFilters(filters=[MetadataFilter(key="s", value=injection,
                                                                           operator=FilterOperator.TEXT_MATCH)]))
        assert len(store.get_nodes()) == len(values)
    finally:
        store.vector_store.client.close()


def test_metadata_keys_are_names_not_expressions(task, tmp_path) -> None:
    """The store writes a filter's key bare into its expression: ``a-b`` filtered on a minus b
    (silently the wrong nodes), ``my key`` failed."""
    from llama_index.core.schema import TextNode
    from llama_index.core.vector_stores import SimpleVectorStore
    from llama_index.core.vector_stores.types import FilterOperator, MetadataFilter, MetadataFilters, VectorStoreQuery

    metadatas = [{"a-b": 1, "a": 3, "b": 2, "my key": "x", "in": 1}, {"a-b": 1, "a": 5, "b": 1, "my key": "y", "in": 2}]
    nodes = [TextNode(id_=f"n{j}", text=f"t{j}", metadata=m, embedding=task.docs[j].tolist())
             for j, m in enumerate(metadatas)]
    simple = SimpleVectorStore()
    simple.add([n.model_copy(deep=True) for n in nodes])
    store = DeepMemoryVectorStore(vector_store=milvus_engine(str(tmp_path / "keys.db"), overwrite=True))
    try:
        store.add(nodes)
        for key, value, operator in (("a-b", 1, "=="), ("a-b", 0, ">"), ("my key", "x", "=="), ("in", 1, "=="),
                                     ("a", 3, "==")):
            filters = MetadataFilters(filters=[MetadataFilter(key=key, value=value, operator=FilterOperator(operator))])
            expected = set(simple.query(VectorStoreQuery(query_embedding=task.docs[0].tolist(), similarity_top_k=10,
                                                         filters=filters)).ids)
            assert {n.node_id for n in store.get_nodes(filters=filters)} == expected, key
            assert set(ask(store, task.docs[0], k=2, filters=filters).ids) == expected, key
        for key, value, operator in (("my key", "x", "!="), ("in", [1], "in"), ("a-b", [1], "nin")):
            filters = MetadataFilters(filters=[MetadataFilter(key=key, value=value, operator=FilterOperator(operator))])
            with pytest.raises(ValueError, match="rename the metadata key"):  # Milvus cannot test a $meta path with in
                store.delete_nodes(filters=filters)
        assert len(store.get_nodes()) == 2
    finally:
        store.vector_store.client.close()
