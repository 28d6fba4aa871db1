"""The store's default index (``index_factory="auto"``) against ``"Flat"`` on clustered data, side by
side in one process (a measurement, not a test):

* add: every node in batches, both stores (``auto`` converts to HNSW32 inside the add reaching 20,000
  nodes, after its recall probe), and the seconds of that one add;
* recall@10 of ``store.query`` against exact NumPy search, for both;
* query k=10 p50, auto vs Flat, interleaved;
* Deep Memory p50 over each store vs its own plain query, dense and with keywords (``bench_store``'s
  trained-like model, 1,000 memory nodes + 1,000 keys, BM25 over the top 50).

    python benchmarks/bench_auto_index.py [--n 100000] [--queries 300] [--threads 1] [--add-threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_backends import clustered  # noqa: E402
from bench_store import batches, make_nodes, p50_pair, synthetic_texts, trained_like_model  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=1, help="FAISS threads for queries")
    parser.add_argument("--add-threads", type=int, default=2, help="FAISS threads for adds")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import faiss
    from llama_index.core.vector_stores.types import VectorStoreQuery

    from llama_index_deepmemory import DeepMemoryVectorStore
    from llama_index_deepmemory.deep_memory.lexical import LexicalIndex

    clusters = max(10, args.n // 100)
    vectors = clustered(args.n, args.dim, args.seed, 1, clusters)
    queries = clustered(args.queries, args.dim, args.seed, 3, clusters)
    nodes = make_nodes(vectors)
    faiss.omp_set_num_threads(args.add_threads)
    stores, adds = {}, {}
    for factory in ("auto", "Flat"):
        store, slowest = DeepMemoryVectorStore(index_factory=factory), 0.0
        t0 = time.perf_counter()
        for chunk in batches(nodes, args.batch):
            t1 = time.perf_counter()
            store.add(chunk)
            slowest = max(slowest, time.perf_counter() - t1)
        adds[factory] = (time.perf_counter() - t0, slowest)
        stores[factory] = store
    faiss.omp_set_num_threads(args.threads)
    held = type(faiss.downcast_index(stores["auto"].client.index)).__name__
    print(f"faiss {faiss.__version__}, n={args.n} clustered ({clusters} centres), dim={args.dim}; auto holds {held}")
    print(f"add      : auto {adds['auto'][0]:.1f}s (slowest add {adds['auto'][1]:.1f}s)   "
          f"Flat {adds['Flat'][0]:.1f}s (slowest {adds['Flat'][1]:.2f}s)   ratio {adds['auto'][0] / adds['Flat'][0]:.1f}x")
    truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    as_lists = [q.tolist() for q in queries]

    def ask(store, q, **kw):
        return store.query(VectorStoreQuery(query_embedding=q, similarity_top_k=10), **kw)

    for name, store in stores.items():
        got = [[int(i.split("-")[1]) for i in ask(store, q).ids] for q in as_lists]
        recall = np.mean([len(set(g) & set(t.tolist())) / 10 for g, t in zip(got, truth)])
        print(f"recall@10 {name}: {recall:.3f}")
    for q in as_lists[:10]:
        ask(stores["auto"], q), ask(stores["Flat"], q)
    auto_q, flat_q = p50_pair(lambda q: ask(stores["auto"], q), lambda q: ask(stores["Flat"], q), as_lists)
    print(f"query p50: auto {auto_q * 1e3:.3f}ms  Flat {flat_q * 1e3:.3f}ms  ratio {auto_q / flat_q:.3f}x")

    rng = np.random.default_rng(args.seed)
    model, memory_unit = trained_like_model(vectors, 1000, 1000, rng)
    lexical = LexicalIndex([f"node-{i}" for i in range(args.n)], synthetic_texts(args.n, 100, rng))
    keyword_model = model.replace(lexical=lexical, lexical_weight=0.1)
    near = memory_unit[rng.integers(0, len(memory_unit), len(queries))] + 0.8 * queries / np.sqrt(args.dim)
    dm_queries = [(near[i] if i % 2 == 0 else queries[i]).tolist() for i in range(len(queries))]
    strings = synthetic_texts(len(dm_queries), 8, rng)
    for name, store in stores.items():
        store.deep_memory.add_model("dense", model, activate=True)
        store.deep_memory.add_model("keywords", keyword_model, activate=False)
        cells = []
        for label, texts in (("dense", [None] * len(dm_queries)), ("keywords", strings)):
            store.deep_memory.set_model(label)
            items = list(zip(dm_queries, texts))

            def query(p, dm, store=store):
                return store.query(VectorStoreQuery(query_embedding=p[0], query_str=p[1], similarity_top_k=10),
                                   deep_memory=dm)

            for p in items[:10]:
                query(p, True), query(p, False)
            dm_q, plain_q = p50_pair(lambda p: query(p, True), lambda p: query(p, False), items)
            cells.append(f"{label} {dm_q * 1e3:.3f} vs {plain_q * 1e3:.3f}ms = {dm_q / plain_q:.3f}x")
        print(f"deep_memory / plain, {name}: " + " | ".join(cells), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
