"""``bf16_search.prefiltered_top_k`` gives the rows and scores of ``exact_search.exact_top_k`` (and of a
brute-force stable sort), on random data, exact ties, adversarial near-ties that bf16 cannot tell
apart, and scaled vectors; its error bound holds on every pair; its bf16 key comparison is exact
over every bf16 value. Skipped where torch has no fast bf16 product (the path is off there)."""

from __future__ import annotations

import numpy as np
import pytest

from llama_index_deepmemory import bf16_search, exact_search
from llama_index_deepmemory.exact_search import exact_top_k

torch = pytest.importorskip("torch")
needs_amx = pytest.mark.skipif(not bf16_search.fast_bf16(), reason="no fast bf16 product (AMX) here")


def _reference(matrix: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    scores = queries @ matrix.T
    return np.argsort(-scores, axis=1, kind="stable")[:, : min(k, len(matrix))]


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 2,048 rows, so ten thousand rows make several chunks."""
    monkeypatch.setattr(exact_search, "MAX_CHUNK_ROWS", 2048)


def _check(matrix: np.ndarray, queries: np.ndarray, k: int) -> None:
    copy = bf16_search.Bf16Copy(matrix)
    got = bf16_search.prefiltered_top_k(matrix, copy, queries, k)
    assert got is not None
    scores, rows = got
    want_scores, want_rows = exact_top_k(matrix, queries, k)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_array_equal(scores, want_scores)  # the same float32 values, bit for bit
    np.testing.assert_array_equal(rows, _reference(matrix, queries, k))
    assert scores.dtype == np.float32 and rows.dtype == np.int64


@needs_amx
@pytest.mark.parametrize(
    ("n", "m", "k", "d"),
    [(12000, 9, 26, 128), (10000, 40, 64, 384), (9000, 2, 5, 512), (12289, 17, 512, 64), (10241, 3, 10, 384)],
)
def test_random_unit_vectors(small_chunks, n: int, m: int, k: int, d: int) -> None:
    rng = np.random.default_rng(n + m + k)
    matrix = _unit(rng, n, d)
    queries = _unit(rng, m, d)
    queries[: m // 2] = 0.3 * queries[: m // 2] + matrix[rng.integers(0, n, m // 2)]  # some with a near row
    _check(matrix, queries, k)


@needs_amx
def test_exact_ties_and_near_ties_bf16_cannot_tell_apart(small_chunks) -> None:
    rng = np.random.default_rng(7)
    n, d = 12000, 384
    matrix = _unit(rng, n, d)
    base = matrix[11].copy()
    near = rng.choice(np.arange(3000, n), size=400, replace=False)
    matrix[near] = base + rng.standard_normal((400, d)).astype(np.float32) * 1e-6  # within float32 noise
    matrix[near[:50]] = base  # exact duplicates across chunks
    matrix[near[50:80]] = np.nextafter(base, np.float32(2))  # one ulp away
    queries = np.stack([base, base + 1e-3, -base, _unit(rng, 1, d)[0]]).astype(np.float32)
    for k in (1, 64, 300):
        _check(matrix, queries, k)


@needs_amx
def test_unnormalised_vectors_of_mixed_scale(small_chunks) -> None:
    rng = np.random.default_rng(3)
    n, d = 11000, 200
    matrix = (rng.standard_normal((n, d)) * np.exp(rng.uniform(-8, 8, (n, 1)))).astype(np.float32)
    matrix[::97] = 0.0
    queries = (rng.standard_normal((12, d)) * np.exp(rng.uniform(-5, 5, (12, 1)))).astype(np.float32)
    queries[3] = 0.0  # every score 0: row order decides
    _check(matrix, queries, 30)


@needs_amx
def test_negative_scores_and_thresholds(small_chunks) -> None:
    rng = np.random.default_rng(8)
    n, d = 11000, 256
    axis = np.zeros(d, np.float32)
    axis[0] = 1.0
    matrix = _unit(rng, n, d) + 2.0 * axis  # every row in a cone around the axis
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    queries = np.stack([-axis, -axis + 0.3 * _unit(rng, 1, d)[0], axis, _unit(rng, 1, d)[0]] * 3).astype(np.float32)
    _check(matrix, queries, 64)  # the first queries' scores and cuts are all negative


@needs_amx
def test_the_error_bound_holds_on_every_pair() -> None:
    rng = np.random.default_rng(5)
    for d, scale in ((384, 1.0), (33, 1e-20), (128, 1e12)):
        matrix = _unit(rng, 3000, d) * np.float32(scale)
        matrix[:100] = np.round(matrix[:100] * 64 / scale) * scale / 64  # values exact in bf16
        queries = _unit(rng, 20, d) * rng.uniform(0.1, 3.0, (20, 1)).astype(np.float32)
        assert bf16_search.bound_check(matrix, bf16_search.Bf16Copy(matrix), queries) < 1.0


def test_bf16_keys_order_every_bf16_value_against_cuts() -> None:
    patterns = np.arange(-(2**15), 2**15, dtype=np.int32).astype(np.int16)
    values = (patterns.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    finite = np.isfinite(values)
    patterns, values = patterns[finite], values[finite]
    keys = bf16_search._bf16_keys(patterns.copy())
    rng = np.random.default_rng(0)
    cuts = np.concatenate([
        values[rng.integers(0, len(values), 300)],  # on the bf16 grid
        rng.standard_normal(300).astype(np.float32) * np.float32(10.0) ** rng.integers(-30, 30, 300),
        np.float32([0.0, -0.0, 1e-40, -1e-40, 3e38, -3e38]),
    ]).astype(np.float32)
    cut_keys = bf16_search._ceil_keys(cuts)
    for cut, key in zip(cuts, cut_keys):
        np.testing.assert_array_equal(keys >= key, values >= cut, err_msg=f"cut {cut!r}")


def test_fallbacks_return_none(small_chunks) -> None:
    if not bf16_search.fast_bf16():
        pytest.skip("no fast bf16 product here")
    rng = np.random.default_rng(1)
    matrix = _unit(rng, 9000, 384)
    copy = bf16_search.Bf16Copy(matrix)
    queries = _unit(rng, 4, 384)
    assert bf16_search.prefiltered_top_k(matrix, copy, queries, 3) is not None
    assert bf16_search.prefiltered_top_k(matrix, copy, queries[:1], 3) is None  # one row: a gemv
    assert bf16_search.prefiltered_top_k(matrix, copy, queries, 3000) is None  # deeper than the first chunk
    small = matrix[:, :8].copy()  # products the BLAS would round otherwise
    assert bf16_search.prefiltered_top_k(small, bf16_search.Bf16Copy(small), queries[:, :8].copy(), 3) is None
    bad = queries.copy()
    bad[1, 0] = np.nan
    assert bf16_search.prefiltered_top_k(matrix, copy, bad, 3) is None
    inf_matrix = matrix.copy()
    inf_matrix[5, 2] = np.inf
    assert not bf16_search.Bf16Copy(inf_matrix).usable


@needs_amx
def test_array_store_view_takes_the_bf16_path_with_the_same_results(small_chunks, monkeypatch) -> None:
    from llama_index_deepmemory.engine.array_view import ArrayStoreView

    monkeypatch.setattr(bf16_search, "MIN_ROWS", 1000)
    rng = np.random.default_rng(9)
    vectors = _unit(rng, 9000, 128)
    view = ArrayStoreView([f"n{i}" for i in range(len(vectors))], vectors)
    queries = _unit(rng, 10, 128)
    scores, ids = view.search_vectors(queries, 40)
    assert view._bf16 is not None and view._bf16.usable
    want_scores, want_rows = exact_top_k(vectors, queries, 40)
    assert ids == [[f"n{j}" for j in row] for row in want_rows.tolist()]
    np.testing.assert_array_equal(scores, want_scores)


@needs_amx
def test_scores_near_float32s_largest_take_the_float32_path(small_chunks, monkeypatch) -> None:
    """A product bf16 rounds to inf while float32 keeps it finite (found in review): not the bf16 path,
    and the view still answers exactly."""
    rng = np.random.default_rng(7)
    matrix, queries = _unit(rng, 10000, 512), _unit(rng, 4, 512)
    matrix[5000] = queries[0]
    scale = np.float32(np.sqrt(3.399e38))
    matrix, queries = matrix * scale, queries * scale
    assert np.isfinite(exact_top_k(matrix, queries, 1)[0]).all()
    assert bf16_search.prefiltered_top_k(matrix, bf16_search.Bf16Copy(matrix), queries, 1) is None
    from llama_index_deepmemory.engine.array_view import ArrayStoreView

    monkeypatch.setattr(bf16_search, "MIN_ROWS", 1000)  # the view would try the bf16 path here
    view = ArrayStoreView([f"n{i}" for i in range(len(matrix))], matrix)
    assert view.search_vectors(queries, 1)[1][0][0] == "n5000"


def test_a_view_builds_no_bf16_copy_for_searches_its_path_refuses(small_chunks, monkeypatch) -> None:
    """Searches whose products are too small for the bf16 path (few dimensions here) leave the
    view without a copy (it would be memory spent for nothing) and still answer exactly;
    concurrent searches that take the path build one copy between them."""
    import threading

    from llama_index_deepmemory.engine.array_view import ArrayStoreView

    monkeypatch.setattr(bf16_search, "MIN_ROWS", 1000)
    monkeypatch.setattr(bf16_search, "fast_bf16", lambda: True)  # the decision, not the product, is tested
    rng = np.random.default_rng(11)
    narrow = _unit(rng, 9000, 4)
    view = ArrayStoreView([f"n{i}" for i in range(len(narrow))], narrow)
    queries = _unit(rng, 3, 4)
    assert not bf16_search.worth_it(len(narrow), 4, len(queries), 10)
    scores, ids = view.search_vectors(queries, 10)
    assert view._bf16 is None
    want_scores, want_rows = exact_top_k(narrow, queries, 10)
    assert ids == [[f"n{j}" for j in row] for row in want_rows.tolist()]
    np.testing.assert_array_equal(scores, want_scores)

    wide = _unit(rng, 9000, 128)
    assert bf16_search.worth_it(len(wide), 128, 10, 40)
    view = ArrayStoreView([f"n{i}" for i in range(len(wide))], wide)
    built = []
    real = bf16_search.Bf16Copy

    def counted(matrix):
        built.append(1)
        return real(matrix)

    monkeypatch.setattr(bf16_search, "Bf16Copy", counted)
    threads = [threading.Thread(target=view.search_vectors, args=(_unit(rng, 10, 128), 40)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(built) == 1 and view._bf16 is not None
