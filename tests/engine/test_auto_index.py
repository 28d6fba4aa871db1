"""The embedded store's default index (``index_factory="auto"``): exact Flat while small, HNSW32
from ``index.AUTO_APPROXIMATE_FROM`` nodes (lowered here so the tests stay fast), checked against
brute-force NumPy on seeded data: recall, writes and snapshots after the switch, filters, the exact
searches training reads, and Deep Memory ranking over the approximate index."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores.types import MetadataFilter, MetadataFilters, VectorStoreQuery

from llama_index_deepmemory import DeepMemoryVectorStore, index, persistence
from llama_index_deepmemory.deep_memory.lexical import LexicalIndex
from llama_index_deepmemory.deep_memory.models import AdapterMemoryModel

DIM, N, THRESHOLD, K = 48, 3000, 1000, 10


def clustered(n: int, seed: int, clusters: int = 30, spread: float = 1.0) -> np.ndarray:
    """Unit vectors around ``clusters`` seeded centres (shared by corpus and queries)."""
    centres = np.random.default_rng(99).normal(size=(clusters, DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(0, clusters, n)] + spread * rng.normal(size=(n, DIM)) / np.sqrt(DIM)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def nodes_of(vectors: np.ndarray, start: int = 0) -> list[TextNode]:
    return [
        TextNode(id_=f"n{start + i}", text=f"w{(start + i) % 37} w{(start + i) % 11} common", embedding=v.tolist(),
                 metadata={"group": (start + i) % 5},
                 relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=f"doc{(start + i) // 10}")})
        for i, v in enumerate(vectors)
    ]


def exact_ids(vectors: np.ndarray, ids: list[str], queries: np.ndarray, k: int = K) -> list[list[str]]:
    scores = queries @ vectors.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [[ids[j] for j in row] for row in order]


def recall(got: list[list[str]], truth: list[list[str]]) -> float:
    return float(np.mean([len(set(g) & set(t)) / len(t) for g, t in zip(got, truth)]))


def ask(store: DeepMemoryVectorStore, queries: np.ndarray, k: int = K, **kwargs) -> list[list[str]]:
    return [store.query(VectorStoreQuery(query_embedding=q.tolist(), similarity_top_k=k), **kwargs).ids for q in queries]


def hnsw_held(store: DeepMemoryVectorStore) -> bool:
    return isinstance(faiss.downcast_index(store.client.index), faiss.IndexHNSW)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One FAISS thread: single queries on a busy 2-core machine run 10x slower with OpenMP's two."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)


@pytest.fixture
def low_threshold(monkeypatch):
    monkeypatch.setattr(index, "AUTO_APPROXIMATE_FROM", THRESHOLD)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return clustered(N, 1), clustered(200, 3)


def test_auto_switches_at_the_threshold_and_a_given_factory_never_does(low_threshold, data):
    vectors, _ = data
    store, flat = DeepMemoryVectorStore(), DeepMemoryVectorStore(index_factory="Flat")
    assert store.index_factory == "auto" and DeepMemoryVectorStore(index_factory=None).index_factory == "auto"
    store.add(nodes_of(vectors[: THRESHOLD - 1]))
    assert not hnsw_held(store)
    store.add(nodes_of(vectors[THRESHOLD - 1 : THRESHOLD], THRESHOLD - 1))  # the add reaching the size converts
    assert hnsw_held(store) and store.index_factory == "auto" and len(store) == THRESHOLD
    assert store.client.ntotal == THRESHOLD
    flat.add(nodes_of(vectors))
    assert not hnsw_held(flat) and flat.index_factory == "Flat"
    # one first add past the threshold builds the approximate index directly
    big = DeepMemoryVectorStore()
    big.add(nodes_of(vectors))
    assert hnsw_held(big)
    store.delete_nodes(node_ids=[f"n{i}" for i in range(500)])  # shrinking keeps it (no flip-flop)
    assert hnsw_held(store)
    store.clear()  # an empty "auto" store is exact again
    store.add(nodes_of(vectors[:10]))
    assert not hnsw_held(store)


@pytest.mark.parametrize("first_add", [1.0, 2.05])
def test_auto_stays_exact_where_the_graph_misses_the_recall(monkeypatch, tmp_path, caplog, first_add):
    """Random 384-d vectors searched with a tiny ef_search: the probe finds the recall short (over the
    whole store, or first over a sample when the first add is more than twice the size), so the store
    stays exact (exact results) for good, also after a reload."""
    n = 3000
    monkeypatch.setattr(index, "AUTO_APPROXIMATE_FROM", n)
    rng = np.random.default_rng(11)
    x = rng.normal(size=(int(first_add * n) + 220, 384)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    first = int(first_add * n)
    store = DeepMemoryVectorStore(ef_search=2)
    with caplog.at_level("WARNING"):
        store.add(nodes_of(x[:first]))
    assert not hnsw_held(store)
    # the warning names what was probed: every node, or a sampled graph of AUTO_APPROXIMATE_FROM of them
    assert (f"on {first} nodes" if first_add == 1.0 else f"on a graph of {n} of the {first} nodes") in caplog.text
    queries = x[-20:]
    assert ask(store, queries) == exact_ids(x[:first], [f"n{i}" for i in range(first)], queries)
    store.persist(str(tmp_path / "s"))
    loaded = DeepMemoryVectorStore.from_persist_path(str(tmp_path / "s"))
    for kept in (store, loaded):
        kept.add(nodes_of(x[first : first + 200], first))  # no new try
        assert not hnsw_held(kept)


@pytest.mark.parametrize("kind", ["clustered", "random"])
def test_recall_of_the_approximate_default_against_brute_force(low_threshold, data, kind):
    if kind == "clustered":
        vectors, queries = data
    else:
        rng = np.random.default_rng(5)
        x = rng.normal(size=(N + 200, DIM)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        vectors, queries = x[:N], x[N:]
    store = DeepMemoryVectorStore()
    store.add(nodes_of(vectors))
    assert hnsw_held(store)
    ids = [f"n{i}" for i in range(N)]
    assert recall(ask(store, queries), exact_ids(vectors, ids, queries)) >= 0.95


def test_writes_filters_and_snapshots_after_the_switch(low_threshold, data, tmp_path):
    vectors, queries = data
    store = DeepMemoryVectorStore()
    for start in range(0, N, 700):  # several adds, one of them crossing the threshold
        store.add(nodes_of(vectors[start : start + 700], start))
    assert hnsw_held(store)
    current = {f"n{i}": v for i, v in enumerate(vectors)}
    store.delete("doc7")  # n70..n79
    store.delete_nodes(node_ids=["n5", "n6"])
    for i in [*range(70, 80), 5, 6]:
        del current[f"n{i}"]
    moved = clustered(40, 8)  # updates: 40 ids re-added with new vectors
    store.add(nodes_of(moved, 100))
    current.update({f"n{100 + i}": v for i, v in enumerate(moved)})
    ids = list(current)
    matrix = np.stack([current[i] for i in ids])
    truth = exact_ids(matrix, ids, queries)
    got = ask(store, queries)
    assert recall(got, truth) >= 0.95
    assert not any(i in row for row in got for i in ("n5", "n6", "n75"))
    assert {n.node_id for n in store.get_nodes(node_ids=["n100", "n75"])} == {"n100"}
    np.testing.assert_allclose(store.get_vectors(["n101"])[0], moved[1], atol=1e-6)
    # filters: every hit matches, and the filtered top 10 is the brute-force one (few enough
    # candidates to be scored exactly)
    red = MetadataFilters(filters=[MetadataFilter(key="group", value=2)])
    groups = np.array([int(i[1:]) % 5 for i in ids])
    for q in queries[:20]:
        hits = store.query(VectorStoreQuery(query_embedding=q.tolist(), similarity_top_k=K, filters=red)).ids
        assert hits == exact_ids(matrix[groups == 2], [i for i, g in zip(ids, groups) if g == 2], q[None])[0]
    # snapshot: records the index held, reloads it and answers the same
    path = tmp_path / "store"
    store.persist(str(path))
    gen = path / json.loads((path / "manifest.json").read_text())["generation"]
    config = json.loads((gen / "store.json").read_text())
    assert (config["version"], config["index_factory"], config["index"]) == (2, "auto", "HNSW32")
    assert config["index_ef_search"] == index.DEFAULT_EF_SEARCH
    loaded = DeepMemoryVectorStore.from_persist_path(str(path))
    assert hnsw_held(loaded) and loaded.index_factory == "auto" and len(loaded) == len(store)
    for kept in (store, loaded):  # the auto graph's efConstruction, kept by the FAISS file
        assert faiss.downcast_index(kept.client.index).hnsw.efConstruction == index.AUTO_EF_CONSTRUCTION == 80
    assert ask(loaded, queries) == got
    loaded.add(nodes_of(clustered(5, 9), 5000))
    loaded.delete("doc8")
    assert len(loaded) == len(store) + 5 - 10


def test_version_1_snapshot_still_loads(tmp_path, data):
    """A snapshot written before ``"auto"`` (store.json without version and index) loads as the
    index its factory string names, and stays that index (a given factory is never overridden)."""
    vectors, queries = data
    store = DeepMemoryVectorStore(index_factory="Flat")
    store.add(nodes_of(vectors[:300]))
    path = tmp_path / "old"
    store.persist(str(path))
    manifest = json.loads((path / "manifest.json").read_text())
    config_path = path / manifest["generation"] / "store.json"
    config = json.loads(config_path.read_text())
    del config["version"], config["index"]
    config_path.write_text(json.dumps(config))
    manifest["files"]["store.json"] = {"bytes": config_path.stat().st_size, "sha256": persistence.sha256_file(config_path)}
    (path / "manifest.json").write_text(json.dumps(manifest))
    loaded = DeepMemoryVectorStore.from_persist_path(str(path))
    assert loaded.index_factory == "Flat" and not hnsw_held(loaded)
    assert ask(loaded, queries[:20]) == ask(store, queries[:20])
    config["version"] = 3  # and a newer one is refused by name
    config_path.write_text(json.dumps(config))
    manifest["files"]["store.json"] = {"bytes": config_path.stat().st_size, "sha256": persistence.sha256_file(config_path)}
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="Upgrade"):
        DeepMemoryVectorStore.from_persist_path(str(path))


def test_training_searches_exactly_over_an_approximate_index(data):
    """``training_view``: exact top k (tombstones and filters honoured) even where the store's own
    search is poor (ef_search=1); an exact store trains on itself."""
    vectors, queries = data
    store = DeepMemoryVectorStore(index_factory="HNSW8", ef_search=1)
    store.add(nodes_of(vectors))
    store.delete_nodes(node_ids=[f"n{i}" for i in range(0, N, 3)])
    live = [i for i in range(N) if i % 3]
    ids = [f"n{i}" for i in live]
    truth = exact_ids(vectors[live], ids, queries)
    view = store.training_view(10**6)
    assert view is not store
    prepared = store.prepare_queries(queries)
    _, got = view.search_vectors(prepared, K)
    assert got == truth
    assert recall(store.search_vectors(prepared, K)[1], truth) < 0.9  # the approximate search differs
    red = MetadataFilters(filters=[MetadataFilter(key="group", value=1)])
    kept = [i for i in live if i % 5 == 1]
    _, filtered = view.search_vectors(prepared[:5], K, filters=red)
    assert filtered == exact_ids(vectors[kept], [f"n{i}" for i in kept], queries[:5])
    flat = DeepMemoryVectorStore(index_factory="Flat")
    flat.add(nodes_of(vectors[:50]))
    assert flat.training_view(10**6) is flat


def _model(vectors: np.ndarray, keywords: bool) -> AdapterMemoryModel:
    rng = np.random.default_rng(4)
    memory = rng.choice(N, size=60, replace=False)
    texts = [n.text for n in nodes_of(vectors)]
    return AdapterMemoryModel(
        DIM,
        weight=np.eye(DIM, dtype=np.float32) + 0.1 * rng.normal(size=(DIM, DIM)).astype(np.float32) / np.sqrt(DIM),
        memory_ids=[f"n{j}" for j in memory],
        memory_vectors=vectors[memory] + 0.3 * vectors[rng.permutation(memory)],
        lexical=LexicalIndex([f"n{i}" for i in range(N)], texts) if keywords else None,
        lexical_weight=0.3 if keywords else 0.0,
    )


@pytest.mark.parametrize("keywords", [False, True])
def test_deep_memory_over_the_approximate_default_ranks_like_the_exact_store(low_threshold, data, keywords):
    """overlap@10 >= 0.95 between Deep Memory's top 10 over the approximate default and over an
    exact Flat store holding the same nodes and model."""
    vectors, queries = data
    approximate, exact = DeepMemoryVectorStore(), DeepMemoryVectorStore(index_factory="Flat")
    for store in (approximate, exact):
        store.add(nodes_of(vectors))
        store.deep_memory.add_model("m", _model(vectors, keywords), activate=True)
    assert hnsw_held(approximate) and not hnsw_held(exact)
    texts = [f"w{i % 37} w{i % 11}" for i in range(len(queries))] if keywords else [None] * len(queries)

    def ranked(store):
        return [store.query(VectorStoreQuery(query_embedding=q.tolist(), query_str=t, similarity_top_k=K),
                            deep_memory=True).ids for q, t in zip(queries, texts)]

    assert recall(ranked(approximate), ranked(exact)) >= 0.95


def test_training_over_an_approximate_store_validates_like_over_an_exact_one(data):
    """Training searches exactly whatever the index: over HNSW with ef_search=1 (a poor graph walk)
    its validation metrics equal those over an exact Flat store of the same nodes."""
    pytest.importorskip("torch")
    vectors, _ = data
    docs = vectors[:400]
    rng = np.random.default_rng(2)
    targets = rng.integers(0, len(docs), 120)
    queries = docs[targets] + 0.4 * rng.normal(size=(120, DIM)).astype(np.float32) / np.sqrt(DIM)
    relevance = [[(f"n{t}", 1.0)] for t in targets]
    texts = [f"question {i}" for i in range(120)]
    metrics = []
    for store in (DeepMemoryVectorStore(index_factory="HNSW8", ef_search=1), DeepMemoryVectorStore(index_factory="Flat")):
        store.add(nodes_of(docs))
        job = store.deep_memory.train(texts, relevance, embedding=queries, epochs=3, seed=0, num_threads=1,
                                      query_memory=False)
        record = store.deep_memory.status(job)
        metrics.append((record["val_before"], record["val_after"]))
    assert metrics[0] == metrics[1]


def ef_held(store: DeepMemoryVectorStore) -> int:
    return int(faiss.downcast_index(store.client.index).hnsw.efSearch)


def snapshot_config(store: DeepMemoryVectorStore, path) -> dict:
    store.persist(str(path))
    return json.loads((path / json.loads((path / "manifest.json").read_text())["generation"] / "store.json").read_text())


@pytest.fixture
def reprobe(monkeypatch):
    """Random 48-d vectors, threshold 1000 and a start ef_search of 16: the graph passes the probe at
    1000 nodes with ef 16 and misses it at 2000 (recall@10 about 0.94), where ef 32 reaches it."""
    monkeypatch.setattr(index, "AUTO_APPROXIMATE_FROM", 1000)
    monkeypatch.setattr(index, "DEFAULT_EF_SEARCH", 16)
    monkeypatch.setattr(index, "AUTO_EF_CONSTRUCTION", 40)  # FAISS's default: a graph that needs more ef
    rng = np.random.default_rng(5)
    x = rng.normal(size=(4200, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x[:4000], x[4000:]


def test_auto_reprobes_when_the_store_doubles_and_raises_ef_search(reprobe, tmp_path):
    x, queries = reprobe
    store = DeepMemoryVectorStore()
    store.add(nodes_of(x[:1000]))
    assert hnsw_held(store) and ef_held(store) == 16
    store.add(nodes_of(x[1000:1999], 1000))  # not doubled yet: no probe
    assert ef_held(store) == 16
    store.add(nodes_of(x[1999:2000], 1999))  # reaches 2000: the re-probe raises ef_search
    assert ef_held(store) == 32
    truth = exact_ids(x[:2000], [f"n{i}" for i in range(2000)], queries)
    assert recall(ask(store, queries), truth) >= 0.95
    faiss.downcast_index(store.client.index).hnsw.efSearch = 16  # what the store would have kept
    assert recall(ask(store, queries), truth) < 0.95
    faiss.downcast_index(store.client.index).hnsw.efSearch = 32
    # the snapshot keeps the raised ef_search and the next probe size
    config = snapshot_config(store, tmp_path / "a")
    assert (config["index_ef_search"], config["auto_probe_at"]) == (32, 4000)
    loaded = DeepMemoryVectorStore.from_persist_path(str(tmp_path / "a"))
    assert ef_held(loaded) == 32 and ask(loaded, queries) == ask(store, queries)
    loaded.add(nodes_of(x[2000:4000], 2000))  # the next doubling probes again (and keeps 32)
    config = snapshot_config(loaded, tmp_path / "b")
    assert (config["index_ef_search"], config["auto_probe_at"]) == (32, 8000)
    assert recall(ask(loaded, queries), exact_ids(x, [f"n{i}" for i in range(4000)], queries)) >= 0.95


def test_older_version_2_snapshot_without_probe_size_reprobes_at_the_next_doubling(reprobe, tmp_path):
    x, queries = reprobe
    store = DeepMemoryVectorStore()
    store.add(nodes_of(x[:1000]))
    store.add(nodes_of(x[1000:1500], 1000))
    path = tmp_path / "old"
    store.persist(str(path))
    manifest = json.loads((path / "manifest.json").read_text())
    config_path = path / manifest["generation"] / "store.json"
    config = json.loads(config_path.read_text())
    assert config["auto_probe_at"] == 2000
    del config["auto_probe_at"]
    config_path.write_text(json.dumps(config))
    manifest["files"]["store.json"] = {"bytes": config_path.stat().st_size, "sha256": persistence.sha256_file(config_path)}
    (path / "manifest.json").write_text(json.dumps(manifest))
    loaded = DeepMemoryVectorStore.from_persist_path(str(path))
    assert hnsw_held(loaded) and ef_held(loaded) == 16
    loaded.add(nodes_of(x[1500:1999], 1500))
    assert snapshot_config(loaded, tmp_path / "mid")["auto_probe_at"] == 2000  # defaulted from the count
    loaded.add(nodes_of(x[1999:2000], 1999))  # the add reaching 2000 probes (next: 4000)
    assert snapshot_config(loaded, tmp_path / "new")["auto_probe_at"] == 4000
    assert ef_held(loaded) == 32
    truth = exact_ids(x[:2000], [f"n{i}" for i in range(2000)], queries)
    assert recall(ask(loaded, queries), truth) >= 0.95


def test_a_reprobe_that_misses_at_the_cap_makes_the_store_exact(reprobe, monkeypatch, tmp_path, caplog):
    x, queries = reprobe
    monkeypatch.setattr(index, "AUTO_EF_CAP", 16)
    store = DeepMemoryVectorStore()
    store.add(nodes_of(x[:1000]))
    assert hnsw_held(store)
    store.delete_nodes(node_ids=["n3"])
    with caplog.at_level("WARNING"):
        store.add(nodes_of(x[1000:2001], 1000))
    assert not hnsw_held(store)
    assert "on 2000 nodes" in caplog.text and "index_factory='Flat'" in caplog.text
    ids = [f"n{i}" for i in range(2001) if i != 3]
    truth = exact_ids(x[[i for i in range(2001) if i != 3]], ids, queries)
    assert ask(store, queries) == truth
    store.persist(str(tmp_path / "s"))
    loaded = DeepMemoryVectorStore.from_persist_path(str(tmp_path / "s"))
    for kept in (store, loaded):
        kept.add(nodes_of(x[2001:4000], 2001))  # exact for good (the freed tombstone slot reused)
        assert not hnsw_held(kept)
        keep = [i for i in range(4000) if i != 3]
        assert ask(kept, queries) == exact_ids(x[keep], [f"n{i}" for i in keep], queries)


def test_graph_rebuilt_by_compaction_keeps_its_ef_construction():
    x = np.random.default_rng(0).normal(size=(3000, 16)).astype(np.float32)
    graph = index.VectorIndex(16, "cosine", "HNSW32", ef_construction=80)
    graph.add(np.arange(3000), x)
    graph.remove(np.arange(2000))
    assert graph.needs_compaction() and len(graph.compact()) == 2000
    assert faiss.downcast_index(graph.faiss_index.index).hnsw.efConstruction == graph.ef_construction == 80


def test_a_training_view_taken_before_the_switch_still_searches_exactly_after_it(reprobe):
    """A training job takes the store's view once, at its start; an add made while it runs may turn
    "auto" approximate. The view must keep searching exactly (before: it was the store itself while
    exact, so the job's later searches walked the graph: 61 of 200 top-10s differed from brute force)."""
    x, queries = reprobe
    store = DeepMemoryVectorStore()
    store.add(nodes_of(x[:999]))
    view = store.training_view(10**6)  # the job starts while the store is exact
    store.add(nodes_of(x[999:1000], 999))  # an add during the job converts it
    assert hnsw_held(store)
    prepared = store.prepare_queries(queries)
    truth = exact_ids(x[:1000], [f"n{i}" for i in range(1000)], queries)
    assert recall(store.search_vectors(prepared, K)[1], truth) < 1.0  # the store's own search is approximate
    assert view.search_vectors(prepared, K)[1] == truth


@pytest.mark.parametrize("given", ["Auto", "AUTO", " auto"])
def test_a_misspelt_auto_is_refused_with_the_spelling_to_use(given):
    """'Auto' is no FAISS factory string: the error named FAISS's parser and advised passing dim=,
    which cannot help; it now names the value and the spelling of the default."""
    with pytest.raises(ValueError, match=rf"index_factory={given!r}.*index_factory='auto'"):
        DeepMemoryVectorStore(index_factory=given)


@pytest.mark.parametrize("when", ["conversion", "reprobe"])
def test_a_failed_conversion_or_reprobe_tries_again_at_the_next_doubling(reprobe, monkeypatch, tmp_path, caplog, when):
    """A probe that fails (a MemoryError, say) keeps every node and the index held, and is tried again
    when the store next doubles: not at every add, and not never (a conversion used to give up for good)."""
    x, queries = reprobe
    store = DeepMemoryVectorStore()
    if when == "reprobe":
        store.add(nodes_of(x[:1000]))
        assert hnsw_held(store)
    failing = {"left": 1}
    tuned_ef = index.tuned_ef

    def once_out_of_memory(*args, **kwargs):
        if failing["left"]:
            failing["left"] -= 1
            raise MemoryError("probe")
        return tuned_ef(*args, **kwargs)

    monkeypatch.setattr(index, "tuned_ef", once_out_of_memory)
    start = 1000 if when == "reprobe" else 0
    with caplog.at_level("WARNING"):
        store.add(nodes_of(x[start:2000], start))  # reaches 2000 (conversion: 1000 first)
    assert failing["left"] == 0 and "again at 4000 nodes" in caplog.text
    assert hnsw_held(store) == (when == "reprobe")
    assert snapshot_config(store, tmp_path / "a")[f"auto_{'probe' if when == 'reprobe' else 'retry'}_at"] == 4000
    if when == "conversion":  # still exact, every node kept
        assert ask(store, queries) == exact_ids(x[:2000], [f"n{i}" for i in range(2000)], queries)
    assert len(store.get_nodes()) == 2000
    store.add(nodes_of(x[2000:3999], 2000))  # below the next doubling: nothing probed or built
    assert hnsw_held(store) == (when == "reprobe")
    store.add(nodes_of(x[3999:4000], 3999))  # reaches 4000: tried again, and passes
    assert hnsw_held(store)
    assert recall(ask(store, queries), exact_ids(x, [f"n{i}" for i in range(4000)], queries)) >= 0.95
