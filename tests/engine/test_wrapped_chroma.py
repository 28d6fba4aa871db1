"""Deep Memory over Chroma: chromadb's embedded client in-process, and a real ``chroma run`` server
through ``chromadb.HttpClient`` (``tests/chroma_server.py``), never a mock; the same checks on both.

Plain results through the wrapper equal Chroma's own (its store reports ``exp(-distance)``; the
wrapper returns the cosine itself); the same model ranks over Chroma as over the embedded FAISS
store; filters, node and document restrictions, deletes, ``get_nodes`` and model persistence.
"""

from __future__ import annotations

import math

import pytest

pytest.importorskip("chromadb")
pytest.importorskip("llama_index.vector_stores.chroma")
import chromadb  # noqa: E402
from llama_index.vector_stores.chroma import ChromaVectorStore  # noqa: E402

from llama_index_deepmemory.store import DeepMemoryVectorStore  # noqa: E402
from synthetic import KeywordTask  # noqa: E402
from wrapped_checks import (  # noqa: E402
    EVEN, ask, check_deletes_filters_and_get_nodes, check_plain_equals_engine, check_ranks_like_faiss,
    check_failed_readd_keeps_the_node, check_ids_cannot_impersonate, check_listing, check_readding_replaces,
    check_reopened, check_restrictions, check_threads, faiss_twin, nodes_with_docs, with_model,
)

COSINE = {"hnsw:space": "cosine"}


def chroma_store(client, task: KeywordTask, name: str = "docs", **kwargs) -> DeepMemoryVectorStore:
    collection = client.get_or_create_collection(name, metadata=COSINE)
    store = DeepMemoryVectorStore(vector_store=ChromaVectorStore(chroma_collection=collection), **kwargs)
    store.add(nodes_with_docs(task))
    return store


@pytest.fixture(scope="module", params=["embedded", "server"])
def client(request):
    if request.param == "embedded":
        return chromadb.EphemeralClient()
    host, port = request.getfixturevalue("chroma_server")
    return chromadb.HttpClient(host=host, port=port)


@pytest.fixture()
def pair(task, client, request):
    """The same nodes in the embedded store and in an in-memory Chroma collection, one hand-made model."""
    name = f"docs-{request.node.name}".replace("[", "-").replace("]", "")[:60].rstrip("-_")
    faiss_store, chroma = faiss_twin(task), chroma_store(client, task, name=name)
    with_model(task, faiss_store, chroma)
    yield faiss_store, chroma
    client.delete_collection(name)


@pytest.mark.parametrize("filters", [None, EVEN], ids=["all", "filtered"])
def test_plain_results_equal_chromas_own(task, pair, filters) -> None:
    check_plain_equals_engine(task, pair[1], filters, to_cosine=lambda s: [1.0 + math.log(x) for x in s])


@pytest.mark.parametrize("filters", [None, EVEN], ids=["all", "filtered"])
@pytest.mark.parametrize("with_text", [True, False], ids=["keywords", "dense"])
def test_the_same_model_ranks_alike_over_chroma_and_faiss(task, pair, filters, with_text) -> None:
    check_ranks_like_faiss(task, *pair, filters, with_text, n_queries=25)


def test_node_and_doc_restrictions(task, pair) -> None:
    check_restrictions(task, *pair)  # Chroma's LlamaIndex store ignores both: the wrapper passes ids=/where=



def test_a_listing_page_of_no_rows_is_refused(task, pair) -> None:
    """A page size of 0 would make Chroma's paging ask for nothing forever: refused, as the embedded store does."""
    for listing in (pair[1].iter_texts, pair[1].iter_vectors):
        with pytest.raises(ValueError, match="batch_size must be positive, got 0"):
            next(listing(batch_size=0))


def test_listing_reads_every_node_a_page_at_a_time(task, pair) -> None:
    check_listing(task, pair[1])


def test_deletes_filters_and_get_nodes_pass_through(task, pair) -> None:
    check_deletes_filters_and_get_nodes(task, pair[1])


def test_models_persist_and_a_reopened_collection_serves_the_same(task, tmp_path) -> None:
    engine_dir, model_dir = str(tmp_path / "chroma"), tmp_path / "models"
    first = chroma_store(chromadb.PersistentClient(path=engine_dir), task, model_dir=model_dir)

    def reopen():
        collection = chromadb.PersistentClient(path=engine_dir).get_collection("docs")
        return DeepMemoryVectorStore(vector_store=ChromaVectorStore(chroma_collection=collection), model_dir=model_dir)

    check_reopened(task, first, reopen)


def test_models_persist_and_another_client_of_the_server_serves_the_same(task, chroma_server, tmp_path) -> None:
    host, port = chroma_server
    model_dir = tmp_path / "models"
    first = chroma_store(chromadb.HttpClient(host=host, port=port), task, name="reopened", model_dir=model_dir)

    def reopen():
        collection = chromadb.HttpClient(host=host, port=port).get_collection("reopened")
        return DeepMemoryVectorStore(vector_store=ChromaVectorStore(chroma_collection=collection), model_dir=model_dir)

    check_reopened(task, first, reopen)


def test_a_collection_not_ranking_by_cosine_is_refused(client) -> None:
    for name, kwargs in (("l2-default", {}), ("ip-space", {"metadata": {"hnsw:space": "ip"}})):
        engine = ChromaVectorStore(chroma_collection=client.get_or_create_collection(name, **kwargs))
        with pytest.raises(ValueError, match=r"ranks by '(l2|ip)' distance.*hnsw:space': 'cosine'"):
            DeepMemoryVectorStore(vector_store=engine)
    configured = client.get_or_create_collection("configured", configuration={"hnsw": {"space": "cosine"}})
    DeepMemoryVectorStore(vector_store=ChromaVectorStore(chroma_collection=configured))  # cosine either way


def test_ids_cannot_replace_hide_or_impersonate_a_node(task, pair) -> None:
    check_ids_cannot_impersonate(task, pair[1])


def test_queries_under_threads_while_adding_and_deleting(task, pair) -> None:
    check_threads(task, pair[1])


def _spy(collection, calls: list) -> None:
    """Record how many ids, rows and ``$in`` values each chromadb call carries (then make it)."""
    def values(where) -> int:
        if isinstance(where, dict):
            return max([len(v["$in"]) if isinstance(v, dict) and isinstance(v.get("$in"), list) else values(v)
                        for v in where.values()] or [0])
        return max([values(w) for w in where] or [0]) if isinstance(where, list) else 0

    for name in ("get", "query", "delete"):
        method = getattr(collection, name)

        def spied(*args, _method=method, _name=name, **kwargs):
            calls.append((_name, max(len(kwargs.get("ids") or ()), kwargs.get("limit") or 0, values(kwargs.get("where")))))
            return _method(*args, **kwargs)

        object.__setattr__(collection, name, spied)


def test_ids_rows_and_in_values_go_to_chroma_a_batch_at_a_time(task, tmp_path, monkeypatch) -> None:
    """Embedded Chroma binds ids, ``$in`` values and a page's rows as SQLite variables (32,766 at
    most: listing a 40,000-node collection in pages of 65,536 failed): no call carries more than
    ``ID_BATCH``, and a query restricted past it, split into several, merges to the unsplit result."""
    from llama_index_deepmemory.engine import chroma as chroma_engine

    client = chromadb.PersistentClient(path=str(tmp_path / "chroma"))
    store = chroma_store(client, task, name="batched")
    with_model(task, store)
    collection = store.client  # the ChromaVectorStore's collection
    ids, docs = list(task.ids), [f"doc_{j}" for j in range(0, len(task.ids) // 10, 2)]
    restricted = ids[1::2] + ["node_1"]  # a repeat: still one hit

    def answers():
        out = []
        for j, q in enumerate(task.queries[:4]):
            for kwargs in ({"node_ids": restricted}, {"doc_ids": docs}, {"node_ids": restricted, "filters": EVEN}):
                for deep in (False, True):
                    result = ask(store, q, k=12, text=task.texts[j], deep_memory=deep, **kwargs)
                    out.append((result.ids, [round(s, 5) for s in result.similarities]))
        listed = [i for page, _ in store.iter_texts(batch_size=65536) for i in page]
        got = [n.node_id for n in store.get_nodes(ids[::-1] + [f"gone_{j}" for j in range(50)])]
        return out, sorted(listed), got, len(store.get_nodes(filters=EVEN))

    whole = answers()
    calls: list = []
    _spy(collection, calls)
    monkeypatch.setattr(chroma_engine, "ID_BATCH", 7)
    split = answers()
    assert split == whole and whole[1] == sorted(ids) and whole[2] == ids[::-1]
    assert calls and max(size for _, size in calls) <= 7, calls
    assert sum(name == "query" for name, _ in calls) > 3 * 4 * 2  # restricted queries were split
    assert sum(name == "get" for name, _ in calls) > len(ids) // 7  # listing and reads were batched
    store.delete_nodes(restricted)
    assert max(size for _, size in calls) <= 7 and len(store) == len(ids) - len(restricted) + 1


def test_adding_an_id_again_replaces_the_node(task, client, request) -> None:
    """Chroma's add skips an id it holds: the update was dropped, the old node kept."""
    name = f"readd-{request.node.callspec.id}"
    collection = client.get_or_create_collection(name, metadata=COSINE)
    try:
        check_readding_replaces(task, DeepMemoryVectorStore(
            vector_store=ChromaVectorStore(chroma_collection=collection)))
    finally:
        client.delete_collection(name)


def test_a_refused_readd_keeps_the_stored_node(task, client, request) -> None:
    """The store refuses a list in metadata: the old node stays."""
    name = f"refused-{request.node.callspec.id}"
    collection = client.get_or_create_collection(name, metadata=COSINE)
    try:
        check_failed_readd_keeps_the_node(
            task, DeepMemoryVectorStore(vector_store=ChromaVectorStore(chroma_collection=collection)), {"k": [1, 2]})
    finally:
        client.delete_collection(name)
