"""Train-only dev protocol for Deep Memory quality choices (SciFact *train* claims only).

    python benchmarks/bench_dev.py [--data ../shared/data/scifact] [--splits 0,1,2] [--options '{}']
        [--variants head|gate|fusion|far-weight|term-weights] [--train-seeds 0,1,2]

Three seeded random 75/25 splits of the SciFact train claims (``qrels/train.tsv``): Deep Memory
trains on the 75% ("dev-train", through ``train_model``, the function ``store.deep_memory.train``
runs) and is scored on the other 25% ("dev-test"), in both serving modes: with query texts (as a
LlamaIndex retriever passes them) and embeddings only (no ``query_str``). "dev doc-disjoint" are the
dev-test claims none of whose relevant documents is relevant to any dev-train claim: the unseen
documents of issue 17. The SciFact test claims are never read. Embeddings come from
``bench_quality``'s cache (the same files). ``--variants gate`` also scores per-query fallbacks
(the measurements of ``benchmarks/README.md``, "Unseen documents"); ``--variants head`` serves the
trained model with keyword heads of 10 to 50 candidates (``keyword_depth``); ``--variants fusion`` re-does the
keyword fusion offline (rerank depth 50/100/200, max / z-score / min-max / reciprocal-rank fusion,
BM25 k1/b 0.9/0.4 and 1.2/0.75), weights from the library's training or an inner 3-fold
cross-validation of the dev-train claims; ``--variants far-weight`` re-does it with the library's
weight near training queries and a larger one far from them (the rule behind the opt-in
``TrainOptions.far_keyword_weight``), on three features of "near"; ``--variants term-weights``
re-scores with BM25 term contributions times multipliers learned from the dev-train claims.
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


def rank_ids(view, vectors: np.ndarray, model, texts: list[str] | None, k: int = 10,
             keyword_depth: int | None = None) -> list[list[str]]:
    """The serving ranking (``deep_memory.ranking.rank``) of raw query vectors (``keyword_depth``:
    the re-scored head, as ``DeepMemoryVectorStore(keyword_depth=...)`` serves it)."""
    from llama_index_deepmemory.deep_memory.ranking import rank

    return rank(view, view.prepare_queries(vectors), model, k, texts=texts, keyword_depth=keyword_depth)[1]


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
    if "head" in variants:
        out.update(head_variants(view, split, model, plain_keyword_model(dim, lexical, w_plain)))
    if "fusion" in variants:
        out.update(fusion_variants(view, split, options, result, scores))
    if "far-weight" in variants:
        out.update(far_weight_variants(view, split, result, scores))
    if "term-weights" in variants:
        out.update(term_weight_variants(view, split, result, scores, w_plain))
    return out


# ---------------------------------------------------------------------------------------------
# --variants head: the served ranking with a smaller keyword head (``keyword_depth``: the top D
# candidates re-scored with BM25 instead of the model's 50), the trained model as trained (its
# weight chosen at depth 50) and the untrained hybrid; nDCG@10 and recall@10 on dev-test.

HEAD_DEPTHS = (10, 15, 20, 30, 50)


def head_variants(view, split: DevSplit, model, hybrid) -> dict[str, tuple]:
    """The ``--variants head`` rows: per keyword depth, (all, doc-disjoint) nDCG@10 and recall@10
    of the trained model (when training kept one) and of the untrained hybrid, with query texts."""
    test, rel = split.test, split.test.relevance
    out: dict[str, tuple] = {}
    for name, ranker in (("ours", model), ("untrained hybrid", hybrid)):
        if ranker is None:
            continue
        for depth in HEAD_DEPTHS:
            ranked = rank_ids(view, split.test_vectors, ranker, test.query_texts, keyword_depth=depth)
            every, disjoint = score_ranked(ranked, rel), score_ranked(ranked, rel, split.disjoint)
            out[f"  head {depth}: {name}, nDCG@10"] = (every["ndcg@10"], disjoint["ndcg@10"])
            out[f"  head {depth}: {name}, recall@10"] = (every["recall@10"], disjoint["recall@10"])
    return out


# ---------------------------------------------------------------------------------------------
# --variants fusion: offline keyword-fusion alternatives (rerank depth, score normalisation, BM25
# k1/b). The trained model ranks without keywords to FUSION_MAX_DEPTH; the fusion is re-done here
# in numpy. Every choice (weight, and the "best family" row) is made by an inner 3-fold
# cross-validation on the dev-train claims only (never on dev-test), or re-uses the weight the
# library's own training chose ("library w").

FUSION_DEPTHS = (50, 100, 200)
FUSION_MAX_DEPTH = max(FUSION_DEPTHS)
FUSION_BM25 = ((0.9, 0.4), (1.2, 0.75))  # today's (k1, b) and Lucene's defaults
FUSION_WEIGHTS = {
    "max": (0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0),  # today: score + w * bm25 / max(bm25); the library grid
    "z": (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0),  # z(score) + w * z(bm25) over the candidates
    "minmax": (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0),  # mm(score) + w * mm(bm25)
    "rrf": (0.05, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0),  # 1/(60 + rank) + w/(60 + bm25 rank), bm25 > 0 only
}
FUSION_INNER_FOLDS = 3
FUSION_COS_THRESHOLDS = (0.4, 0.5, 0.6, 0.7)  # per-query weight: w_near if raw cosine to a training query >= t
# fixed (method, depth, (k1, b), t, w_near, w_far): the medians of the inner-CV choices of splits 0-2 x train
# seeds 0-2 (dev-train only), to be checked on other splits (3,4,5); w_near == w_far: one weight for all queries
FUSION_FIXED = (
    ("max", 50, (0.9, 0.4), 0.6, 0.2, 0.2),
    ("max", 50, (0.9, 0.4), 0.6, 0.1, 0.2),
    ("z", 200, (0.9, 0.4), 0.6, 1.0, 1.0),
    ("z", 50, (0.9, 0.4), 0.7, 0.3, 1.0),
    ("z", 200, (0.9, 0.4), 0.6, 0.3, 1.0),
)
_fusion_indexes: dict[tuple[float, float], object] = {}


@dataclass
class FusionCandidates:
    """Per query: the model's top FUSION_MAX_DEPTH (no keywords) ids and scores, and the BM25
    score of each candidate under each (k1, b); ``active`` False where the model is not served."""

    ids: list[list[str]]
    scores: np.ndarray  # (m, D)
    bm25: dict[tuple[float, float], np.ndarray]  # (k1, b) -> (m, D)
    active: np.ndarray  # (m,) bool


def fusion_indexes(view) -> dict[tuple[float, float], object]:
    """One LexicalIndex of the stored texts per (k1, b) of FUSION_BM25 (built once)."""
    from llama_index_deepmemory.deep_memory.lexical import LexicalIndex

    if not _fusion_indexes:
        text_of: dict[str, str] = {}
        for batch_ids, batch_texts in view.iter_texts():
            text_of.update(zip(batch_ids, batch_texts))
        for k1, b in FUSION_BM25:
            _fusion_indexes[(k1, b)] = LexicalIndex(list(text_of), list(text_of.values()), k1=k1, b=b)
    return _fusion_indexes


def fusion_candidates(view, vectors: np.ndarray, model, texts: list[str]) -> FusionCandidates:
    """``model`` (None: plain) ranking ``vectors`` without keyword re-scoring, FUSION_MAX_DEPTH deep."""
    from llama_index_deepmemory.deep_memory.ranking import rank

    dense = None
    if model is not None:
        dense = model.replace(lexical_weight=0.0)  # lexical weight 0 = no re-scoring (rerank_depth 0)
        if getattr(dense, "fallback", None) is not None:
            raise ValueError("--variants fusion measures models without a gate (gate_threshold=0)")
    scores, ids = rank(view, view.prepare_queries(vectors), dense, FUSION_MAX_DEPTH, texts=None)
    if any(len(row) < FUSION_MAX_DEPTH for row in ids):
        raise ValueError(f"a query has fewer than {FUSION_MAX_DEPTH} candidates")
    bm25 = {}
    for key, index in fusion_indexes(view).items():
        bm25[key] = np.stack([index.scores(t, row) for t, row in zip(texts, ids)]).astype(np.float64)
    active = np.full(len(ids), model is not None)
    return FusionCandidates([list(r) for r in ids], np.stack(scores).astype(np.float64), bm25, active)


def _zscore(x: np.ndarray) -> np.ndarray:
    std = x.std(axis=1, keepdims=True)
    return np.where(std > 0, (x - x.mean(axis=1, keepdims=True)) / np.where(std > 0, std, 1.0), 0.0)


def _minmax(x: np.ndarray) -> np.ndarray:
    lo, hi = x.min(axis=1, keepdims=True), x.max(axis=1, keepdims=True)
    return np.where(hi > lo, (x - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0)


def fused_ranking(
    c: FusionCandidates, method: str, depth: int, bm25_key, weight: float | np.ndarray, k: int = 10
) -> list[list[str]]:
    """Top ``k`` ids per query after fusing the top ``depth`` candidates (inactive rows: unchanged);
    ``weight`` one number or one per query."""
    s, b = c.scores[:, :depth], c.bm25[bm25_key][:, :depth]
    if np.ndim(weight):  # one weight per query
        weight = np.asarray(weight, dtype=np.float64).reshape(-1, 1)
    if method == "max":
        best = b.max(axis=1, keepdims=True)
        fused = s + weight * np.where(best > 0, b / np.where(best > 0, best, 1.0), 0.0)
    elif method == "z":
        fused = _zscore(s) + weight * _zscore(b)
    elif method == "minmax":
        fused = _minmax(s) + weight * _minmax(b)
    elif method == "rrf":
        dense_rank = np.arange(1, depth + 1, dtype=np.float64)[None, :]
        order = np.argsort(-b, axis=1, kind="stable")
        kw_rank = np.empty_like(b)
        np.put_along_axis(kw_rank, order, np.arange(1, depth + 1, dtype=np.float64)[None, :].repeat(len(b), 0), axis=1)
        fused = 1.0 / (60.0 + dense_rank) + weight * np.where(b > 0, 1.0 / (60.0 + kw_rank), 0.0)
    else:
        raise ValueError(method)
    top = np.argsort(-fused, axis=1, kind="stable")[:, :k]
    return [
        [c.ids[i][j] for j in top[i]] if c.active[i] else c.ids[i][:k] for i in range(len(c.ids))
    ]


def fusion_families() -> list[tuple[str, int, tuple[float, float]]]:
    return [(m, d, kb) for m in FUSION_WEIGHTS for d in FUSION_DEPTHS for kb in FUSION_BM25]


def _family_name(method: str, depth: int, bm25_key) -> str:
    return f"{method}, depth {depth}, k1/b {bm25_key[0]}/{bm25_key[1]}"


def inner_fusion_choice(view, split: DevSplit, options: dict) -> tuple[dict, tuple, dict]:
    """Per fusion family, the weight with the best pooled nDCG@10 of an inner 3-fold
    cross-validation of the dev-train claims (each fold's model trained like the outer one on
    the other folds, single validation split like the outer 607-claim training), and the best
    (family, weight) overall. Returns ({family: (w, inner nDCG)}, best, info)."""
    from llama_index_deepmemory.deep_memory.training import TrainOptions, train_model
    from llama_index_deepmemory.metrics import ndcg_at_k

    train = split.train
    order = np.random.default_rng(2000 + split.seed).permutation(len(train.query_ids))
    folds = np.array_split(order, FUSION_INNER_FOLDS)
    inner_options = {"validation_folds": 1, **options}
    per_family: dict[tuple, list[np.ndarray]] = {}
    cosines: list[np.ndarray] = []
    notes = []
    for f, val_idx in enumerate(folds):
        fit_idx = np.sort(np.concatenate([g for j, g in enumerate(folds) if j != f]))
        val_idx = np.sort(val_idx)
        result = train_model(
            view, split.train_vectors[fit_idx], [train.relevance[i] for i in fit_idx],
            options=TrainOptions.from_kwargs(inner_options), query_texts=[train.query_texts[i] for i in fit_idx],
        )
        model = result.model if result.improved else None
        notes.append(f"{'on' if model else 'OFF'} kw {result.info['lexical_weight']}")
        cands = fusion_candidates(view, split.train_vectors[val_idx], model, [train.query_texts[i] for i in val_idx])
        rel = [train.relevance[i] for i in val_idx]
        cosines.append(max_key_cosine(split.train_vectors[val_idx], split.train_vectors[fit_idx]))
        for family in fusion_families():
            for w in (0.0,) + FUSION_WEIGHTS[family[0]]:
                ranked = fused_ranking(cands, *family, w)
                per_family.setdefault(family + (w,), []).append(np.asarray(ndcg_at_k(ranked, rel, 10, per_query=True)))
    pooled = {key: float(np.concatenate(parts).mean()) for key, parts in per_family.items()}
    choice = {}
    for family in fusion_families():
        w = max(FUSION_WEIGHTS[family[0]], key=lambda w: pooled[family + (w,)])  # first best on ties
        choice[family] = (w, pooled[family + (w,)])
    best = max(choice, key=lambda fam: choice[fam][1])
    # per-query weight by the raw cosine to the nearest training query: (t, w_near, w_far) per family
    cos = np.concatenate(cosines)
    per_query = {key: np.concatenate(parts) for key, parts in per_family.items()}
    cos_choice = {}
    for family in fusion_families():
        grid = (0.0,) + FUSION_WEIGHTS[family[0]]
        best_key, best_score = None, -1.0
        for t in FUSION_COS_THRESHOLDS:
            near = cos >= t
            for w_near in grid:
                for w_far in grid:
                    score = float(np.where(near, per_query[family + (w_near,)], per_query[family + (w_far,)]).mean())
                    if score > best_score + 1e-12:
                        best_key, best_score = (t, w_near, w_far), score
        cos_choice[family] = best_key + (best_score,)
    return choice, best, {"inner models": ", ".join(notes), "cos": cos_choice}


def fusion_variants(view, split: DevSplit, options: dict, result, scores) -> dict[str, tuple]:
    """The ``--variants fusion`` rows for one (split, train seed): dev-test nDCG@10 (all,
    doc-disjoint) of each fusion, weights from the library's training or the inner CV."""
    model = result.model if result.improved else None
    test = split.test
    cands = fusion_candidates(view, split.test_vectors, model, test.query_texts)
    out: dict[str, tuple] = {}
    lib_w = float(result.info["lexical_weight"])
    for depth in FUSION_DEPTHS:
        for kb in FUSION_BM25:
            ranked = fused_ranking(cands, "max", depth, kb, lib_w) if lib_w > 0 else [r[:10] for r in cands.ids]
            out[f"  fusion library w: max, depth {depth}, k1/b {kb[0]}/{kb[1]}"] = scores(ranked) + (f"w {lib_w}",)
    feature = max_key_cosine(split.test_vectors, split.train_vectors)
    for method, depth, kb, t, w_near, w_far in FUSION_FIXED:
        weights = np.where(feature >= t, w_near, w_far)
        label = f"w {w_far}" if w_near == w_far else f"t {t}, w near {w_near}, far {w_far}"
        out[f"  fusion fixed: {_family_name(method, depth, kb)}, {label}"] = scores(
            fused_ranking(cands, method, depth, kb, weights))
    start = time.perf_counter()
    choice, best, info = inner_fusion_choice(view, split, options)
    seconds = time.perf_counter() - start
    for family in fusion_families():
        w, inner = choice[family]
        out[f"  fusion inner-CV w: {_family_name(*family)}"] = scores(fused_ranking(cands, *family, w)) + (
            f"w {w}, inner {inner:.3f}",)
    for method in FUSION_WEIGHTS:  # the method fixed, its depth, k1/b and weight by the inner CV
        family = max((fam for fam in fusion_families() if fam[0] == method), key=lambda fam: choice[fam][1])
        w, inner = choice[family]
        out[f"  fusion inner-CV: {method}, depth/k1/b/w by inner CV"] = scores(fused_ranking(cands, *family, w)) + (
            f"{_family_name(*family)}, w {w}, inner {inner:.3f}",)
    w, inner = choice[best]
    out["  fusion inner-CV best family and w"] = scores(fused_ranking(cands, *best, w)) + (
        f"{_family_name(*best)}, w {w}, inner {inner:.3f}; {info['inner models']}; {seconds:.0f}s",)
    cos_choice = info["cos"]
    for family in fusion_families():
        if family[0] == "rrf":
            continue
        t, w_near, w_far, inner = cos_choice[family]
        weights = np.where(feature >= t, w_near, w_far)
        out[f"  fusion cos-split: {_family_name(*family)}"] = scores(fused_ranking(cands, *family, weights)) + (
            f"t {t}, w near {w_near}, far {w_far}, inner {inner:.3f}, far {np.mean(feature < t):.2f}",)
    for method in ("max", "z"):
        family = max((fam for fam in fusion_families() if fam[0] == method), key=lambda fam: cos_choice[fam][3])
        t, w_near, w_far, inner = cos_choice[family]
        weights = np.where(feature >= t, w_near, w_far)
        out[f"  fusion cos-split: {method}, depth/k1/b/t/weights by inner CV"] = scores(
            fused_ranking(cands, *family, weights)) + (
            f"{_family_name(*family)}, t {t}, w near {w_near}, far {w_far}, inner {inner:.3f}",)
    default = (("max", 50, FUSION_BM25[0]))
    out["  fusion inner-CV: today's family (max, 50, 0.9/0.4)"] = out[
        f"  fusion inner-CV w: {_family_name(*default)}"]
    return out


# per-query keyword weight from the library's own weight w (no inner CV): w where the raw cosine to
# the nearest training query is >= t, the far weight elsewhere ("max(w, 0.2)": at least 0.2)
FAR_THRESHOLDS = (0.5, 0.6, 0.7)
FAR_MEMORY_THRESHOLDS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75)  # on the best memory node's score instead
FAR_ADAPTED_THRESHOLDS = (0.6, 0.7, 0.75, 0.8, 0.85, 0.9)  # on the cosine of adapted query and training queries
FAR_RULES = {
    "max(w, 0.2)": lambda w: max(w, 0.2),
    "max(w, 0.3)": lambda w: max(w, 0.3),
    "2w": lambda w: 2 * w,
    "3w": lambda w: 3 * w,
}


def far_weight_variants(view, split: DevSplit, result, scores) -> dict[str, tuple]:
    """The ``--variants far-weight`` rows: today's fusion (max, top 50) with the library's weight
    near training queries and a larger one far from them."""
    model = result.model if result.improved else None
    if getattr(model, "far_lexical_weight", 0.0) > 0:
        raise ValueError("--variants far-weight measures models trained without it (far_keyword_weight=0)")
    lib_w = float(result.info["lexical_weight"])
    cands = fusion_candidates(view, split.test_vectors, model, split.test.query_texts)
    feature = max_key_cosine(split.test_vectors, split.train_vectors)
    out: dict[str, tuple] = {}
    base = fused_ranking(cands, "max", 50, FUSION_BM25[0], lib_w) if lib_w > 0 else [r[:10] for r in cands.ids]
    out["  far-weight: library w (check: = ours)"] = scores(base) + (f"w {lib_w}",)
    for t in FAR_THRESHOLDS:
        for name, rule in FAR_RULES.items():
            weights = np.where(feature >= t, lib_w, rule(lib_w)) if lib_w > 0 else np.zeros(len(feature))
            ranked = fused_ranking(cands, "max", 50, FUSION_BM25[0], weights) if lib_w > 0 else base
            out[f"  far-weight: t {t}, far {name}"] = scores(ranked) + (f"far {np.mean(feature < t):.2f}",)
    if model is not None and len(getattr(model, "memory_ids", ())) and lib_w > 0:
        # the same rule on a feature the query path has for free: the best memory score
        best_memory = model.apply(view.prepare_queries(split.test_vectors))[2].max(axis=1)
        for t in FAR_MEMORY_THRESHOLDS:
            weights = np.where(best_memory >= t, lib_w, max(lib_w, 0.3))
            ranked = fused_ranking(cands, "max", 50, FUSION_BM25[0], weights)
            out[f"  far-weight: memory score t {t}, far max(w, 0.3)"] = scores(ranked) + (
                f"far {np.mean(best_memory < t):.2f}",)
        # ... and on the adapted query's cosine to the adapted training queries (the query keys' space)
        adapted = max_key_cosine(model.transform_queries(view.prepare_queries(split.test_vectors)),
                                 model.transform_queries(view.prepare_queries(split.train_vectors)))
        for t in FAR_ADAPTED_THRESHOLDS:
            weights = np.where(adapted >= t, lib_w, max(lib_w, 0.3))
            ranked = fused_ranking(cands, "max", 50, FUSION_BM25[0], weights)
            out[f"  far-weight: adapted cosine t {t}, far max(w, 0.3)"] = scores(ranked) + (
                f"far {np.mean(adapted < t):.2f}",)
    return out


# learned term weights for the keyword part (issue 17): each query term's BM25 contribution times
# m_t = smoothed P(a relevant document contains t | a training query has t) / the same over all terms;
# terms no training query has keep 1. alpha: pseudo-count of the smoothing (toward the overall rate)
TERM_ALPHAS = (2.0, 10.0, 50.0)


def term_multipliers(index, split: DevSplit, alpha: float) -> np.ndarray:
    """(vocabulary,) multipliers learned from the dev-train claims and their relevant documents."""
    spans, doc_terms, _ = index.postings
    row_of = {node: r for r, node in enumerate(index.ids)}
    n_terms = int(doc_terms.max()) + 1 if doc_terms.size else 0  # the vocabulary is the indexed texts' words
    asked = np.zeros(n_terms)
    found = np.zeros(n_terms)
    for text, rel in zip(split.train.query_texts, split.train.relevance):
        terms = np.unique(index.query_term_ids(text))
        if not terms.size:
            continue
        in_relevant = set()
        for node, _ in rel:
            r = row_of.get(node)
            if r is not None:
                in_relevant.update(doc_terms[spans[r, 0]:spans[r, 1]].tolist())
        asked[terms] += 1
        found[terms] += np.isin(terms, list(in_relevant))
    rate = found.sum() / max(asked.sum(), 1)
    return np.where(asked > 0, (found + alpha * rate) / (asked + alpha) / rate, 1.0)


def weighted_bm25(index, text: str, ids: list[str], multipliers: np.ndarray) -> np.ndarray:
    """BM25 of ``text`` for ``ids`` with each term's contribution times its multiplier."""
    spans, doc_terms, doc_weights = index.postings
    terms = set(np.unique(index.query_term_ids(text)).tolist())
    out = np.zeros(len(ids))
    for j, r in enumerate(index.rows_of(ids)):
        if r < 0:
            continue
        t, w = doc_terms[spans[r, 0]:spans[r, 1]], doc_weights[spans[r, 0]:spans[r, 1]]
        keep = np.fromiter((x in terms for x in t.tolist()), bool, count=len(t))
        out[j] = float((w[keep] * multipliers[t[keep]]).sum())
    return out


def term_weight_variants(view, split: DevSplit, result, scores, w_plain: float) -> dict[str, tuple]:
    """The ``--variants term-weights`` rows: today's fusion (max, top 50, the library's weight; the
    untrained hybrid with its own) with BM25 from learned term multipliers."""
    model = result.model if result.improved else None
    lib_w = float(result.info["lexical_weight"])
    index = fusion_indexes(view)[FUSION_BM25[0]]
    out: dict[str, tuple] = {}
    for name, ranker, weight in (("ours", model, lib_w), ("hybrid", None, w_plain)):
        if weight <= 0:
            continue
        cands = fusion_candidates(view, split.test_vectors, ranker, split.test.query_texts)
        cands.active[:] = True
        out[f"  term-weights: {name}, plain BM25 (check)"] = scores(fused_ranking(cands, "max", 50, FUSION_BM25[0], weight))
        for alpha in TERM_ALPHAS:
            m = term_multipliers(index, split, alpha)
            learned = np.stack([weighted_bm25(index, t, ids[:50], m) for t, ids in zip(split.test.query_texts, cands.ids)])
            custom = FusionCandidates(cands.ids, cands.scores, {FUSION_BM25[0]: learned}, cands.active)
            out[f"  term-weights: {name}, alpha {alpha}"] = scores(fused_ranking(custom, "max", 50, FUSION_BM25[0], weight))
    return out


def fusion_latency(view, split: DevSplit, repeats: int = 5) -> str:
    """Median per-query time of the serving ranking (``ranking.rank``, one query with its text, k 10)
    of the trained model at keyword re-scoring depth 50 / 100 / 200 (``models.LEXICAL_DEPTH``
    patched in this process only), interleaved; plus the same model without keywords."""
    from llama_index_deepmemory.deep_memory import models as models_module
    from llama_index_deepmemory.deep_memory.ranking import rank
    from llama_index_deepmemory.deep_memory.training import TrainOptions, train_model

    result = train_model(
        view, split.train_vectors, split.train.relevance, options=TrainOptions(), query_texts=split.train.query_texts
    )
    model = result.model
    dense = model.replace(lexical_weight=0.0)
    prepared = view.prepare_queries(split.test_vectors)
    saved = models_module.LEXICAL_DEPTH
    times: dict[str, list[float]] = {}
    try:
        for _ in range(repeats):
            for i, text in enumerate(split.test.query_texts):
                for name, ranker, depth in (("no keywords", dense, saved), ("depth 50", model, 50),
                                            ("depth 100", model, 100), ("depth 200", model, 200)):
                    models_module.LEXICAL_DEPTH = depth
                    start = time.perf_counter()
                    rank(view, prepared[i : i + 1], ranker, 10, texts=[text])
                    times.setdefault(name, []).append(time.perf_counter() - start)
    finally:
        models_module.LEXICAL_DEPTH = saved
    return "rank() per query, median: " + ", ".join(f"{n} {1e6 * np.median(t):.0f} us" for n, t in times.items())


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
    store.deep_memory.add_model("gated", gated)
    store.deep_memory.add_model("ungated", plain)
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
    parser.add_argument("--variants", default="", help="extra measurements: head, gate, latency, fusion, fusion-latency, far-weight, term-weights")
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
    if "fusion-latency" in variants:
        print(fusion_latency(view, dev_splits(data.train, train_vectors, [0])[0]))
        return 0
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
