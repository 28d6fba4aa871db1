"""Speed of DeepMemoryVectorStore against raw FAISS and SimpleVectorStore, side by side in one run.

    python benchmarks/bench_store.py [--n 100000] [--dim 384] [--queries 300] [--threads 1] [--simple-n 10000]
        [--memory-nodes 1000] [--keys 1000] [--index-factory Flat|auto|HNSW32]

``--index-factory`` (default ``Flat``, the exact store) is the measured store's; ``auto`` is the
store's default (HNSW32 from 20,000 nodes where its probe finds the recall: not on these random
vectors, so it stays exact). Adds use ``--add-threads`` (default: ``--threads``).

Prints (targets from the issue):
* add: store.add vs raw FAISS add + keeping the node in a dict (target <= 2x);
* query k=10 p50: store.query vs raw ``faiss.Index.search`` on the store's own index (<= 1.2x);
* deep_memory=True query p50 vs plain query, with a trained-like model (<= 1.05x), and the same
  model with keyword (BM25) re-scoring of its top 50;
* persist + load: store vs SimpleVectorStore on the same nodes (>= 10x faster); see --simple-n.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def persist_and_load(store, path: Path) -> tuple[float, float]:
    """Seconds to persist ``store`` to ``path`` and to load it back."""
    from llama_index_deepmemory import DeepMemoryVectorStore

    gc.collect()
    t0 = time.perf_counter()
    store.persist(str(path))
    t1 = time.perf_counter()
    loaded = DeepMemoryVectorStore.from_persist_path(str(path))
    t2 = time.perf_counter()
    assert len(loaded) == len(store)
    return t1 - t0, t2 - t1


def make_nodes(vectors: np.ndarray):
    from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode

    return [
        TextNode(
            id_=f"node-{i}",
            text=f"short text number {i}",
            metadata={"group": i % 10, "source": f"file{i % 100}.html"},
            embedding=vectors[i].tolist(),
            relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=f"doc-{i // 20}")},
        )
        for i in range(len(vectors))
    ]


def batches(items, size):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def bench_add(nodes, dim: int, batch: int, factory: str = "Flat") -> tuple[float, float, object]:
    import faiss

    from llama_index_deepmemory import DeepMemoryVectorStore

    gc.collect()
    t0 = time.perf_counter()
    raw = faiss.IndexFlatIP(dim)
    kept = {}
    for chunk in batches(nodes, batch):
        vectors = np.asarray([n.embedding for n in chunk], dtype=np.float32)
        faiss.normalize_L2(vectors)
        raw.add(vectors)
        for node in chunk:
            kept[node.node_id] = node
    raw_s = time.perf_counter() - t0
    del raw, kept
    gc.collect()
    t0 = time.perf_counter()
    store = DeepMemoryVectorStore(index_factory=factory)
    for chunk in batches(nodes, batch):
        store.add(chunk)
    ours_s = time.perf_counter() - t0
    return ours_s, raw_s, store


def p50_pair(first, second, items) -> tuple[float, float]:
    """Median seconds of two callables, interleaved over the same inputs; which one runs first
    alternates from item to item, so neither gains from running second (warm caches)."""
    a, b = [], []
    for i, item in enumerate(items):
        for fn, times in ((first, a), (second, b)) if i % 2 == 0 else ((second, b), (first, a)):
            t0 = time.perf_counter()
            fn(item)
            times.append(time.perf_counter() - t0)
    return statistics.median(a), statistics.median(b)


def synthetic_texts(n: int, words: int, rng: np.random.Generator, vocabulary: int = 20_000) -> list[str]:
    """``n`` texts of ``words`` words drawn from a Zipf-like vocabulary (for keyword scores)."""
    ranks = np.arange(1, vocabulary + 1)
    p = 1.0 / ranks
    draws = rng.choice(vocabulary, size=(n, words), p=p / p.sum())
    return [" ".join(f"w{j}" for j in row) for row in draws]


def trained_like_model(vectors: np.ndarray, n_memory: int, n_keys: int, rng: np.random.Generator,
                       node_id=lambda i: f"node-{i}", gate: float = 0.0):
    """An ``AdapterMemoryModel`` shaped like one trained on ``n_keys`` queries: a near-identity
    adapter, ``n_memory`` memory nodes (stored vector plus a small learned delta), every training
    query remembered as a key near its relevant node (about 1.3 links per key). ``node_id(row)``
    names the node of a row (``node-{row}`` by default). ``gate`` > 0: the per-query gate of
    ``TrainOptions.gate_threshold``, with the keys as the training queries."""
    from llama_index_deepmemory.deep_memory.models import AdapterMemoryModel

    n, dim = vectors.shape
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    memory_rows = rng.choice(n, size=min(n_memory, n), replace=False)
    n_mem = len(memory_rows)
    link_key = np.concatenate([np.arange(n_keys), rng.integers(0, n_keys, n_keys * 3 // 10)])
    link_node = np.concatenate([np.arange(n_keys) % n_mem, rng.integers(0, n_mem, n_keys * 3 // 10)])
    keys = unit[memory_rows[link_node[:n_keys]]] + 0.5 * rng.normal(size=(n_keys, dim)) / np.sqrt(dim)
    model = AdapterMemoryModel(
        dim, "cosine",
        weight=np.eye(dim) + 0.02 * rng.normal(size=(dim, dim)),
        bias=0.01 * rng.normal(size=dim),
        memory_ids=[node_id(i) for i in memory_rows],
        memory_vectors=unit[memory_rows] + 0.05 * rng.normal(size=(n_mem, dim)) / np.sqrt(dim),
        key_vectors=keys,
        link_key=link_key,
        link_node=link_node,
        link_weight=np.ones(len(link_key), dtype=np.float32),
        key_weight=0.4,
        key_threshold=0.7,
        gate_threshold=gate,
        gate_keys=keys if gate else None,
    )
    return model, unit[memory_rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="number of nodes (default 100000)")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--batch", type=int, default=2048, help="nodes per add call (VectorStoreIndex's default)")
    parser.add_argument("--threads", type=int, default=0,
                        help="FAISS/OpenMP threads (0 = FAISS default; 1 is steadier on a busy machine)")
    parser.add_argument("--memory-nodes", type=int, default=1000,
                        help="memory nodes of the Deep Memory model (SciFact's trained model has ~900)")
    parser.add_argument("--keys", type=int, default=1000, help="remembered training queries (SciFact: 809)")
    parser.add_argument("--gate", type=float, default=0.0,
                        help="the model's per-query gate threshold (TrainOptions.gate_threshold; 0: none)")
    parser.add_argument("--far-weight", type=float, default=0.0,
                        help="keyword weight far from the training queries (TrainOptions.far_keyword_weight, "
                             "opt-in: 0.3; default 0: none)")
    parser.add_argument("--keyword-words", type=int, default=100,
                        help="words per synthetic node text for the keyword re-scoring measurement (0 skips it)")
    parser.add_argument("--add-threads", type=int, default=0,
                        help="FAISS threads while adding (0 = as --threads; HNSW adds are parallel)")
    parser.add_argument("--index-factory", default="Flat",
                        help="the measured store's index_factory (default Flat: exact; 'auto': the store's default)")
    parser.add_argument("--simple-n", type=int, default=10_000,
                        help="nodes for the side-by-side SimpleVectorStore persist+load (0 skips it; slow)")
    args = parser.parse_args(argv)

    import faiss
    from llama_index.core.vector_stores import SimpleVectorStore
    from llama_index.core.vector_stores.types import VectorStoreQuery

    from llama_index_deepmemory import DeepMemoryVectorStore

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    print(f"faiss {faiss.__version__}, threads {faiss.omp_get_max_threads()}, n={args.n}, dim={args.dim}")
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(args.n, args.dim)).astype(np.float32)
    t0 = time.perf_counter()
    nodes = make_nodes(vectors)
    print(f"built {len(nodes)} TextNodes in {time.perf_counter() - t0:.1f}s")

    if args.add_threads:
        faiss.omp_set_num_threads(args.add_threads)
    ours_add, raw_add, store = bench_add(nodes, args.dim, args.batch, args.index_factory)
    if args.add_threads:
        faiss.omp_set_num_threads(args.threads or args.add_threads)
    print(f"index: index_factory={args.index_factory!r} holds {type(faiss.downcast_index(store.client.index)).__name__}")
    print(f"add      : store {ours_add:.2f}s   raw FAISS add + dict {raw_add:.2f}s   ratio {ours_add / raw_add:.2f}x (target <= 2)")

    queries = rng.normal(size=(args.queries, args.dim)).astype(np.float32)
    prepared = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    index = store.client
    as_lists = [q.tolist() for q in queries]
    pairs = list(zip(as_lists, prepared))
    for q_list, q in pairs[:10]:  # warm-up
        store.query(VectorStoreQuery(query_embedding=q_list, similarity_top_k=10))
        index.search(q[None, :], 10)
    ours_q, raw_q = p50_pair(
        lambda p: store.query(VectorStoreQuery(query_embedding=p[0], similarity_top_k=10)),
        lambda p: index.search(p[1][None, :], 10),
        pairs,
    )
    print(f"query p50: store {ours_q * 1e3:.2f}ms  raw index.search {raw_q * 1e3:.2f}ms  ratio {ours_q / raw_q:.3f}x (target <= 1.2)")

    model, memory_unit = trained_like_model(vectors, args.memory_nodes, args.keys, rng, gate=args.gate)
    store.deep_memory.add_model("bench", model, activate=True)  # a hand-made model
    # half the queries sit near memory nodes (so overrides and key bonuses really enter the top 10)
    near = memory_unit[rng.integers(0, len(memory_unit), len(queries))] + 0.8 * queries / np.sqrt(args.dim)
    dm_queries = [(near[i] if i % 2 == 0 else queries[i]).tolist() for i in range(len(queries))]
    for p in dm_queries[:10]:  # warm-up
        store.query(VectorStoreQuery(query_embedding=p, similarity_top_k=10), deep_memory=True)
    dm_q, plain_q = p50_pair(
        lambda p: store.query(VectorStoreQuery(query_embedding=p, similarity_top_k=10), deep_memory=True),
        lambda p: store.query(VectorStoreQuery(query_embedding=p, similarity_top_k=10)),
        dm_queries,
    )
    print(f"deep_memory p50: {dm_q * 1e3:.2f}ms vs plain {plain_q * 1e3:.2f}ms  ratio {dm_q / plain_q:.3f}x "
          f"({len(model.memory_ids)} memory nodes + {args.keys} keys + {args.dim}x{args.dim} adapter; target <= 1.05)")
    if args.keyword_words:
        # the same model plus keyword re-scoring of the top 50 (queries carry query_str)
        from llama_index_deepmemory.deep_memory.lexical import LexicalIndex

        t0 = time.perf_counter()
        lexical = LexicalIndex([f"node-{i}" for i in range(args.n)], synthetic_texts(args.n, args.keyword_words, rng))
        print(f"keyword index of {args.n} texts x {args.keyword_words} words built in {time.perf_counter() - t0:.1f}s")
        # keyword weight 0.1, and (training's opt-in far_keyword_weight) args.far_weight for queries
        # whose cosine to every training query (the keys) is below 0.6
        far = dict(far_lexical_weight=args.far_weight, far_cosine=0.6, gate_keys=model.key_vectors) if args.far_weight else {}
        # the gate's fallback (if any) re-scores too, with its own weight
        model = model.replace(lexical=lexical, lexical_weight=0.1, **far,
                              fallback_lexical_weight=0.2 if model.fallback is not None else 0.0)
        store.deep_memory.add_model("bench_keywords", model, activate=True)
        strings = synthetic_texts(len(dm_queries), 8, rng)
        pairs_with_text = list(zip(dm_queries, strings))
        lex_q, plain_q = p50_pair(
            lambda p: store.query(VectorStoreQuery(query_embedding=p[0], query_str=p[1], similarity_top_k=10), deep_memory=True),
            lambda p: store.query(VectorStoreQuery(query_embedding=p[0], query_str=p[1], similarity_top_k=10)),
            pairs_with_text,
        )
        print(f"deep_memory + keywords p50: {lex_q * 1e3:.2f}ms vs plain {plain_q * 1e3:.2f}ms  ratio {lex_q / plain_q:.3f}x "
              f"(the same model re-scoring its top 50 with BM25; far weight {args.far_weight})")
    store.deep_memory.set_model(None)
    store.deep_memory.prune_models(keep=0)  # every hand-made model gone again

    from llama_index.core.vector_stores.types import FilterOperator, MetadataFilter, MetadataFilters

    filters = MetadataFilters(filters=[MetadataFilter(key="group", value=3, operator=FilterOperator.EQ)])
    store.query(VectorStoreQuery(query_embedding=as_lists[0], similarity_top_k=10, filters=filters))
    filt_q, _ = p50_pair(
        lambda p: store.query(VectorStoreQuery(query_embedding=p, similarity_top_k=10, filters=filters)),
        lambda p: None,
        as_lists[:50],
    )
    print(f"filtered query p50 (10% match): {filt_q * 1e3:.2f}ms")

    tmp = Path(tempfile.mkdtemp(prefix="bench_store_"))
    try:
        ours_io = persist_and_load(store, tmp / "ours")
        print(f"persist + load ({len(store)} nodes): store {ours_io[0]:.2f}s + {ours_io[1]:.2f}s")
        if args.simple_n:
            # SimpleVectorStore's JSON load takes minutes at 100k, so both stores are compared on
            # the same first --simple-n nodes (pass --simple-n 100000 for the full size).
            subset = nodes[: args.simple_n]
            small = DeepMemoryVectorStore()
            simple = SimpleVectorStore()
            for chunk in batches(subset, args.batch):
                small.add(chunk)
                simple.add(chunk)
            ours_small = sum(persist_and_load(small, tmp / "ours_small"))
            gc.collect()
            t0 = time.perf_counter()
            simple.persist(str(tmp / "simple" / "vector_store.json"))
            t1 = time.perf_counter()
            SimpleVectorStore.from_persist_path(str(tmp / "simple" / "vector_store.json"))
            t2 = time.perf_counter()
            print(f"persist + load ({len(subset)} nodes): store {ours_small:.2f}s   SimpleVectorStore "
                  f"{t1 - t0:.2f}s + {t2 - t1:.2f}s   speed-up {(t2 - t0) / ours_small:.1f}x (target >= 10)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
