"""Deep Memory over a wrapped engine (Qdrant, in-process) beside the embedded FAISS store, in one run.

1. Quality (SciFact, BEIR): one model trained on the embedded store (seed 0) serves both the
   embedded store and ``DeepMemoryVectorStore(vector_store=QdrantVectorStore(...))`` holding the
   same vectors; nDCG@10, R@1 and R@10 of the 300 test claims, each ranked through ``store.query``
   with its text (as a LlamaIndex retriever asks); a wrapped engine re-scores a smaller keyword
   head (``keyword_depth``), so the embedded store is also ranked with that head. SciFact is not in this repository: BEIR publishes
   it at https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/scifact.zip; pass the
   unpacked folder as --data.
2. Overhead: p50 of ``deep_memory=True`` against a plain query through the same store, with a
   SciFact-sized model (1,000 memory nodes, 1,000 remembered queries, keyword re-scoring), over
   Qdrant and over the embedded store; queries alternate so neither side gains from running second.

Qdrant runs in-process here (``QdrantClient(":memory:")``), which scans in NumPy and copies every
payload it returns: absolute times are not a Qdrant server's, the ratios are what to read.

    python benchmarks/bench_wrapped.py                      # both parts
    python benchmarks/bench_wrapped.py --skip-quality --n 20000
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

from bench_quality import embed_texts, load_beir, score_ranked  # noqa: E402
from bench_store import p50_pair, synthetic_texts, trained_like_model  # noqa: E402

warnings.filterwarnings("ignore", message="Payload indexes have no effect")


def qdrant_wrapped(nodes):
    from llama_index.vector_stores.qdrant import QdrantVectorStore
    from qdrant_client import QdrantClient

    from llama_index_deepmemory import DeepMemoryVectorStore

    store = DeepMemoryVectorStore(vector_store=QdrantVectorStore(client=QdrantClient(":memory:"), collection_name="b"))
    for start in range(0, len(nodes), 2048):
        store.add(nodes[start : start + 2048])
    return store


def text_nodes(ids, texts, vectors):
    from llama_index.core.schema import TextNode

    return [TextNode(id_=i, text=t, embedding=v.tolist()) for i, t, v in zip(ids, texts, vectors)]


def ask(store, vector, text, deep_memory, k=10):
    from llama_index.core.vector_stores.types import VectorStoreQuery

    return store.query(VectorStoreQuery(query_embedding=vector.tolist(), similarity_top_k=k, query_str=text),
                       deep_memory=deep_memory)


def bench_quality(folder: Path) -> None:
    from llama_index_deepmemory import DeepMemoryVectorStore

    data = load_beir(folder)
    docs = embed_texts(data.doc_texts, f"{data.name}-docs")
    train_vectors = embed_texts(data.train.query_texts, f"{data.name}-train")
    test_vectors = embed_texts(data.test.query_texts, f"{data.name}-test")
    nodes = text_nodes(data.doc_ids, data.doc_texts, docs)
    embedded = DeepMemoryVectorStore()
    embedded.add(nodes)
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        embedded.deep_memory.train(data.train.query_texts, data.train.relevance, embedding=train_vectors, seed=0)
    print(f"trained on the embedded store in {time.perf_counter() - start:.1f} s; "
          f"active model: {embedded.deep_memory.get_model()}")
    start = time.perf_counter()
    wrapped = qdrant_wrapped(nodes)
    print(f"Qdrant (in-process) loaded {len(wrapped)} nodes in {time.perf_counter() - start:.1f} s")
    wrapped.deep_memory.load_state(*embedded.deep_memory.to_state())  # the same model, nothing retrained
    print(f"\nSciFact test ({len(data.test.query_texts)} claims), ranked through store.query with the claim text")
    print(f"{'store':<44}{'nDCG@10':>9}{'R@1':>8}{'R@10':>8}{'s':>8}")
    head = wrapped.keyword_depth  # a wrapped engine's keyword head (the embedded store: the model's 50)
    for name, store, depth in (("embedded FAISS", embedded, None), ("Qdrant via vector_store=", wrapped, head),
                               (f"embedded FAISS, keyword head {head}", embedded, head)):
        embedded.keyword_depth = depth
        for deep_memory in (False, True) if depth is None or store is wrapped else (True,):
            start = time.perf_counter()
            ranked = [ask(store, v, t, deep_memory).ids for v, t in zip(test_vectors, data.test.query_texts)]
            seconds = time.perf_counter() - start
            m = score_ranked(ranked, data.test.relevance)
            label = f"{name}{', Deep Memory' if deep_memory else ''}"
            print(f"{label:<44}{m['ndcg@10']:>9.3f}{m['recall@1']:>8.3f}{m['recall@10']:>8.3f}{seconds:>8.1f}")


def bench_overhead(n: int, dim: int, n_queries: int, seed: int) -> None:
    from llama_index_deepmemory import DeepMemoryVectorStore
    from llama_index_deepmemory.deep_memory.lexical import LexicalIndex

    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    ids = [f"node-{i}" for i in range(n)]
    texts = synthetic_texts(n, 100, rng)
    nodes = text_nodes(ids, texts, vectors)
    model, _ = trained_like_model(vectors, 1000, 1000, rng)
    model = model.replace(lexical=LexicalIndex(ids, texts), lexical_weight=0.2)
    queries = rng.normal(size=(n_queries, dim)).astype(np.float32)
    query_texts = synthetic_texts(n_queries, 8, rng)
    embedded = DeepMemoryVectorStore()
    embedded.add(nodes)
    start = time.perf_counter()
    wrapped = qdrant_wrapped(nodes)
    print(f"\n{n} x {dim} nodes; Qdrant (in-process) add: {time.perf_counter() - start:.1f} s")
    print(f"{'store':<26}{'query text':>12}{'plain ms':>10}{'deep memory ms':>16}{'ratio':>8}")
    for name, store in (("embedded FAISS", embedded), ("Qdrant via vector_store=", wrapped)):
        store.deep_memory.add_model("bench", model, activate=True)  # a hand-made model
        for with_text in (False, True):
            items = [(q, t if with_text else None) for q, t in zip(queries, query_texts)]
            for q, t in items[:5]:  # warm up (numba compilation, caches)
                ask(store, q, t, True), ask(store, q, t, False)
            plain, deep = p50_pair(lambda it: ask(store, it[0], it[1], False),
                                   lambda it: ask(store, it[0], it[1], True), items)
            print(f"{name:<26}{'yes' if with_text else 'no':>12}{1e3 * plain:>10.2f}{1e3 * deep:>16.2f}"
                  f"{deep / plain:>8.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(REPO_ROOT.parent / "shared" / "data" / "scifact"), help="BEIR SciFact folder")
    parser.add_argument("--n", type=int, default=20_000, help="nodes for the overhead part (default 20000)")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--skip-overhead", action="store_true")
    args = parser.parse_args(argv)
    if not args.skip_quality:
        folder = Path(args.data)
        if not (folder / "corpus.jsonl").is_file():
            parser.error(f"no BEIR folder at {folder} (corpus.jsonl missing); download SciFact from BEIR (see --help)")
        bench_quality(folder)
    if not args.skip_overhead:
        bench_overhead(args.n, args.dim, args.queries, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
