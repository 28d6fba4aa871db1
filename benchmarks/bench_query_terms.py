"""In situ: the time ``LexicalIndex.query_term_ids`` (the query's tokeniser) takes inside
``store.query(..., deep_memory=True)`` with keyword re-scoring, at 100,000 x 384 vectors with one FAISS
thread and ``bench_store``'s SciFact-sized model; and how many queries the compiled merge + keyword kernel
serves. The tokeniser and the kernel call are wrapped with timers/counters (a measurement, not a test).

    python benchmarks/bench_query_terms.py
"""
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import faiss
faiss.omp_set_num_threads(1)
from bench_store import make_nodes, synthetic_texts, trained_like_model, p50_pair
from llama_index.core.vector_stores.types import VectorStoreQuery
from llama_index_deepmemory import DeepMemoryVectorStore
from llama_index_deepmemory.deep_memory.lexical import LexicalIndex
from llama_index_deepmemory.engine import faiss_store as fs
n, dim = 100_000, 384
rng = np.random.default_rng(0)
vectors = rng.normal(size=(n, dim)).astype(np.float32)
store = DeepMemoryVectorStore()
nodes = make_nodes(vectors)
for s in range(0, n, 2048):
    store.add(nodes[s:s + 2048])
del nodes
model, memory_unit = trained_like_model(vectors, 1000, 1000, rng)
model.lexical, model.lexical_weight = LexicalIndex([f"node-{i}" for i in range(n)], synthetic_texts(n, 100, rng)), 0.1
store.deep_memory._models["bench"] = model
store.deep_memory._active = "bench"
queries = rng.normal(size=(300, dim)).astype(np.float32)
near = memory_unit[rng.integers(0, len(memory_unit), 300)] + 0.8 * queries / np.sqrt(dim)
dm = [(near[i] if i % 2 == 0 else queries[i]).tolist() for i in range(300)]
strings = synthetic_texts(300, 8, rng)
items = list(zip(dm, strings))
index = model.lexical
real = index.query_term_ids
times = []
def timed(t):
    t0 = time.perf_counter(); r = real(t); times.append(time.perf_counter() - t0); return r
index.query_term_ids = timed
counts = {"kernel": 0, "general": 0}
inner = fs.FaissStore._merge_keyword_single
def spy(self, *a, **k):
    r = inner(self, *a, **k); counts["kernel" if r is not None and r[2] else "general"] += 1; return r
fs.FaissStore._merge_keyword_single = spy
run = lambda p: store.query(VectorStoreQuery(query_embedding=p[0], query_str=p[1], similarity_top_k=10), deep_memory=True)
plain = lambda p: store.query(VectorStoreQuery(query_embedding=p[0], query_str=p[1], similarity_top_k=10))
for p in items[:10]:
    run(p)
times.clear(); counts.update(kernel=0, general=0)
a, b = p50_pair(run, plain, items)
print(f"dm+kw {a*1e3:.2f} ms / plain {b*1e3:.2f} ms = {a/b:.3f}x; query_term_ids in situ p50 {statistics.median(times)*1e6:.1f} us "
      f"(n={len(times)}), p90 {np.percentile(times, 90)*1e6:.1f} us; merge calls {counts}")
