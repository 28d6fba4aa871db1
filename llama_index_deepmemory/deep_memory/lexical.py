"""Okapi BM25 keyword scores of stored nodes, for lexical fusion after a dense search.

:class:`LexicalIndex` keeps a forward index (node -> its terms) in CSR form, with each entry's
full BM25 term weight precomputed, so scoring a query against a few dozen candidates is a
handful of numpy calls. The state is plain JSON plus contiguous numeric arrays (safetensors,
never pickle).
"""

from __future__ import annotations

import itertools
import logging
import math
import re
import threading
from collections import Counter, defaultdict
from typing import Any, Sequence

import numpy as np


logger = logging.getLogger(__name__)

# English stop words (the NLTK list; contractions appear as the pieces ``\w+`` splits them into)
STOP_WORDS: frozenset[str] = frozenset(
    """
    a about above after again against ain all am an and any are aren as at be because been before
    being below between both but by can couldn d did didn do does doesn doing don down during each
    few for from further had hadn has hasn have haven having he her here hers herself him himself
    his how i if in into is isn it its itself just ll m ma me mightn more most mustn my myself
    needn no nor not now o of off on once only or other our ours ourselves out over own re s same
    shan she should shouldn so some such t than that the their theirs them themselves then there
    these they this those through to too under until up ve very was wasn we were weren what when
    where which while who whom why will with won wouldn y you your yours yourself yourselves
    """.split()
)

_TOKEN_RE = re.compile(r"\w+")  # str patterns are Unicode-aware: "café" and "日本" are words

_BUILD_CHUNK = 8192  # texts tokenised per chunk (bounds the Python strings alive at once)


def tokenize(text: str) -> list[str]:
    """Lowercased ``\\w+`` tokens of ``text`` (Unicode letters and digits kept), stop words dropped."""
    if not text:
        return []
    return [token for token in _TOKEN_RE.findall(text.lower()) if token not in STOP_WORDS]


def _check_parameters(k1: Any, b: Any) -> tuple[float, float]:
    """(k1, b) as floats: k1 finite and >= 0, b in [0, 1]; clear errors otherwise."""
    try:
        k1_value, b_value = float(k1), float(b)
    except (TypeError, ValueError):
        raise TypeError(f"k1 and b must be numbers, got k1={k1!r}, b={b!r}") from None
    if not math.isfinite(k1_value) or k1_value < 0:
        raise ValueError(f"k1 must be a finite number >= 0 (e.g. 0.9), got {k1!r}")
    if not math.isfinite(b_value) or not 0.0 <= b_value <= 1.0:
        raise ValueError(f"b must be a finite number in [0, 1] (e.g. 0.4), got {b!r}")
    return k1_value, b_value


def _check_ids(ids: Sequence[Any]) -> tuple[str, ...]:
    """``ids`` as a tuple of unique strings; errors name the offending values."""
    if isinstance(ids, str):
        raise TypeError(f"ids must be a sequence of node id strings, not a single string ({ids[:40]!r})")
    ids_tuple = tuple(ids)
    bad = [node_id for node_id in ids_tuple if not isinstance(node_id, str)]
    if bad:
        raise TypeError(f"node ids must be strings; got {bad[:3]!r} (convert them with str())")
    if len(set(ids_tuple)) != len(ids_tuple):
        seen: set[str] = set()
        duplicates: list[str] = []
        for node_id in ids_tuple:
            if node_id in seen and node_id not in duplicates:
                duplicates.append(node_id)
            seen.add(node_id)
        raise ValueError(
            f"node ids must be unique; {len(duplicates)} repeated, e.g. {duplicates[:3]!r}. "
            "Index each node once."
        )
    return ids_tuple


def _lowered(texts: Sequence[Any], offset: int) -> list[str]:
    """``texts`` lowercased, None as ""; TypeError naming the first text that is not a string."""
    lowered = []
    for position, text in enumerate(texts):
        if isinstance(text, str):
            lowered.append(text.lower())
        elif text is None:
            lowered.append("")
        else:
            raise TypeError(
                f"texts must be strings or None; text {offset + position} is a {type(text).__name__}"
            )
    return lowered


class LexicalIndex:
    """Okapi BM25 scores of stored nodes for a query text.

    ``k1`` and ``b`` as in Lucene/Anserini (defaults 0.9 and 0.4). The weight of term ``t`` in
    node ``d`` is ``idf_t * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len_d / avg_len))`` with
    ``idf_t = ln(1 + (N - df_t + 0.5) / (df_t + 0.5))``; lengths count tokens after stop words.
    """

    format_version = 1

    def __init__(self, ids: Sequence[str], texts: Sequence[str], *, k1: float = 0.9, b: float = 0.4) -> None:
        self.k1, self.b = _check_parameters(k1, b)
        ids_tuple = _check_ids(ids)
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings, not a single string")
        texts = list(texts)
        if len(texts) != len(ids_tuple):
            raise ValueError(
                f"ids and texts must have the same length, got {len(ids_tuple)} ids and {len(texts)} texts; "
                "pass one text per node id"
            )
        vocab, doc_ptr, doc_terms, doc_weights, avg_len = self._build(texts, self.k1, self.b)
        self._set(ids_tuple, vocab, doc_ptr, doc_terms, doc_weights, avg_len)
        logger.debug("built BM25 index: %d nodes, %d terms, %d postings", len(ids_tuple), len(vocab), doc_terms.size)

    # ------------------------------------------------------------------ building
    @staticmethod
    def _build(texts: list[Any], k1: float, b: float) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, float]:
        """Vocabulary, CSR forward index (doc_ptr, doc_terms, doc_weights) and mean length of ``texts``."""
        n_docs = len(texts)
        # raw term ids in first-seen order, one C-level dict lookup per token; the stop words are
        # seeded first, so raw ids below n_stop are stop words and raw_id - n_stop is the term id
        raw_vocab: defaultdict[str, int] = defaultdict(None, ((w, i) for i, w in enumerate(sorted(STOP_WORDS))))
        raw_vocab.default_factory = raw_vocab.__len__
        n_stop = len(raw_vocab)
        lookup, findall = raw_vocab.__getitem__, _TOKEN_RE.findall
        terms_parts, tf_parts = [], []
        pairs_per_doc = np.zeros(n_docs, dtype=np.int64)
        doc_len = np.zeros(n_docs, dtype=np.float64)
        for start in range(0, n_docs, _BUILD_CHUNK):
            token_lists = list(map(findall, _lowered(texts[start : start + _BUILD_CHUNK], start)))
            counts = np.fromiter(map(len, token_lists), dtype=np.int64, count=len(token_lists))
            flat = itertools.chain.from_iterable(token_lists)
            raw_terms = np.fromiter(map(lookup, flat), dtype=np.int64, count=int(counts.sum()))
            del token_lists, flat
            # this chunk's (node, term) pairs sorted by node then term, with their counts
            width = len(raw_vocab)
            keys = np.repeat(np.arange(counts.size, dtype=np.int64) * width, counts) + raw_terms
            keys.sort(kind="stable")  # timsort: ~3x faster than quicksort on these node-major keys
            first = np.empty(keys.size, dtype=bool)
            first[:1] = True
            np.not_equal(keys[1:], keys[:-1], out=first[1:])
            starts = np.flatnonzero(first)
            tf = np.diff(starts, append=keys.size)
            local_doc, raw_term = np.divmod(keys[starts], width)
            kept = raw_term >= n_stop
            local_doc, tf = local_doc[kept], tf[kept]
            terms_parts.append((raw_term[kept] - n_stop).astype(np.int32))
            tf_parts.append(tf.astype(np.float32))
            pairs_per_doc[start : start + counts.size] = np.bincount(local_doc, minlength=counts.size)
            doc_len[start : start + counts.size] = np.bincount(local_doc, weights=tf, minlength=counts.size)
        vocab = list(itertools.islice(raw_vocab, n_stop, None))
        doc_terms = np.concatenate(terms_parts) if terms_parts else np.zeros(0, dtype=np.int32)
        tf = np.concatenate(tf_parts) if tf_parts else np.zeros(0, dtype=np.float32)
        doc_ptr = np.zeros(n_docs + 1, dtype=np.int64)
        np.cumsum(pairs_per_doc, out=doc_ptr[1:])

        # weight = idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len / avg_len)), in place on float32
        df = np.bincount(doc_terms, minlength=len(vocab)).astype(np.float64)
        idf = np.log1p((n_docs - df + 0.5) / (df + 0.5)).astype(np.float32)
        avg_len = float(doc_len.mean()) if doc_len.sum() > 0 else 1.0
        length_norm = (k1 * (1.0 - b + b * doc_len / avg_len)).astype(np.float32)
        weights = np.repeat(length_norm, pairs_per_doc)
        weights += tf
        np.divide(tf * np.float32(k1 + 1.0), weights, out=weights)
        weights *= idf[doc_terms]
        return vocab, doc_ptr, doc_terms, weights, avg_len

    def _set(
        self,
        ids: tuple[str, ...],
        vocab: list[str],
        doc_ptr: np.ndarray,
        doc_terms: np.ndarray,
        doc_weights: np.ndarray,
        avg_len: float,
        forgotten: Sequence[str] = (),
    ) -> None:
        """Install the index arrays and the lookups derived from them."""
        self.ids = ids
        self._row_of = {node_id: row for row, node_id in enumerate(ids)}
        self._last_rows: tuple[Sequence[str | None], np.ndarray] | None = None  # rows_of's last tuple
        for node_id in forgotten:
            self._row_of.pop(node_id, None)
        self._avg_len = float(avg_len)
        df = np.bincount(np.asarray(doc_terms, dtype=np.int64), minlength=len(vocab)).astype(np.float64)
        self._idf = np.log1p((len(ids) - df + 0.5) / (df + 0.5))  # for texts scored on the fly
        self._vocab = vocab
        self._term_id = {term: index for index, term in enumerate(vocab)}
        self._doc_ptr = np.ascontiguousarray(doc_ptr, dtype=np.int64)
        self._doc_terms = np.ascontiguousarray(doc_terms, dtype=np.int32)
        self._doc_weights = np.ascontiguousarray(doc_weights, dtype=np.float32)
        # [begin, end) of each row's CSR slice in one gather; the extra last span (empty) is row -1's
        self._spans = np.zeros((len(ids) + 1, 2), dtype=np.int64)
        self._spans[:-1, 0], self._spans[:-1, 1] = self._doc_ptr[:-1], self._doc_ptr[1:]
        self._scratch = threading.local()  # per-thread query-term mask, see _query_mask

    # ------------------------------------------------------------------ querying
    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"LexicalIndex(nodes={len(self.ids)}, terms={len(self._vocab)}, k1={self.k1}, b={self.b})"

    def _score_text(self, query_text: str | None, text: str | None) -> float:
        """BM25 of one unindexed ``text`` for ``query_text``, from the index's statistics."""
        words = set(tokenize(query_text or ""))
        tokens = tokenize(text or "")
        if not words or not tokens:
            return 0.0
        unseen_idf = math.log1p((len(self.ids) + 0.5) / 0.5)
        norm = self.k1 * (1.0 - self.b + self.b * len(tokens) / self._avg_len)
        total = 0.0
        for word, tf in Counter(token for token in tokens if token in words).items():
            term = self._term_id.get(word)
            idf = unseen_idf if term is None else float(self._idf[term])
            total += idf * tf * (self.k1 + 1.0) / (tf + norm)
        return total

    def text_scores(self, query_text: str, rows: np.ndarray, texts: Sequence[str | None] | None) -> np.ndarray:
        """BM25 of the unindexed candidates (row -1) from ``texts``, 0 for the others: the part of
        :meth:`scores_at` that is not read from the postings."""
        out = np.zeros(len(rows), dtype=np.float32)
        if texts is not None:
            if isinstance(texts, str):
                raise TypeError("texts must be a sequence with one text per node id, not a single string")
            if len(texts) != len(rows):
                raise ValueError(f"got {len(texts)} texts for {len(rows)} node ids; pass one text per node id")
            for position in np.flatnonzero(rows < 0).tolist():
                out[position] = self._score_text(query_text, texts[position])
        return out

    def _query_mask(self) -> np.ndarray:
        """This thread's all-False bool array over the vocabulary (callers restore it)."""
        mask = getattr(self._scratch, "mask", None)
        if mask is None:
            mask = self._scratch.mask = np.zeros(len(self._vocab), dtype=bool)
        return mask

    def query_term_ids(self, query_text: str | None) -> np.ndarray:
        """Sorted unique indexed term ids of ``query_text`` (unknown words and stop words dropped)."""
        if query_text is not None and not isinstance(query_text, str):
            raise TypeError(f"query_text must be a string, got {type(query_text).__name__}")
        # stop words are not in the vocabulary, so one lookup per token drops them too
        found = set(map(self._term_id.get, _TOKEN_RE.findall(query_text.lower()))) if query_text else set()
        found.discard(None)
        return np.array(sorted(found), dtype=np.int32)

    @property
    def postings(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(spans, terms, weights)``: row ``r``'s postings are ``terms[b:e]`` (int32 term
        ids) with their BM25 weights ``weights[b:e]`` (float32), ``b, e = spans[r]``; row -1
        reads an empty span."""
        return self._spans, self._doc_terms, self._doc_weights

    @property
    def n_used(self) -> int:
        """Ids whose indexed text is used: ``len(self)`` less those forgotten (only ever drops)."""
        return len(self._row_of)

    def forget(self, node_ids: Sequence[str]) -> None:
        """Stop using the indexed text of ``node_ids`` (re-added with a new text, say): from now
        on they are scored from the text passed to :meth:`scores`, like nodes added later."""
        row_of = self._row_of
        self._last_rows = None
        for node_id in node_ids:
            row_of.pop(node_id, None)

    def rows_of(self, node_ids: Sequence[str | None]) -> np.ndarray:
        """Row of each of ``node_ids`` in the index, -1 for ids it does not use (never indexed,
        forgotten, or None). Valid until :meth:`forget`. The rows of the last tuple asked for are
        kept (read-only) for the next call with the same tuple object, such as a model's
        override ids on every query."""
        if isinstance(node_ids, str):
            raise TypeError(f"node_ids must be a sequence of node ids, not a single string ({node_ids[:40]!r})")
        last = self._last_rows
        if last is not None and last[0] is node_ids:
            return last[1]
        rows = np.fromiter(map(self._row_of.get, node_ids, itertools.repeat(-1)), dtype=np.int64, count=len(node_ids))
        if isinstance(node_ids, tuple):
            rows.flags.writeable = False
            self._last_rows = (node_ids, rows)
        return rows

    def scores(
        self, query_text: str, node_ids: Sequence[str], texts: Sequence[str | None] | None = None
    ) -> np.ndarray:
        """BM25 of ``query_text`` for each of ``node_ids`` -> float32 ``(len(node_ids),)``.

        Sums over the query's unique terms. Nodes not in the index (added after it was built, or
        forgotten) are scored from ``texts[i]`` when given (with the index's idf and mean length;
        words no indexed node has count as document frequency 0), else 0.
        """
        return self.scores_at(query_text, self.rows_of(node_ids), texts)

    def scores_at(
        self, query_text: str, rows: np.ndarray, texts: Sequence[str | None] | None = None
    ) -> np.ndarray:
        """:meth:`scores` of the nodes at ``rows`` (from :meth:`rows_of`; -1: scored from
        ``texts[i]`` when given, else 0). A handful of numpy calls whatever the number of rows."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.ndim != 1 or (rows.size and (rows.min() < -1 or rows.max() >= len(self.ids))):
            raise ValueError(
                f"rows must be 1-D rows of this index in [-1, {len(self.ids)}) (use rows_of(node_ids)), "
                f"got shape {rows.shape}" + (f", range {rows.min()}..{rows.max()}" if rows.ndim == 1 and rows.size else "")
            )
        out = self.text_scores(query_text, rows, texts)
        query_terms = self.query_term_ids(query_text)
        if query_terms.size == 0 or rows.size == 0:
            return out
        spans = self._spans[rows]  # row -1 reads the empty last span
        lengths = spans[:, 1] - spans[:, 0]
        total = int(lengths.sum())
        if total == 0:
            return out
        # entry indices of every row's CSR slice, concatenated, and the position each belongs to
        owner = np.repeat(np.arange(rows.size), lengths)
        entries = np.arange(total, dtype=np.int64) + (spans[:, 0] - (np.cumsum(lengths) - lengths))[owner]
        mask = self._query_mask()
        mask[query_terms] = True  # a by-term lookup: cheaper than np.isin's sort on the query path
        try:
            shared = mask[self._doc_terms[entries]]
        finally:
            mask[query_terms] = False
        out += np.bincount(owner[shared], weights=self._doc_weights[entries[shared]], minlength=rows.size).astype(
            np.float32
        )
        return out

    # ------------------------------------------------------------------ state
    def to_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """JSON-able meta and contiguous numeric arrays (safetensors-friendly)."""
        meta = {
            "format_version": self.format_version,
            "k1": self.k1,
            "b": self.b,
            "vocab": list(self._vocab),
            "ids": list(self.ids),
            "avg_length": self._avg_len,
            "forgotten": [node_id for node_id in self.ids if node_id not in self._row_of],
        }
        arrays = {
            "doc_ptr": self._doc_ptr.copy(),
            "doc_terms": self._doc_terms.copy(),
            "doc_weights": self._doc_weights.copy(),
        }
        return meta, arrays

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> "LexicalIndex":
        """Rebuild an index from :meth:`to_state` output, checking every part before use."""
        if not isinstance(meta, dict):
            raise TypeError(f"lexical index meta must be a dict, got {type(meta).__name__}")
        version = meta.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ValueError(f"lexical index meta has an invalid format_version {version!r}; expected 1")
        if version > cls.format_version:
            raise ValueError(
                f"lexical index format_version {version} is newer than this package supports "
                f"({cls.format_version}); upgrade llama-index-deepmemory"
            )
        try:
            k1, b = _check_parameters(meta.get("k1"), meta.get("b"))
        except TypeError as error:
            raise ValueError(f"lexical index meta: {error}") from None
        vocab, ids = meta.get("vocab"), meta.get("ids")
        if not isinstance(vocab, list) or not all(isinstance(term, str) for term in vocab):
            raise ValueError("lexical index meta 'vocab' must be a list of strings")
        if len(set(vocab)) != len(vocab):
            raise ValueError("lexical index meta 'vocab' has repeated terms; the state is corrupt")
        stop_words = sorted(STOP_WORDS.intersection(vocab))
        if stop_words:  # queries look words up without dropping stop words first
            raise ValueError(f"lexical index meta 'vocab' holds stop words {stop_words[:3]}; the state is corrupt")
        if not isinstance(ids, list):
            raise ValueError(f"lexical index meta 'ids' must be a list of strings, got {type(ids).__name__}")
        ids_tuple = _check_ids(ids)

        missing = [name for name in ("doc_ptr", "doc_terms", "doc_weights") if name not in arrays]
        if missing:
            raise ValueError(
                f"lexical index state is missing arrays {missing}; it is incomplete or not a lexical index"
            )
        doc_ptr = cls._array(arrays, "doc_ptr", "iu", np.int64)
        doc_terms = cls._array(arrays, "doc_terms", "iu", np.int64)
        doc_weights = cls._array(arrays, "doc_weights", "f", np.float32)
        if doc_ptr.size != len(ids_tuple) + 1:
            raise ValueError(
                f"lexical index doc_ptr has {doc_ptr.size} entries but there are {len(ids_tuple)} ids "
                f"(expected {len(ids_tuple) + 1}); the state is corrupt"
            )
        if doc_ptr[0] != 0 or doc_ptr[-1] != doc_terms.size or np.any(np.diff(doc_ptr) < 0):
            raise ValueError(
                f"lexical index doc_ptr must rise monotonically from 0 to {doc_terms.size} (the number of "
                "doc_terms); the state is corrupt"
            )
        if doc_weights.size != doc_terms.size:
            raise ValueError(
                f"lexical index has {doc_terms.size} doc_terms but {doc_weights.size} doc_weights; the state is corrupt"
            )
        if doc_terms.size and (doc_terms.min() < 0 or doc_terms.max() >= len(vocab)):
            raise ValueError(
                f"lexical index doc_terms hold ids outside the vocabulary of {len(vocab)} terms "
                f"(range {doc_terms.min()}..{doc_terms.max()}); the state is corrupt"
            )
        same_doc = np.ones(doc_terms.size, dtype=bool)
        same_doc[doc_ptr[:-1][np.diff(doc_ptr) > 0]] = False  # first entry of each node
        if np.any(np.diff(doc_terms)[same_doc[1:]] <= 0):
            raise ValueError(
                "lexical index doc_terms must be strictly increasing within each node; the state is corrupt"
            )
        if not np.all(np.isfinite(doc_weights)):
            raise ValueError("lexical index doc_weights contain NaN or infinity; the state is corrupt")

        index = cls.__new__(cls)
        index.k1, index.b = k1, b
        avg_len = meta.get("avg_length")
        if not isinstance(avg_len, (int, float)) or isinstance(avg_len, bool) or not avg_len > 0:
            raise ValueError(f"lexical index meta 'avg_length' must be a number > 0, got {avg_len!r}")
        forgotten = meta.get("forgotten", [])
        if not isinstance(forgotten, list) or not all(isinstance(node_id, str) for node_id in forgotten):
            raise ValueError("lexical index meta 'forgotten' must be a list of node ids")
        index._set(ids_tuple, list(vocab), doc_ptr, doc_terms, doc_weights, float(avg_len), forgotten)
        return index

    @staticmethod
    def _array(arrays: dict[str, np.ndarray], name: str, kinds: str, dtype: type) -> np.ndarray:
        """State array ``name`` as 1-D ``dtype``, refusing other shapes and dtype kinds."""
        value = np.asarray(arrays[name])
        if value.ndim != 1 or value.dtype.kind not in kinds:
            raise ValueError(
                f"lexical index array {name!r} must be 1-D of kind {kinds!r}, "
                f"got shape {value.shape} dtype {value.dtype}; the state is corrupt"
            )
        return value.astype(dtype, copy=False)
