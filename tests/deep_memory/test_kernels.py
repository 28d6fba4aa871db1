"""Compiled (numba) kernels against the numpy paths they replace.

The numpy paths are the reference: ``transform_queries`` + ``overrides`` for the adapter kernel,
a stable sort of the merge pool and ``KeywordPlan.rescore`` + a stable sort of its head for the
ranking kernel ``rank_row``. The ``numpy_only`` fixture applies models on numpy, as an install
without numba would.
"""

from __future__ import annotations

import numpy as np
import pytest
from llama_index.core.schema import TextNode
from llama_index.core.vector_stores.types import VectorStoreQuery

from llama_index_deepmemory.deep_memory import base, kernels
from llama_index_deepmemory.deep_memory.lexical import LexicalIndex
from llama_index_deepmemory.deep_memory.models import AdapterMemoryModel, int8_rows
from llama_index_deepmemory.store import DeepMemoryVectorStore

WORDS = [f"w{i}" for i in range(40)]


@pytest.fixture
def numpy_only():
    """Make ``compiled_kernels()`` answer None (as without numba) for one test."""
    saved = list(base._kernels)
    base._kernels[:] = [None]
    yield
    base._kernels[:] = saved


def test_kernels_are_available() -> None:
    """numba is a dependency: the compiled path is the one users run."""
    assert base.compiled_kernels() is not None


def test_int8_rows_are_exact_idempotent_and_close() -> None:
    rng = np.random.default_rng(0)
    rows = np.concatenate([rng.normal(size=(50, 32)) * rng.uniform(1e-3, 50, size=(50, 1)), np.zeros((1, 32))])
    codes, scales = int8_rows(rows)
    assert codes.dtype == np.int8 and scales.dtype == np.float32 and codes.shape == rows.shape
    assert np.all(np.log2(scales) == np.round(np.log2(scales)))  # powers of two: codes * scales is exact
    approx = codes * scales[:, None]
    peak = np.abs(rows).max(axis=1)
    assert np.all(np.abs(approx - rows).max(axis=1) <= peak / 128 + 1e-30)
    np.testing.assert_array_equal(approx[-1], 0.0)
    again_codes, again_scales = int8_rows(approx)
    np.testing.assert_array_equal(again_codes, codes)
    np.testing.assert_array_equal(again_scales, scales)


def _model(rng: np.random.Generator, d: int, metric: str, threshold: float, ids: list[str], lexical=None):
    n_mem, n_keys = 30, 25
    return AdapterMemoryModel(
        dim=d,
        metric=metric,
        weight=np.eye(d) + 0.1 * rng.normal(size=(d, d)),
        bias=0.05 * rng.normal(size=d),
        memory_ids=ids[:n_mem],
        memory_vectors=rng.normal(size=(n_mem, d)),
        key_vectors=rng.normal(size=(n_keys, d)),
        link_key=np.concatenate([np.arange(n_keys), rng.integers(0, n_keys, 10)]),
        link_node=rng.integers(0, n_mem, n_keys + 10),
        link_weight=rng.uniform(0.2, 1.0, n_keys + 10),
        key_weight=0.7,
        key_threshold=threshold,
        lexical=lexical,
        lexical_weight=0.3 if lexical is not None else 0.0,
    )


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
@pytest.mark.parametrize("threshold", [-0.2, 0.3, 0.95])  # most keys fire / some / (almost) none
def test_apply_kernel_matches_transform_and_overrides(metric: str, threshold: float) -> None:
    rng = np.random.default_rng(3)
    d = 24
    model = _model(rng, d, metric, threshold, [f"n{i}" for i in range(30)])
    for _ in range(20):
        q = rng.normal(size=(1, d)).astype(np.float32)
        if metric == "cosine":
            q /= np.linalg.norm(q)
        transformed, ids, scores = model.apply(q)
        reference = model.transform_queries(q)
        ref_ids, ref_scores = model.overrides(reference)
        assert ids == ref_ids
        np.testing.assert_allclose(transformed, reference, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(scores, ref_scores, rtol=1e-4, atol=1e-5)


def _keyword_store(rng: np.random.Generator, n: int, d: int, metric: str):
    vectors = rng.normal(size=(n, d)).astype(np.float32)
    ids = [f"n{i}" for i in range(n)]
    texts = [" ".join(rng.choice(WORDS, size=12)) for _ in range(n)]
    store = DeepMemoryVectorStore(metric=metric)
    store.add([TextNode(id_=i, text=t, embedding=v.tolist()) for i, t, v in zip(ids, texts, vectors)])
    model = _model(rng, d, metric, 0.3, ids, LexicalIndex(ids, texts))
    store.deep_memory.add_model("m", model, activate=True)  # a hand-made model, as benchmarks/bench_store.py adds one
    return store, vectors


def _run(store: DeepMemoryVectorStore, queries: np.ndarray, texts: list[str | None], k: int):
    out = []
    for q, text in zip(queries, texts):
        result = store.query(VectorStoreQuery(query_embedding=q.tolist(), query_str=text, similarity_top_k=k),
                             deep_memory=True)
        out.append((result.ids, np.array(result.similarities)))
    return out


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_store_queries_rank_alike_with_and_without_kernels(metric: str) -> None:
    """The ranking with its compiled merge and keyword kernels ranks as its numpy path, query by
    query, including queries near memory nodes (overrides enter the top k) and nodes added since
    training."""
    rng = np.random.default_rng(5)
    store, vectors = _keyword_store(rng, 300, 16, metric)
    near = vectors[rng.integers(0, 30, 20)] + 0.05 * rng.normal(size=(20, 16))
    queries = np.concatenate([near, rng.normal(size=(20, 16))]).astype(np.float32)
    # no text, plain, upper case with punctuation, non-ASCII
    variants = [lambda w: None, " ".join, lambda w: ", ".join(w).upper() + "!", lambda w: " ".join(w) + " β–cells"]
    texts = [variants[i % 4](list(rng.choice(WORDS, size=3))) for i in range(len(queries))]
    for k in (1, 10, 60):
        compiled = _run(store, queries, texts, k)
        saved = list(base._kernels)
        base._kernels[:] = [None]
        try:
            reference = _run(store, queries, texts, k)
        finally:
            base._kernels[:] = saved
        for (ids, sims), (ref_ids, ref_sims) in zip(compiled, reference):
            assert ids == ref_ids
            np.testing.assert_allclose(sims, ref_sims, rtol=1e-4, atol=1e-5)
    # a node added after training is not in the keyword index: scored from its text
    store.add([TextNode(id_="late", text="w1 w2 w3", embedding=queries[0].tolist())])
    for _ in range(2):
        ids, _ = _run(store, queries[:1], ["w1 w2"], 10)[0]
    assert "late" in ids


def test_memory_nodes_crowding_the_plain_hits_are_searched_past() -> None:
    """The 90 nodes nearest a query are memory nodes the model scores far away, so plain hits hold
    the top 50 only 264 deep: the one-call path hands its search over to deeper ones (never the
    same depth twice), and the store ranks as brute force does (BM25 fusion of the top 50)."""
    rng = np.random.default_rng(12)
    n, d = 400, 16
    vectors = rng.normal(size=(n, d)).astype(np.float32)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"n{i}" for i in range(n)]
    texts = [" ".join(rng.choice(WORDS, size=8)) for _ in ids]
    q = rng.normal(size=d).astype(np.float32)
    q /= np.linalg.norm(q)
    crowd = np.argsort(-(unit @ q), kind="stable")[:90]
    model = AdapterMemoryModel(dim=d, metric="cosine", memory_ids=[ids[i] for i in crowd], memory_vectors=-unit[crowd],
                               lexical=LexicalIndex(ids, texts), lexical_weight=0.3)
    store = DeepMemoryVectorStore(metric="cosine")
    store.add([TextNode(id_=i, text=t, embedding=v.tolist()) for i, t, v in zip(ids, texts, vectors)])
    store.deep_memory.add_model("m", model, activate=True)
    backend, searched = store._backend, []
    search = backend._search
    backend._search = lambda queries, k, candidates: searched.append(k) or search(queries, k, candidates)
    scores = unit @ q
    scores[crowd] = -unit[crowd] @ q  # the model's memory scores
    top = np.argsort(-scores, kind="stable")[:50]
    keyword = model.lexical.scores("w1 w2 w3", [ids[j] for j in top])
    fused = scores[top].astype(np.float32) + np.float32(0.3 / keyword.max()) * keyword
    expected = [ids[top[j]] for j in np.argsort(-fused, kind="stable")[:5]]
    for _ in range(3):  # the store keeps its keyword rows from the second query on
        assert _run(store, q[None, :], ["w1 w2 w3"], 5)[0][0] == expected
    # from the second query on the first search is the one-call path's; each miss searches twice as deep
    assert searched == [66, 132, 264] * 3 and backend._slot_rows[3] is not None
    """Without numba the store answers from the numpy path, ranked as brute force ranks."""
    rng = np.random.default_rng(8)
    store, vectors = _keyword_store(rng, 120, 8, "cosine")
    model = store.deep_memory.active_model()
    q = rng.normal(size=(1, 8)).astype(np.float32)
    q /= np.linalg.norm(q)
    ids, _ = _run(store, q, [None], 5)[0]
    qt = model.transform_queries(q)
    scores = qt[0] @ (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).T
    over_ids, over = model.overrides(qt)
    for j, node in enumerate(over_ids):
        scores[int(node[1:])] = over[0, j]
    assert ids == [f"n{i}" for i in np.argsort(-scores, kind="stable")[:5]]


def _rank_row(plain, keep, over, over_keep, depth, k=None, asked=None):
    """``rank_row`` without keywords: the merge alone."""
    none = np.zeros(0, np.int64)
    return kernels.rank_row(plain, keep, none, over, over_keep, none, np.zeros(0, np.float32),
                            np.zeros((1, 2), np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32),
                            np.zeros(0, np.int32), 0.0, 0, depth, depth if k is None else k,
                            len(plain) + 1 if asked is None else asked)


def test_merge_kernel_keeps_ties_in_the_reference_order() -> None:
    """Integer scores make ties everywhere: kept plain hits first, then kept override nodes in
    their order, as a stable sort of that pool ranks them; depth above the insertion limit too."""
    rng = np.random.default_rng(4)
    for trial in range(400):
        depth = int(rng.integers(1, 8)) if trial % 4 else int(rng.integers(60, 90))
        n_plain, n_over = int(rng.integers(0, depth + 16)), int(rng.integers(0, 2 * depth + 4))
        plain = -np.sort(-rng.integers(0, 5, size=n_plain)).astype(np.float32)
        keep = rng.random(n_plain) < 0.7
        over = rng.integers(0, 6, size=n_over).astype(np.float32)
        over_keep = rng.random(n_over) < 0.8
        out_scores, out_sources, complete = _rank_row(plain, keep, over, over_keep, depth)
        pool = np.concatenate([plain[keep], over[over_keep]])
        sources = np.concatenate([np.flatnonzero(keep), -1 - np.flatnonzero(over_keep)])
        order = np.argsort(-pool, kind="stable")[:depth]
        assert complete and out_sources.tolist() == sources[order].tolist()
        np.testing.assert_array_equal(out_scores, pool[order])


def test_ranking_kernel_equals_merge_rescore_and_stable_sorts_in_numpy() -> None:
    """``rank_row`` against the numpy steps: merge (a plain hit dropped when it is an override
    node) to the top max(k, head), ``KeywordPlan.rescore`` (unindexed candidates scored from
    their texts) + a stable sort of its first ``head``, the rest after them, cut to k (k above
    head too); with ties, head above the insertion limit, plain scores longer than the hits;
    incomplete exactly when the plain hits may miss a merged top candidate."""
    rng = np.random.default_rng(11)
    ids = [f"n{i}" for i in range(300)]
    plan = base.KeywordPlan(LexicalIndex(ids, [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 12)))) for _ in ids]), 0.3)
    spans, doc_terms, doc_weights = plan.index.postings
    n_unindexed = n_deeper = 0
    for trial in range(400):
        head = int(rng.integers(1, 12)) if trial % 4 else int(rng.integers(60, 90))
        k = int(rng.integers(1, head + 3)) if trial % 3 else int(rng.integers(1, 2 * head + 20))
        depth = max(k, head)
        rows = rng.permutation(len(ids))
        over_rows = rows[: int(rng.integers(0, 40))].copy()
        plain_rows = rows[rng.integers(0, 20): ][: int(rng.integers(0, depth + 16))].copy()  # overlaps the overrides
        if trial % 5 == 0 and len(plain_rows):
            plain_rows[rng.integers(0, len(plain_rows))] = -1  # a node added after the index was built
        if trial % 7 == 0 and len(over_rows):
            over_rows[rng.integers(0, len(over_rows))] = -1  # a memory node rewritten since
        plain = -np.sort(-rng.integers(0, 5, size=len(plain_rows))).astype(np.float32) / 4
        over = rng.integers(0, 6, size=len(over_rows)).astype(np.float32) / 4
        usable = rng.random(len(over_rows)) < 0.8
        flags = np.zeros(len(ids), bool)
        flags[over_rows[over_rows >= 0]] = True
        keep = (plain_rows < 0) | ~flags[np.maximum(plain_rows, 0)]
        query = " ".join(rng.choice(WORDS, size=int(rng.integers(0, 5))))
        all_rows = np.concatenate([plain_rows, over_rows]).astype(np.int64)
        texts = [" ".join(rng.choice(WORDS, size=3)) if r < 0 else None for r in all_rows]
        given = plan.index.text_scores(query, all_rows, texts)
        longer = np.concatenate([plain, np.full(3, -9.0, np.float32)])  # the kernel reads len(keep) scores
        asked = len(plain_rows) + int(rng.integers(0, 2))  # fewer hits than asked: every allowed node found
        out_scores, out_sources, complete = kernels.rank_row(
            longer, keep, plain_rows, over, usable, over_rows, given, spans, doc_terms, doc_weights,
            plan.index.query_term_ids(query), 0.3, head, depth, k, asked)
        reaching = int((over[usable] >= plain[-1]).sum()) if len(plain) else 0
        if len(plain_rows) >= asked and keep.sum() < depth and (not len(plain) or keep.sum() + reaching < depth):
            n_deeper += 1  # an unfetched node may belong to the merged top
            assert not complete and len(out_scores) == 0
            continue
        assert complete
        pool = np.concatenate([plain[keep], over[usable]])
        sources = np.concatenate([np.flatnonzero(keep), -1 - np.flatnonzero(usable)])
        top_all = np.argsort(-pool, kind="stable")[:depth]
        top, tail = top_all[:head], top_all[head:]
        at = [s if s >= 0 else len(plain_rows) - 1 - s for s in sources[top]]
        n_unindexed += bool((all_rows[at] < 0).any())
        fused = np.asarray(plan.rescore(query, all_rows[at], pool[top], [texts[j] for j in at]), dtype=np.float32)
        order = np.argsort(-fused, kind="stable")
        expected_sources = np.concatenate([sources[top][order], sources[tail]])[:k]
        assert out_sources.tolist() == expected_sources.tolist()
        np.testing.assert_allclose(out_scores, np.concatenate([fused[order], pool[tail]])[:k], rtol=1e-6)
    assert 10 < n_unindexed < 200 and 10 < n_deeper < 150


def test_row_blocks_score_bit_for_bit_like_one_row_at_a_time() -> None:
    """``_dot_rows`` (four code rows per pass, the memory and key scores of ``apply``) gives the
    very bits of ``_dot_codes`` row by row times the scale, for any row range (tails of 1-3 rows)."""
    rng = np.random.default_rng(15)
    for d in (1, 7, 64, 384):
        codes = rng.integers(-127, 128, size=(11, d)).astype(np.int8)
        scales = (2.0 ** rng.integers(-9, -5, size=11)).astype(np.float32)
        b = rng.standard_normal(d).astype(np.float32)
        for first, stop in ((0, 11), (3, 11), (0, 4), (5, 6), (2, 2)):
            out = np.full(stop - first, np.nan, np.float32)
            kernels._dot_rows(codes, first, stop, b, scales, out)
            expected = [np.float32(kernels._dot_codes(codes[r], b)) * scales[r] for r in range(first, stop)]
            assert out.tobytes() == np.asarray(expected, np.float32).tobytes()


def test_bm25_of_a_row_equals_the_sum_of_its_matching_postings() -> None:
    """``_bm25`` (a forward merge of a row's rising terms with the sorted query terms) sums the
    weights of exactly the postings whose term the query holds, in posting order, for rows of
    every length and queries below, inside and past a row's terms; row -1 and an empty query give 0."""
    rng = np.random.default_rng(16)
    words = [f"w{i}" for i in range(60)]
    index = LexicalIndex([f"n{i}" for i in range(80)],
                         [" ".join(rng.choice(words, size=int(rng.integers(0, 30)))) for _ in range(80)])
    spans, doc_terms, doc_weights = index.postings
    for _ in range(300):
        terms = np.unique(rng.integers(0, doc_terms.max() + 3, size=int(rng.integers(0, 9)))).astype(np.int32)
        row = int(rng.integers(-1, 80))
        b, e = spans[row]
        matched = np.isin(doc_terms[b:e], terms)
        expected = np.float32(sum(doc_weights[b:e][matched].astype(np.float64).tolist()))  # in posting order
        assert kernels._bm25(b, e, doc_terms, doc_weights, terms) == expected


def test_kept_rows_equals_numpy() -> None:
    """``kept_rows``: a hit is kept unless its row is flagged (row -1 reads the last flag, False)."""
    rng = np.random.default_rng(14)
    for _ in range(50):
        flags = np.concatenate([rng.random(30) < 0.3, [False]])
        rows = rng.integers(-1, 30, size=int(rng.integers(0, 40)))
        keep, unindexed = kernels.kept_rows(rows, flags)
        assert keep.tolist() == (~flags[rows]).tolist() and unindexed == bool((rows < 0).any())


def test_stable_top_ranks_as_a_stable_descending_sort() -> None:
    """Ties in input order and NaN last, by insertion (small k) or by sorting (large k)."""
    rng = np.random.default_rng(9)
    for trial in range(300):
        n = int(rng.integers(0, 120))
        scores = rng.integers(0, 6, size=n).astype(np.float32)
        scores[rng.random(n) < 0.1] = np.nan
        slots = rng.permutation(n).astype(np.int64)
        k = int(rng.integers(1, 100))
        out_scores, out_slots = np.empty(k, np.float32), np.empty(k, np.int64)
        count = kernels._stable_top(scores, slots, out_scores, out_slots)
        order = np.argsort(-scores, kind="stable")[:k]
        assert count == len(order)
        assert out_slots[:count].tolist() == slots[order].tolist()
        np.testing.assert_array_equal(out_scores[:count], scores[order])


class _NaNModel(base.DeepMemoryModel):
    def transform_queries(self, queries: np.ndarray) -> np.ndarray:
        return np.full_like(queries, np.nan)


class _OwnApplyModel(base.DeepMemoryModel):
    """Overrides ``apply`` itself, unmarked: the store checks what it returns."""

    def __init__(self, value: float) -> None:
        super().__init__(dim=3, metric="ip")
        self.value = value

    def apply(self, queries: np.ndarray):
        return np.full(np.shape(queries), self.value), ("n1",), [9.0]  # float64, scores 1-D


def test_store_checks_the_results_of_a_subclass_apply() -> None:
    store = DeepMemoryVectorStore(metric="ip")
    store.add([TextNode(id_=f"n{i}", text="w", embedding=[1.0, float(i), 0.5]) for i in range(3)])
    query = VectorStoreQuery(query_embedding=[1.0, 0.0, 0.0], similarity_top_k=2)
    store.deep_memory.add_model("own", _OwnApplyModel(1.0), activate=True)
    result = store.query(query, deep_memory=True)
    assert result.ids == ["n1", "n2"] and result.similarities[0] == 9.0  # scores reshaped, query made float32
    store.deep_memory.add_model("own_nan", _OwnApplyModel(np.nan), activate=True)
    with pytest.raises(ValueError, match="non-finite"):
        store.query(query, deep_memory=True)


def test_non_finite_transformed_queries_are_refused_on_both_paths() -> None:
    """A model whose transformed query is NaN or overflows gets a clear error, compiled or not."""
    store = DeepMemoryVectorStore(metric="ip")
    store.add([TextNode(id_=f"n{i}", text="w", embedding=[1.0, float(i), 0.5]) for i in range(3)])
    store.deep_memory.add_model("nan", _NaNModel(dim=3, metric="ip"), activate=True)
    with pytest.raises(ValueError, match="non-finite"):
        store.query(VectorStoreQuery(query_embedding=[1.0, 0.0, 0.0], similarity_top_k=2), deep_memory=True)
    rng = np.random.default_rng(0)
    model = _model(rng, 3, "ip", 0.3, [f"n{i}" for i in range(30)])
    huge = np.full((1, 3), 3e38, dtype=np.float32)  # finite, but W q overflows float32
    with pytest.raises(ValueError, match="non-finite"):
        model.apply(huge)
    saved = list(base._kernels)
    base._kernels[:] = [None]
    try:
        with pytest.raises(ValueError, match="non-finite"):
            model.apply(huge)
    finally:
        base._kernels[:] = saved


def test_nearest_training_query_kernel_equals_numpy() -> None:
    """``nearest_cosine`` (one query, int8 keys) against float64 numpy over the model's
    ``gate_keys`` (the codes' exact values), zero and scaled key rows included; the model's
    batch path (numpy) agrees with its single-query path (the kernel)."""
    rng = np.random.default_rng(11)
    for trial in range(40):
        d, n = int(rng.integers(2, 70)), int(rng.integers(1, 300))
        keys = rng.normal(size=(n, d)) * rng.uniform(1e-3, 20, size=(n, 1))
        keys[rng.random(n) < 0.05] = 0.0
        model = AdapterMemoryModel(d, gate_threshold=0.5, gate_keys=keys)
        queries = rng.normal(size=(5, d)).astype(np.float32) * np.float32(rng.uniform(0.1, 10))
        exact = np.asarray(model.gate_keys, dtype=np.float64)
        norms = np.linalg.norm(exact, axis=1)
        unit = np.divide(exact, norms[:, None], out=np.zeros_like(exact), where=norms[:, None] > 0)
        expected = (queries @ unit.T).max(axis=1) / np.linalg.norm(queries, axis=1)
        single = [model._nearest_cosines(q[None, :])[0] for q in queries]  # the compiled call
        np.testing.assert_allclose(single, expected, rtol=1e-5, atol=1e-6, err_msg=f"trial {trial}")
        ordered = np.sort(expected)
        enough = float(ordered[1] + ordered[2]) / 2  # asked only whether one reaches it: the answer is unchanged
        assert ordered[2] - ordered[1] > 1e-5, f"trial {trial}: pick other seeds"
        answers = [model._nearest_cosines(q[None, :], enough)[0] >= enough for q in queries]
        assert answers == (expected >= enough).tolist() and 0 < sum(answers) < len(answers)
        np.testing.assert_allclose(model._nearest_cosines(queries), expected, rtol=1e-5, atol=1e-6)
        assert np.abs(model.gate_keys - keys).max() <= np.abs(keys).max() / 64  # 8-bit precision


def test_indexed_row_kernel_is_kept_rows_then_rank_row() -> None:
    """``rank_indexed_row`` (one call for a keyword query whose hits are all indexed) gives what
    ``kept_rows`` then ``rank_row`` give, bit for bit; with an unindexed hit it computes nothing
    and says so."""
    rng = np.random.default_rng(21)
    index = LexicalIndex([f"n{i}" for i in range(200)], [" ".join(rng.choice(WORDS, size=12)) for _ in range(200)])
    for trial in range(200):
        n_plain, n_over = int(rng.integers(1, 80)), int(rng.integers(0, 30))
        plain = np.sort(rng.normal(size=n_plain).astype(np.float32))[::-1].copy()
        rows = rng.integers(0, 200, n_plain).astype(np.int64)
        if trial % 5 == 0:
            rows[rng.integers(0, n_plain)] = -1
        overridden = np.zeros(201, bool)
        overridden[rng.integers(0, 200, 20)] = True
        over, over_keep = rng.normal(size=n_over).astype(np.float32), rng.random(n_over) > 0.2
        over_rows = rng.integers(0, 200, n_over).astype(np.int64)
        terms = index.query_term_ids(" ".join(rng.choice(WORDS, size=3)))
        tail = (over_rows, *index.postings, terms, 0.3, 50, 50, int(rng.integers(1, 60)), n_plain + 1)
        fused = kernels.rank_indexed_row(plain, rows, overridden, over, over_keep, *tail)
        if (rows < 0).any():
            assert not fused[3] and not fused[2]
            continue
        keep, unindexed = kernels.kept_rows(rows, overridden)
        assert not unindexed
        reference = kernels.rank_row(plain, keep, rows, over, over_keep, over_rows, np.zeros(0, np.float32),
                                     *tail[1:])
        assert fused[3] and fused[2] == reference[2]
        np.testing.assert_array_equal(fused[0], reference[0])
        np.testing.assert_array_equal(fused[1], reference[1])
