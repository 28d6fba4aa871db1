"""Several threads adding, replacing, deleting, querying (plain and Deep Memory), reading and
persisting one store for a bounded time; afterwards every invariant holds and no thread raised.

Checks while running: every hit's score equals the brute-force score of that node's (fixed)
vector, hits are unique and sorted, filters hold, never-deleted nodes stay visible, and each
persisted snapshot reloads to an internally consistent store. Checks afterwards: the node set
equals what the writers' own bookkeeping says, queries equal brute-force NumPy (plain and with
the Deep Memory merge), and a reload equals the in-memory state.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores.types import MetadataFilter, MetadataFilters, VectorStoreQuery

from crash_child import install_model, store_fingerprint
from llama_index_deepmemory.store import DeepMemoryVectorStore

DIM = 16
N_STABLE = 300
RUN_SECONDS = 3.0
K = 8
# writers pause briefly between rounds (an ingest loop); the fairness test at the end has none
WRITER_PAUSE_S = 0.002


class World:
    """The fixed vector of every id ever used (ids never change vectors) and the stable set."""

    def __init__(self) -> None:
        self.vectors: dict[str, np.ndarray] = {}
        self.lock = threading.Lock()

    def vector(self, node_id: str) -> np.ndarray:
        with self.lock:
            if node_id not in self.vectors:
                v = np.random.default_rng(zlib.crc32(node_id.encode())).normal(size=DIM)
                self.vectors[node_id] = (v / np.linalg.norm(v)).astype(np.float32)
            return self.vectors[node_id]

    def node(self, node_id: str, text: str, group: int, doc: str) -> TextNode:
        return TextNode(
            id_=node_id, text=text, metadata={"group": group}, embedding=self.vector(node_id).tolist(),
            relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=doc)},
        )


def query(store, q: np.ndarray, k: int, group: int | None = None, deep_memory: bool = False):
    filters = None if group is None else MetadataFilters(filters=[MetadataFilter(key="group", value=group)])
    return store.query(VectorStoreQuery(query_embedding=q.tolist(), similarity_top_k=k, filters=filters),
                       deep_memory=deep_memory)


def expected_scores(world: World, store, ids: list[str], q: np.ndarray, deep_memory: bool) -> np.ndarray:
    qn = (q / np.linalg.norm(q)).astype(np.float32)[None, :]
    if deep_memory:
        model = store.deep_memory.active_model()
        qn = model.transform_queries(qn)
        over_ids, over_scores = model.overrides(qn)
        over = dict(zip(over_ids, over_scores[0]))
    else:
        over = {}
    return np.array([over[i] if i in over else float(world.vector(i) @ qn[0]) for i in ids])


@pytest.mark.parametrize("factory", ["Flat", "HNSW16"])
def test_threads_add_delete_query_persist_and_invariants_hold(factory: str, tmp_path: Path) -> None:
    world = World()
    store = DeepMemoryVectorStore(index_factory=factory, ef_search=128 if "HNSW" in factory else None)
    stable = [f"s{i}" for i in range(N_STABLE)]
    store.add([world.node(i, f"stable {i}", j % 5, f"sdoc{j % 10}") for j, i in enumerate(stable)])
    install_model(store, "model_1", seed=2, n_memory=40)
    stop = threading.Event()
    errors: list[str] = []
    ops: Counter = Counter()
    owned: dict[str, set[str]] = {"w1": set(), "w2": set()}

    def guarded(name, body):
        def run() -> None:
            try:
                body()
            except BaseException as exc:  # noqa: BLE001 - reported after the join
                import traceback

                errors.append(f"{name}: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
                stop.set()
        return threading.Thread(target=run, name=name)

    def writer_batches() -> None:  # adds batches, deletes by id and by ref_doc_id
        mine, r = owned["w1"], 0
        while not stop.is_set():
            batch = [f"w1_{r}_{j}" for j in range(20)]
            store.add([world.node(i, f"w1 {i}", j % 5, f"w1doc{r}") for j, i in enumerate(batch)])
            mine.update(batch)
            if r % 2:
                gone = [f"w1_{r - 1}_{j}" for j in range(0, 20, 2)]
                store.delete_nodes(node_ids=gone)
                mine.difference_update(gone)
            if r % 3 == 2:
                store.delete(f"w1doc{r - 2}")
                mine.difference_update([i for i in mine if i.startswith(f"w1_{r - 2}_")])
            r += 1
            ops["w1 rounds"] += 1
            time.sleep(WRITER_PAUSE_S)

    def writer_replace() -> None:  # re-adds the same ids (same vectors, new text), deletes by filter
        mine, r = owned["w2"], 0
        ids = [f"w2_{j}" for j in range(30)]
        while not stop.is_set():
            store.add([world.node(i, f"w2 {i} round {r}", r % 5, "w2doc") for i in ids])
            mine.update(ids)
            if r % 4 == 3:
                store.delete_nodes(node_ids=ids[:10], filters=MetadataFilters(
                    filters=[MetadataFilter(key="group", value=r % 5)]))
                mine.difference_update(ids[:10])
            r += 1
            ops["w2 rounds"] += 1
            time.sleep(WRITER_PAUSE_S)

    def reader(seed: int, deep_memory: bool) -> None:
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            q = rng.normal(size=DIM).astype(np.float32)
            group = int(rng.integers(0, 5)) if rng.random() < 0.5 else None
            result = query(store, q, K, group, deep_memory)
            assert len(result.ids) == K and len(set(result.ids)) == K, result.ids
            assert result.similarities == sorted(result.similarities, reverse=True)
            np.testing.assert_allclose(result.similarities,
                                       expected_scores(world, store, result.ids, q, deep_memory), atol=1e-4)
            if group is not None:
                assert all(n.metadata["group"] == group for n in result.nodes)
            for node in result.nodes:
                assert node.get_content().split()[1] == node.node_id  # text belongs to the id
            found = {n.node_id for n in store.get_nodes(node_ids=[i for i in result.ids if i.startswith("s")])}
            assert found == {i for i in result.ids if i.startswith("s")}  # stable nodes never vanish
            ops["deep memory queries" if deep_memory else "queries"] += 1

    def persister() -> None:
        n = 0
        while not stop.is_set():
            path = tmp_path / f"snap{n % 2}"
            store.persist(str(path))
            loaded = DeepMemoryVectorStore.from_persist_path(str(path))
            nodes = loaded.get_nodes()
            ids = [x.node_id for x in nodes]
            assert len(ids) == len(set(ids)) == len(loaded)
            assert set(stable) <= set(ids)
            np.testing.assert_allclose(loaded.get_vectors(ids), np.stack([world.vector(i) for i in ids]), atol=1e-6)
            assert loaded.deep_memory.get_model() == "model_1"
            n += 1
            ops["persist+reload"] += 1

    threads = [
        guarded("writer_batches", writer_batches),
        guarded("writer_replace", writer_replace),
        guarded("reader_plain_1", lambda: reader(1, False)),
        guarded("reader_plain_2", lambda: reader(2, False)),
        guarded("reader_deep_memory", lambda: reader(3, True)),
        guarded("persister", persister),
    ]
    for t in threads:
        t.start()
    stop.wait(RUN_SECONDS)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert not errors, errors[0]

    # --- invariants afterwards ---------------------------------------------------------------
    expected = set(stable) | owned["w1"] | owned["w2"]
    ids = [n.node_id for n in store.get_nodes()]
    assert len(ids) == len(set(ids)) == len(store)
    assert set(ids) == expected
    ordered = sorted(expected)
    matrix = np.stack([world.vector(i) for i in ordered])
    rng = np.random.default_rng(9)
    checked, recalls = 0, []
    for _ in range(20):
        q = rng.normal(size=DIM).astype(np.float32)
        qn = q / np.linalg.norm(q)
        for deep_memory in (False, True):
            scores = expected_scores(world, store, ordered, q, deep_memory)
            top = [ordered[j] for j in np.argsort(-scores, kind="stable")[:K]]
            got = query(store, q, K, deep_memory=deep_memory)
            if factory == "Flat":
                assert got.ids == top
            recalls.append(len(set(got.ids) & set(top)) / K)
            assert {n.node_id for n in store.get_nodes(node_ids=got.ids)} == set(got.ids)
            checked += 1
        assert np.allclose(matrix @ qn, expected_scores(world, store, ordered, q, False), atol=1e-5)
    assert np.mean(recalls) >= 0.95, np.mean(recalls)  # HNSW: approximate, but not degraded by churn
    store.persist(str(tmp_path / "final"))
    reloaded = DeepMemoryVectorStore.from_persist_path(str(tmp_path / "final"))
    assert store_fingerprint(reloaded) == store_fingerprint(store)
    for _ in range(5):
        q = rng.normal(size=DIM).astype(np.float32)
        for deep_memory in (False, True):
            assert query(reloaded, q, K, deep_memory=deep_memory).ids == query(store, q, K, deep_memory=deep_memory).ids
    print(f"\nconcurrency ({factory}, {RUN_SECONDS:g}s, {len(threads)} threads): {dict(ops)}; "
          f"final checks: {checked} queries vs brute force (recall@{K} {np.mean(recalls):.3f}) + reload equality")


def test_queries_progress_while_a_writer_adds_in_a_loop() -> None:
    world = World()
    store = DeepMemoryVectorStore()
    store.add([world.node(f"s{i}", f"stable s{i}", i % 5, "d") for i in range(N_STABLE)])
    stop = threading.Event()
    latencies: list[float] = []

    def writer() -> None:
        ids = [f"w_{j}" for j in range(30)]
        r = 0
        while not stop.is_set():
            store.add([world.node(i, f"w {i}", r % 5, "wdoc") for i in ids])
            r += 1

    def reader() -> None:
        rng = np.random.default_rng(0)
        while not stop.is_set():
            started = time.perf_counter()
            query(store, rng.normal(size=DIM).astype(np.float32), K)
            latencies.append(time.perf_counter() - started)

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    print(f"\none writer in a loop: {len(latencies)} queries in 1.5 s, max latency {1000 * max(latencies):.0f} ms")
    assert len(latencies) >= 100 and max(latencies) < 0.5


def test_mmr_queries_while_a_writer_deletes_and_adds_back_their_candidates() -> None:
    """An MMR query ranks its candidate pool and reads the pool's vectors in one consistent view:
    a writer deleting (and adding back) those very candidates between the two never makes it raise
    (before: KeyError "node id(s) are not in the store"), and it returns k distinct nodes."""
    world = World()
    store = DeepMemoryVectorStore()
    store.add([world.node(f"s{i}", f"stable s{i}", i % 5, "d") for i in range(N_STABLE)])
    q = world.vectors["s0"]
    near = [f"s{i}" for i in np.argsort(-(np.stack([world.vectors[f"s{i}"] for i in range(N_STABLE)]) @ q))[:40]]
    kept = [world.node(i, f"stable {i}", int(i[1:]) % 5, "d") for i in near]
    stop = threading.Event()
    rounds, errors, answers = [0], [], []

    def writer() -> None:
        while not stop.is_set():
            store.delete_nodes(node_ids=near)
            store.add(kept)
            rounds[0] += 1

    def reader() -> None:
        for _ in range(300):
            try:
                result = store.query(VectorStoreQuery(query_embedding=q.tolist(), similarity_top_k=K, mode="mmr"))
                answers.append(result.ids)
            except Exception as exc:  # noqa: BLE001 - the failure this test looks for
                errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for t in threads:
        t.start()
    threads[1].join(timeout=60)
    stop.set()
    threads[0].join(timeout=30)
    assert rounds[0] >= 10, rounds
    assert errors == [], (len(errors), errors[:3])
    assert len(answers) == 300 and all(len(ids) == len(set(ids)) == K for ids in answers)
