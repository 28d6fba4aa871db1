"""The floor under a Deep Memory query over the default index: a plain ``store.query`` against the same
query preceded by nothing but the model's compiled pass (``model.apply``: the adapter's transform and the
memory and key scores, which every Deep Memory query must compute before it can rank), and against a
real ``deep_memory=True`` query, interleaved three ways (a measurement, not a test).

The middle column does none of the ranking's Python, no deeper search and no merge: it is what remains
if all of that cost nothing. A second line does the same for keyword queries (``bench_auto_index``'s
keyword model, BM25 over the top 50): there the pass also turns the query text into term ids, and the BM25
scoring of the head is left out as part of the ranking. Where its ratio over plain is already near 1.10x, no trimming of the
ranking reaches 1.10x without a model that reads fewer bytes (``bench_auto_index``'s clustered data
and trained-like model: a 384 x 384 int8 adapter, 1,000 memory nodes, 1,000 keys).

    python benchmarks/bench_model_floor.py [--n 100000] [--queries 300] [--index-factory auto|Flat|HNSW32]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_backends import clustered  # noqa: E402
from bench_store import batches, make_nodes, synthetic_texts, trained_like_model  # noqa: E402


def interleaved_p50(callables: list, items: list, rounds: int) -> list[float]:
    """Median seconds of each callable over ``items``, every item run by all of them in a rotating
    order (so none always runs first, after another query's work, or last)."""
    times: list[list[float]] = [[] for _ in callables]
    for r in range(rounds):
        for i, item in enumerate(items):
            for j in range(len(callables)):
                which = (i + j + r) % len(callables)
                t0 = time.perf_counter()
                callables[which](item)
                times[which].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--index-factory", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import faiss
    from llama_index.core.vector_stores.types import VectorStoreQuery

    from llama_index_deepmemory import DeepMemoryVectorStore
    from llama_index_deepmemory.deep_memory.lexical import LexicalIndex

    clusters = max(10, args.n // 100)
    vectors = clustered(args.n, args.dim, args.seed, 1, clusters)
    queries = clustered(args.queries, args.dim, args.seed, 3, clusters)
    store = DeepMemoryVectorStore(index_factory=args.index_factory)
    faiss.omp_set_num_threads(2)
    for chunk in batches(make_nodes(vectors), 2048):
        store.add(chunk)
    faiss.omp_set_num_threads(1)
    held = type(faiss.downcast_index(store.client.index)).__name__
    rng = np.random.default_rng(args.seed)
    model, memory_unit = trained_like_model(vectors, 1000, 1000, rng)
    lexical = LexicalIndex([f"node-{i}" for i in range(args.n)], synthetic_texts(args.n, 100, rng))
    keyword_model = model.replace(lexical=lexical, lexical_weight=0.1)
    near = memory_unit[rng.integers(0, len(memory_unit), len(queries))] + 0.8 * queries / np.sqrt(args.dim)
    asked = [(near[i] if i % 2 == 0 else queries[i]) for i in range(len(queries))]
    strings = synthetic_texts(len(asked), 8, rng)
    # the model pass takes the query as the store prepares it (unit length: the anchors' key bounds scale with it)
    items = [(q.tolist(), (q / np.linalg.norm(q)).astype(np.float32)[None, :], text) for q, text in zip(asked, strings)]
    print(f"faiss {faiss.__version__}, n={args.n} clustered ({clusters} centres), dim={args.dim}; the store holds {held}")
    for label, active, text_of in (("dense", model, lambda item: None), ("keywords", keyword_model, lambda item: item[2])):
        store.deep_memory.add_model(label, active, activate=True)

        def plain(item, text_of=text_of):
            return store.query(VectorStoreQuery(query_embedding=item[0], similarity_top_k=10, query_str=text_of(item)))

        def model_pass_then_plain(item, active=active, text_of=text_of, plain=plain):
            active.apply(item[1])
            if text_of(item) is not None:  # the query's terms, as a keyword query looks them up first
                active.keyword_plans(item[1])[0].index.query_term_ids(text_of(item))
            return plain(item)

        def deep_memory(item, text_of=text_of):
            return store.query(VectorStoreQuery(query_embedding=item[0], similarity_top_k=10, query_str=text_of(item)),
                               deep_memory=True)

        for item in items[:10]:
            plain(item), model_pass_then_plain(item), deep_memory(item)
        p_plain, p_floor, p_dm = interleaved_p50([plain, model_pass_then_plain, deep_memory], items, args.rounds)
        print(f"{label:<8} p50: plain {p_plain * 1e3:.3f} ms | model pass + plain {p_floor * 1e3:.3f} ms = "
              f"{p_floor / p_plain:.3f}x | deep_memory=True {p_dm * 1e3:.3f} ms = {p_dm / p_plain:.3f}x", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
