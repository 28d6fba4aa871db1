"""BM25 lexical index: brute-force and hand-computed references, state round trip, bad input."""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter

import numpy as np
import pytest

from llama_index_deepmemory.deep_memory.lexical import STOP_WORDS, LexicalIndex, tokenize

STEMS = ("alpha", "beta", "gamma", "delta", "omega", "café")
WORDS = [f"{stem}{suffix}" for stem in STEMS for suffix in ("", "s", "x", "9", "_z")]  # 30 words
SOME_STOP_WORDS = ["the", "and", "of", "is", "not", "you", "t", "s"]


def make_corpus(n_docs: int = 40, seed: int = 7) -> tuple[list[str], list[str | None]]:
    """Random texts over 30 words plus stop words, punctuation, digits and case variety."""
    rng = random.Random(seed)
    texts: list[str | None] = []
    for _ in range(n_docs):
        parts = []
        for _ in range(rng.randint(0, 25)):
            word = rng.choice(WORDS) if rng.random() < 0.75 else rng.choice(SOME_STOP_WORDS)
            word = rng.choice([word, word.upper(), word.title()])
            parts.append(word + rng.choice(["", "", " ", ",", ".", "!", "'", " -- ", "\n"]))
        texts.append(" ".join(parts))
    texts[3] = ""  # an empty node
    texts[5] = None  # a node without text
    texts[8] = "The AND of is"  # only stop words
    ids = [f"node-{i}" for i in range(n_docs)]
    return ids, texts


def brute_force_bm25(query: str, texts: list[str | None], k1: float, b: float) -> list[float]:
    """BM25 written plainly: loops over documents and the query's unique terms."""
    docs = [[t for t in re.findall(r"\w+", (text or "").lower()) if t not in STOP_WORDS] for text in texts]
    n_docs = len(docs)
    avg_len = sum(len(d) for d in docs) / n_docs
    query_terms = set(t for t in re.findall(r"\w+", query.lower()) if t not in STOP_WORDS)
    scores = []
    for doc in docs:
        total = 0.0
        for term in query_terms:
            tf = doc.count(term)
            if tf == 0:
                continue
            df = sum(1 for other in docs if term in other)
            idf = math.log(1 + (n_docs - df + 0.5) / (df + 0.5))
            total += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(doc) / avg_len))
        scores.append(total)
    return scores


QUERIES = [
    "alpha beta",
    "ALPHA alpha Alpha beta9 beta9",  # repeated words count once
    "café cafés omega_z",
    "unknownword zeta",  # no indexed term
    "unknownword gamma",
    "",  # empty query
    "the and of",  # stop words only
    "Delta, deltax! delta9? OMEGA",
]


@pytest.mark.parametrize(("k1", "b"), [(0.9, 0.4), (1.2, 0.75), (0.0, 0.5), (1.5, 0.0), (0.7, 1.0)])
def test_scores_match_brute_force(k1: float, b: float) -> None:
    ids, texts = make_corpus()
    index = LexicalIndex(ids, texts, k1=k1, b=b)
    assert len(index) == len(ids) and index.ids == tuple(ids)
    rng = random.Random(3)
    candidates = ids[:] + ["missing-a", ids[4], ids[4], "missing-b"]  # unknown and duplicate ids
    rng.shuffle(candidates)
    for query in QUERIES:
        expected_by_id = dict(zip(ids, brute_force_bm25(query, texts, k1, b)))
        got = index.scores(query, candidates)
        assert got.dtype == np.float32 and got.shape == (len(candidates),)
        expected = [expected_by_id.get(node_id, 0.0) for node_id in candidates]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6, err_msg=query)
    assert np.any(index.scores("alpha beta", ids) > 0)


def test_scores_on_a_subset_and_in_any_order() -> None:
    ids, texts = make_corpus()
    index = LexicalIndex(ids, texts)
    full = index.scores("gamma deltas omega", ids)
    picked = [ids[i] for i in (30, 2, 17, 2, 39)]
    np.testing.assert_array_equal(index.scores("gamma deltas omega", picked), full[[30, 2, 17, 2, 39]])
    assert index.scores("gamma", []).shape == (0,)
    assert np.all(index.scores("gamma", ["nope", "nada"]) == 0)


def test_rows_of_and_scores_at_rows_match_scores_by_id() -> None:
    """rows_of maps ids to index rows (-1: unknown, None, forgotten); scores_at on those rows equals
    scores on the ids, texts fill in the -1 rows, and forget() drops rows."""
    ids, texts = make_corpus()
    index = LexicalIndex(ids, texts)
    picked = [ids[7], "missing", None, ids[0], ids[7], ids[39]]
    rows = index.rows_of(picked)
    assert rows.tolist() == [7, -1, -1, 0, 7, 39]
    for query in QUERIES:
        np.testing.assert_array_equal(index.scores_at(query, rows), index.scores(query, [i or "x" for i in picked]))
    index.forget([ids[7]])
    rows = index.rows_of(picked)
    assert rows.tolist() == [-1, -1, -1, 0, -1, 39]
    new_texts = ["alpha alpha beta", None, None, None, "", None]  # only the -1 rows' texts are read
    got = index.scores_at("alpha beta", rows, new_texts)
    assert got[0] > 0 and got[4] == 0 and got[1] == got[2] == 0
    assert got[0] == pytest.approx(index.scores("alpha beta", ["fresh"], ["alpha alpha beta"])[0])
    assert got[3] == pytest.approx(index.scores("alpha beta", [ids[0]])[0])
    with pytest.raises(ValueError, match="1-D"):
        index.scores_at("alpha", np.zeros((2, 2), dtype=np.int64))
    for bad in ([0, -2], [len(ids)]):  # -2 would read another row's slice; past the end has none
        with pytest.raises(ValueError, match="use rows_of"):
            index.scores_at("alpha", np.array(bad))
    with pytest.raises(ValueError, match="one text per node id"):
        index.scores_at("alpha", rows, ["too few"])
    with pytest.raises(TypeError, match="single string"):
        index.rows_of("node-1")


def test_rows_of_a_tuple_are_kept_until_forget() -> None:
    """A model's override ids (one tuple, asked on every query) are looked up once, read-only,
    and looked up again after forget()."""
    ids, texts = make_corpus()
    index = LexicalIndex(ids, texts)
    overrides = tuple(ids[:5])
    rows = index.rows_of(overrides)
    assert index.rows_of(overrides) is rows and not rows.flags.writeable
    assert index.rows_of(list(overrides)) is not rows  # lists are not kept
    index.forget([ids[2]])
    assert index.rows_of(overrides).tolist() == [0, 1, -1, 3, 4]


def test_hand_computed_scores() -> None:
    ids = ["d0", "d1", "d2"]
    texts = ["Apple banana apple", "banana, cherry!", "The cherry cherry CHERRY"]  # "the" is a stop word
    k1, b = 0.9, 0.4
    index = LexicalIndex(ids, texts, k1=k1, b=b)
    # lengths after stop words: 3, 2, 3 -> avg 8/3; df(apple) = 1, df(cherry) = 2, N = 3
    avg = 8 / 3
    idf_apple = math.log(1 + (3 - 1 + 0.5) / (1 + 0.5))
    idf_cherry = math.log(1 + (3 - 2 + 0.5) / (2 + 0.5))
    d0 = idf_apple * 2 * (k1 + 1) / (2 + k1 * (1 - b + b * 3 / avg))
    d1 = idf_cherry * 1 * (k1 + 1) / (1 + k1 * (1 - b + b * 2 / avg))
    d2 = idf_cherry * 3 * (k1 + 1) / (3 + k1 * (1 - b + b * 3 / avg))
    np.testing.assert_allclose(index.scores("apple cherry cherry", ids), [d0, d1, d2], rtol=1e-6)
    assert d2 > d1  # more occurrences in a node of the same length class score higher


def test_empty_corpus_scores_zero_and_round_trips() -> None:
    index = LexicalIndex([], [])
    assert len(index) == 0
    np.testing.assert_array_equal(index.scores("anything", ["a", "b"]), [0, 0])
    meta, arrays = index.to_state()
    again = LexicalIndex.from_state(meta, arrays)
    assert len(again) == 0 and again.scores("anything", ["a"]).tolist() == [0.0]


def test_state_round_trip_through_json_and_safetensors(tmp_path) -> None:
    from safetensors.numpy import load_file, save_file

    ids, texts = make_corpus()
    index = LexicalIndex(ids, texts, k1=1.1, b=0.6)
    meta, arrays = index.to_state()
    assert meta["format_version"] == 1 and meta["ids"] == ids and len(meta["vocab"]) == len(set(meta["vocab"]))
    assert arrays["doc_ptr"].dtype == np.int64 and arrays["doc_terms"].dtype == np.int32
    assert arrays["doc_weights"].dtype == np.float32 and all(a.flags.c_contiguous for a in arrays.values())
    path = tmp_path / "lexical.safetensors"
    save_file(arrays, str(path))
    again = LexicalIndex.from_state(json.loads(json.dumps(meta)), load_file(str(path)))
    assert (again.k1, again.b, again.ids) == (1.1, 0.6, index.ids)
    for query in QUERIES:
        np.testing.assert_array_equal(again.scores(query, ids + ["x"]), index.scores(query, ids + ["x"]))


def _state() -> tuple[dict, dict]:
    return LexicalIndex(["a", "b", "c"], ["red fish", "blue fish fish", "red red sky"]).to_state()


def _broken(**changes) -> tuple[dict, dict]:
    meta, arrays = _state()
    for key, value in changes.items():
        target = arrays if key.startswith("doc_") else meta
        if value is None:
            target.pop(key)
        else:
            target[key] = value
    return meta, arrays


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"format_version": 2}, "upgrade"),
        ({"format_version": "1"}, "format_version"),
        ({"doc_ptr": None}, "missing arrays"),
        ({"doc_terms": None}, "missing arrays"),
        ({"doc_weights": None}, "missing arrays"),
        ({"doc_ptr": np.array([0, 2, 5], dtype=np.int64)}, "3 ids"),
        ({"doc_ptr": np.array([0, 4, 2, 6], dtype=np.int64)}, "monotonic"),
        ({"doc_ptr": np.array([0, 2, 5, 5], dtype=np.int64)}, "monotonic"),
        ({"doc_ptr": np.array([0.0, 2, 4, 6])}, "doc_ptr"),
        ({"doc_terms": np.array([0, 1, 2, 1, 0, 9], dtype=np.int32)}, "outside the vocabulary"),
        ({"doc_terms": np.array([0, 1, 2, 1, -1, 3], dtype=np.int32)}, "outside the vocabulary"),
        ({"doc_terms": np.array([1, 0, 2, 1, 0, 3], dtype=np.int32)}, "increasing"),
        ({"doc_weights": np.array([1, 1, 1, np.nan, 1, 1], dtype=np.float32)}, "NaN"),
        ({"doc_weights": np.ones(5, dtype=np.float32)}, "doc_weights"),
        ({"doc_weights": np.ones((2, 3), dtype=np.float32)}, "1-D"),
        ({"k1": -1.0}, "k1"),
        ({"b": 2.0}, "b must"),
        ({"k1": None}, "k1"),
        ({"ids": ["a", "a", "c"]}, "'a'"),
        ({"vocab": ["red", "red", "blue", "sky"]}, "vocab"),
        ({"vocab": ["red", "fish", "the", "sky"]}, "stop words ['the']"),
    ],
)
def test_from_state_rejects_bad_state(changes: dict, message: str) -> None:
    meta, arrays = _state()
    assert arrays["doc_ptr"].tolist() == [0, 2, 4, 6] and arrays["doc_terms"].tolist() == [0, 1, 1, 2, 0, 3]
    meta, arrays = _broken(**changes)
    with pytest.raises(ValueError, match=re.escape(message)):
        LexicalIndex.from_state(meta, arrays)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"ids": ["a", "b"], "texts": ["x"]}, ValueError, "2 ids and 1 texts"),
        ({"ids": ["a", "b", "a", "c", "c"], "texts": ["x"] * 5}, ValueError, "['a', 'c']"),
        ({"k1": -0.1}, ValueError, "-0.1"),
        ({"k1": float("nan")}, ValueError, "k1"),
        ({"b": 1.5}, ValueError, "1.5"),
        ({"b": -0.2}, ValueError, "-0.2"),
        ({"b": float("inf")}, ValueError, "b must"),
        ({"k1": "big"}, TypeError, "'big'"),
        ({"texts": ["x", 3]}, TypeError, "text 1 is a int"),
        ({"texts": ["x", b"y"]}, TypeError, "text 1 is a bytes"),
        ({"ids": ["a", 2]}, TypeError, "[2]"),
        ({"ids": "ab", "texts": ["x", "y"]}, TypeError, "single string"),
    ],
)
def test_constructor_rejects_bad_input(kwargs: dict, error: type, message: str) -> None:
    arguments = {"ids": ["a", "b"], "texts": ["x", "y"], **kwargs}
    with pytest.raises(error, match=re.escape(message)):
        LexicalIndex(**arguments)


def test_scores_rejects_a_single_string_of_ids() -> None:
    index = LexicalIndex(["a"], ["text"])
    with pytest.raises(TypeError, match="single string"):
        index.scores("text", "a")


def test_tokenize() -> None:
    assert tokenize("Café CAFÉ café") == ["café", "café", "café"]
    assert tokenize("The 42 cats, and 7dogs! x_y") == ["42", "cats", "7dogs", "x_y"]
    assert tokenize("Ünïcode naïve ΣΊΣΥΦΟΣ 日本語") == ["ünïcode", "naïve", "σίσυφος", "日本語"]
    assert tokenize("don't won't it's") == []  # contraction pieces are stop words
    assert tokenize("") == [] and tokenize("... !!") == []


def test_stop_words_are_lowercase_words() -> None:
    assert 150 <= len(STOP_WORDS) <= 320
    assert all(re.fullmatch(r"\w+", word) and word == word.lower() for word in STOP_WORDS)
    assert {"the", "and", "of", "is"} <= STOP_WORDS and "cell" not in STOP_WORDS


def test_scores_match_bm25_from_sklearn_term_counts() -> None:
    text_module = pytest.importorskip("sklearn.feature_extraction.text")
    ids, texts = make_corpus(n_docs=60, seed=11)
    k1, b = 0.9, 0.4
    vectorizer = text_module.CountVectorizer(
        token_pattern=r"(?u)\w+", lowercase=True, stop_words=sorted(STOP_WORDS)
    )
    counts = vectorizer.fit_transform([t or "" for t in texts]).toarray().astype(np.float64)
    lengths = counts.sum(axis=1)
    df = (counts > 0).sum(axis=0)
    idf = np.log1p((len(ids) - df + 0.5) / (df + 0.5))
    tf_part = counts * (k1 + 1) / (counts + k1 * (1 - b + b * lengths / lengths.mean())[:, None])
    index = LexicalIndex(ids, texts, k1=k1, b=b)
    column = vectorizer.vocabulary_
    for query in QUERIES:
        terms = sorted({column[t] for t in Counter(tokenize(query)) if t in column})
        expected = (tf_part[:, terms] * idf[terms]).sum(axis=1)
        np.testing.assert_allclose(index.scores(query, ids), expected, rtol=1e-5, atol=1e-6)
