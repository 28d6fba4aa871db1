"""Train-only dev protocol for Deep Memory quality choices (SciFact *train* claims only).

    python benchmarks/bench_dev.py [--data ../shared/data/scifact] [--splits 0,1,2] [--options '{}']
        [--variants gate] [--train-seeds 0,1,2]

Three seeded random 75/25 splits of the SciFact train claims (``qrels/train.tsv``): Deep Memory
trains on the 75% ("dev-train", through ``train_model``, the function ``store.deep_memory.train``
runs) and is scored on the other 25% ("dev-test"), in both serving modes: with query texts (as a
LlamaIndex retriever passes them) and embeddings only (no ``query_str``). "dev doc-disjoint" are the
dev-test claims none of whose relevant documents is relevant to any dev-train claim: the unseen
documents of issue 17. The SciFact test claims are never read. Embeddings come from
``bench_quality``'s cache (the same files). ``--variants gate`` also scores per-query fallbacks
(the measurements of ``benchmarks/README.md``, "Unseen documents").
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # the package, when not installed

from bench_quality import REPO_ROOT, RetrievalSplit, embed_texts, load_beir, score_ranked  # noqa: E402

logger = logging.getLogger(__name__)


@dataclass
class DevSplit:
    """One 75/25 split of the train claims and its doc-disjoint dev-test claims."""

    seed: int
    train: RetrievalSplit
    train_vectors: np.ndarray
    test: RetrievalSplit
    test_vectors: np.ndarray
    disjoint: list[int]


def dev_splits(split: RetrievalSplit, vectors: np.ndarray, seeds: list[int], fraction: float = 0.25) -> list[DevSplit]:
    """Seeded random (1 - fraction)/fraction splits of ``split``'s queries."""
    out = []
    for seed in seeds:
        order = np.random.default_rng(1000 + seed).permutation(len(split.query_ids))
        n_test = int(round(fraction * len(order)))
        test_idx, train_idx = np.sort(order[:n_test]), np.sort(order[n_test:])

        def take(idx: np.ndarray) -> RetrievalSplit:
            return RetrievalSplit(
                [split.query_ids[i] for i in idx], [split.query_texts[i] for i in idx], [split.relevance[i] for i in idx]
            )

        train, test = take(train_idx), take(test_idx)
        seen = {node for rel in train.relevance for node, _ in rel}
        disjoint = [i for i, rel in enumerate(test.relevance) if not any(node in seen for node, _ in rel)]
        out.append(DevSplit(seed, train, vectors[train_idx], test, vectors[test_idx], disjoint))
    return out


def build_store(doc_ids: list[str], doc_texts: list[str], docs: np.ndarray):
    """A ``DeepMemoryVectorStore`` holding the corpus, and its ``StoreView`` (what training sees)."""
    from llama_index.core.schema import TextNode

    from llama_index_deepmemory import DeepMemoryVectorStore

    store = DeepMemoryVectorStore()
    store.add([TextNode(id_=i, text=t, embedding=v.tolist()) for i, t, v in zip(doc_ids, doc_texts, docs)])
    return store, store.deep_memory._store


def rank_ids(view, vectors: np.ndarray, model, texts: list[str] | None, k: int = 10) -> list[list[str]]:
    """The serving ranking (``deep_memory.ranking.rank``) of raw query vectors."""
    from llama_index_deepmemory.deep_memory.ranking import rank

    return rank(view, view.prepare_queries(vectors), model, k, texts=texts)[1]


def plain_keyword_model(dim: int, lexical, weight: float):
    """The plain store plus keyword re-scoring (no adapter, memory or keys)."""
    from llama_index_deepmemory.deep_memory.models import AdapterMemoryModel

    return AdapterMemoryModel(dim=dim, metric="cosine", lexical=lexical, lexical_weight=weight)


def pick_plain_keyword_weight(view, split: DevSplit, lexical, dim: int) -> float:
    """The keyword weight of the untrained hybrid, picked on the dev-train claims."""
    from llama_index_deepmemory.deep_memory.training import TrainOptions, ranking_metrics

    best, best_w = -1.0, 0.0
    for w in TrainOptions().lexical_weights:
        ranked = rank_ids(view, split.train_vectors, plain_keyword_model(dim, lexical, w), split.train.query_texts)
        score = ranking_metrics(ranked, split.train.relevance)["ndcg@10"]
        if score > best:
            best, best_w = score, w
    return best_w


def max_key_cosine(queries: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Per query, the largest cosine to any training query (raw embeddings)."""
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    k = keys / np.linalg.norm(keys, axis=1, keepdims=True)
    return (q @ k.T).max(axis=1)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def evaluate_split(view, split: DevSplit, options: dict, variants: set[str], dim: int) -> dict[str, tuple]:
    """Train on the dev-train claims; per variant, (nDCG@10 all, nDCG@10 doc-disjoint) on dev-test."""
    from llama_index_deepmemory.deep_memory.models import AdapterMemoryModel
    from llama_index_deepmemory.deep_memory.training import TrainOptions, _build_lexical, train_model

    test, rel = split.test, split.test.relevance

    def scores(ranked: list[list[str]]) -> tuple[float, float]:
        return score_ranked(ranked, rel)["ndcg@10"], score_ranked(ranked, rel, split.disjoint)["ndcg@10"]

    out: dict[str, tuple] = {}
    plain = rank_ids(view, split.test_vectors, None, None)
    out["no adapter"] = scores(plain)
    lexical = _build_lexical(view)
    w_plain = pick_plain_keyword_weight(view, split, lexical, dim)
    hybrid = rank_ids(view, split.test_vectors, plain_keyword_model(dim, lexical, w_plain), test.query_texts)
    out["untrained hybrid"] = scores(hybrid) + (f"w {w_plain}",)

    start = time.perf_counter()
    result = train_model(
        view, split.train_vectors, split.train.relevance,
        options=TrainOptions.from_kwargs(options), query_texts=split.train.query_texts,
    )
    seconds = time.perf_counter() - start
    model = result.model if result.improved else None
    info = result.info
    note = (
        f"{'on' if model else 'OFF'}, epoch {info['best_epoch']}, keys {info['key_weight']}/{info['key_threshold']}, "
        f"kw {info['lexical_weight']}{' plain' if info['keywords_only'] else ''}, {seconds:.1f}s"
    )
    ours_text = rank_ids(view, split.test_vectors, model, test.query_texts)
    ours_emb = rank_ids(view, split.test_vectors, model, None)
    out["ours, query texts"] = scores(ours_text) + (note,)
    out["ours, embeddings only"] = scores(ours_emb)
    if "gate" in variants and model is not None:
        m = result.model
        dense = AdapterMemoryModel(
            dim=m.dim, metric=m.metric, weight=m.weight, bias=m.bias, memory_ids=list(m.memory_ids),
            memory_vectors=m.memory_vectors, key_vectors=m.key_vectors, link_key=m.link_key,
            link_node=m.link_node, link_weight=m.link_weight, key_weight=m.key_weight, key_threshold=m.key_threshold,
        )
        base = np.asarray(view.get_vectors(list(m.memory_ids)), dtype=np.float32)
        drift = m.memory_vectors - base
        for name, vectors, key_w in (
            ("no keys", m.memory_vectors, 0.0),
            ("centred memory", _unit(base + drift - drift.mean(0)), m.key_weight),
            ("centred memory, no keys", _unit(base + drift - drift.mean(0)), 0.0),
            ("stored memory (adapter + keys)", base, m.key_weight),
        ):
            variant = AdapterMemoryModel(
                dim=m.dim, metric=m.metric, weight=m.weight, bias=m.bias, memory_ids=list(m.memory_ids),
                memory_vectors=vectors, key_vectors=m.key_vectors, link_key=m.link_key, link_node=m.link_node,
                link_weight=m.link_weight, key_weight=key_w, key_threshold=m.key_threshold,
                lexical=m.lexical, lexical_weight=m.lexical_weight,
            )
            out[f"  {name}, texts"] = scores(rank_ids(view, split.test_vectors, variant, test.query_texts))
            out[f"  {name}, embeddings"] = scores(rank_ids(view, split.test_vectors, variant, None))
        adapter_only = AdapterMemoryModel(dim=m.dim, metric=m.metric, weight=m.weight, bias=m.bias)
        out["  adapter only, embeddings"] = scores(rank_ids(view, split.test_vectors, adapter_only, None))
        adapter_kw = AdapterMemoryModel(
            dim=m.dim, metric=m.metric, weight=m.weight, bias=m.bias, lexical=lexical, lexical_weight=w_plain
        )
        adapter_text = rank_ids(view, split.test_vectors, adapter_kw, test.query_texts)
        adapter_emb = rank_ids(view, split.test_vectors, adapter_only, None)
        out["  adapter only + kw, texts"] = scores(adapter_text)
        del dense
        feature = max_key_cosine(split.test_vectors, split.train_vectors)
        for t in (0.4, 0.5, 0.6):
            on = feature >= t
            gated_text = [a if o else b for a, b, o in zip(ours_text, hybrid, on)]
            gated_emb = [a if o else b for a, b, o in zip(ours_emb, plain, on)]
            out[f"  gate cos>={t}, texts"] = scores(gated_text) + (f"on {on.mean():.2f}",)
            out[f"  gate cos>={t}, embeddings"] = scores(gated_emb) + (f"on {on.mean():.2f}",)
            gated_text = [a if o else b for a, b, o in zip(ours_text, adapter_text, on)]
            gated_emb = [a if o else b for a, b, o in zip(ours_emb, adapter_emb, on)]
            out[f"  gate cos>={t}, texts, fallback adapter+kw"] = scores(gated_text)
            out[f"  gate cos>={t}, embeddings, fallback adapter"] = scores(gated_emb)
    return out


def gate_latency(store, view, split: DevSplit, repeats: int = 3) -> str:
    """Median per-query cost of the gate in ``store.query`` (keywords on), the trained model with
    and without its gate served alternately on the dev-test claims."""
    from llama_index.core.vector_stores.types import VectorStoreQuery

    from llama_index_deepmemory.deep_memory.training import TrainOptions, train_model

    result = train_model(
        view, split.train_vectors, split.train.relevance, options=TrainOptions(gate_threshold=0.5),
        query_texts=split.train.query_texts,
    )
    gated = result.model
    plain = copy.copy(gated)  # every array and the keyword index shared (the store caches by index)
    plain.fallback = None  # route() sends nothing to a fallback then
    store.deep_memory._models["gated"], store.deep_memory._models["ungated"] = gated, plain
    diffs = []
    for _ in range(repeats):
        for q, text in zip(split.test_vectors, split.test.query_texts):
            query = VectorStoreQuery(query_embedding=q.tolist(), similarity_top_k=10, query_str=text)
            times = {}
            for name in ("gated", "ungated") if len(diffs) % 2 else ("ungated", "gated"):
                store.deep_memory.set_model(name)
                start = time.perf_counter()
                store.query(query, deep_memory=True)
                times[name] = time.perf_counter() - start
            diffs.append(times["gated"] - times["ungated"])
    return f"gate cost per store.query: median {1e6 * np.median(diffs):.0f} us over {len(diffs)} pairs"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(REPO_ROOT.parent / "shared" / "data" / "scifact"), help="BEIR SciFact folder")
    parser.add_argument("--splits", default="0,1,2", help="seeds of the 75/25 splits of the train claims")
    parser.add_argument(
        "--train-seeds", default="",
        help="TrainOptions seeds to train each split with (e.g. 0,1,2; default: the options' seed); the seed draws "
             "training's validation split, which alone moves dev means by up to 0.013 nDCG@10 and 0.026 doc-disjoint",
    )
    parser.add_argument("--options", default="{}", help="JSON TrainOptions, e.g. '{\"lexical\": false}'")
    parser.add_argument("--variants", default="", help="extra measurements: gate, latency")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    folder = Path(args.data)
    if not (folder / "corpus.jsonl").exists():
        print(f"SciFact not found at {folder}; see bench_quality.py", file=sys.stderr)
        return 2
    data = load_beir(folder)
    docs = embed_texts(data.doc_texts, f"{data.name}-docs")
    train_vectors = embed_texts(data.train.query_texts, f"{data.name}-train")
    store, view = build_store(data.doc_ids, data.doc_texts, docs)
    options = json.loads(args.options)
    variants = {v for v in args.variants.split(",") if v}
    if "latency" in variants:
        print(gate_latency(store, view, dev_splits(data.train, train_vectors, [0])[0]))
        return 0
    train_seeds = [int(s) for s in args.train_seeds.split(",") if s] or [options.get("seed", 0)]
    splits = dev_splits(data.train, train_vectors, [int(s) for s in args.splits.split(",") if s])
    per_split = []
    for split, train_seed in itertools.product(splits, train_seeds):
        result = evaluate_split(view, split, {**options, "seed": train_seed}, variants, docs.shape[1])
        per_split.append(result)
        print(f"split {split.seed}, train seed {train_seed}: {len(split.train.query_ids)} dev-train, "
              f"{len(split.test.query_ids)} dev-test, {len(split.disjoint)} doc-disjoint", flush=True)
        for name, values in result.items():
            extra = f"  ({values[2]})" if len(values) > 2 else ""
            print(f"  {name:45s} {values[0]:.3f}  {values[1]:.3f}{extra}", flush=True)
    names = [n for n in per_split[0] if all(n in r for r in per_split)]
    print(f"\n### dev protocol, options {json.dumps(options)}, train seeds {train_seeds}, "
          f"mean of {len(per_split)} (split, train seed) runs\n")
    print("| variant | dev nDCG@10 | dev doc-disjoint |")
    print("|---|---|---|")
    for name in names:
        mean_all = np.mean([r[name][0] for r in per_split])
        mean_dis = np.mean([r[name][1] for r in per_split])
        print(f"| {name.strip()} | {mean_all:.3f} | {mean_dis:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
