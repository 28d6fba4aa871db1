"""Readers for real relevance data: query logs (JSONL/CSV) and BEIR-format folders.

Everything here produces the shape ``deep_memory.train`` takes: ``queries`` (a list of strings)
and ``relevance`` (one list of ``(node_id, weight)`` pairs per query).

Query log formats (one query per line/row):

* JSONL: ``{"query": "...", "relevant_ids": ["node_3", "node_7"], "weight": 0.5}``; the ids may
  also be one string, ``[[id, weight], ...]`` pairs or ``{id: weight}``; ``weight`` is optional
  (default 1) and applies to ids given without their own weight. Weights follow the one relevance
  rule (:mod:`llama_index_deepmemory.relevance`): finite and >= 0 (0: judged, not relevant), at least
  one > 0 per query.
* CSV (header row): columns ``query``, ``relevant_ids`` (ids separated by ``;``) and optional
  ``weight`` (one number, or one per id separated by ``;``).

BEIR folders: ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl`` (``_id``,
``text``) and ``qrels/<split>.tsv`` (``query-id``, ``corpus-id``, ``score`` with a header row).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Collection, Iterator, Literal, Sequence

from llama_index_deepmemory.atomic import write_text_atomic
from llama_index_deepmemory.data.text_files import utf8_lines, utf8_text
from llama_index_deepmemory.relevance import Relevance, check_pair, check_weight, has_relevant, shown, validate_relevance

if TYPE_CHECKING:  # pragma: no cover
    from llama_index.core.schema import Document, TextNode

    from llama_index_deepmemory.data.qa_dataset import EmbeddingQAFinetuneDataset

logger = logging.getLogger(__name__)

# a JSON value nested deeper than Python's recursion limit (about 1,000 levels) cannot be parsed
JSON_TOO_DEEP = (
    "JSON nested deeper than Python's parser allows (the recursion limit, about 1,000 levels); each line "
    "must be one flat object such as {\"query\": \"...\", \"relevant_ids\": [\"node_1\"]}"
)
BEIR_LAYOUT = "a BEIR folder holds corpus.jsonl, queries.jsonl and qrels/SPLIT.tsv, e.g. qrels/test.tsv"

OnUnknown = Literal["error", "drop"]
LOG_ID_SEPARATOR = ";"


# ---------------------------------------------------------------------------------------------
# Validation shared by every reader and by the conversions in ``questions``
# ---------------------------------------------------------------------------------------------


def validate_query_relevance(
    queries: Sequence[str],
    relevance: Sequence[Sequence[Any]],
    known_ids: Collection[str] | None = None,
) -> tuple[list[str], Relevance]:
    """Check ``queries``/``relevance`` and return them normalised to ``(str, float)`` pairs
    (:func:`llama_index_deepmemory.relevance.validate_relevance`; an entry may also be a bare
    node id, weight 1). With ``known_ids``, every id must be one of them."""
    clean_queries, clean_relevance = validate_relevance(queries, relevance, known_ids=known_ids, bare_ids=True)
    return clean_queries, clean_relevance


# ---------------------------------------------------------------------------------------------
# Query logs
# ---------------------------------------------------------------------------------------------


@dataclass
class _LogRow:
    where: str  # "path:line"
    query: str
    pairs: list[tuple[str, float]]


def read_query_log(
    path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    known_ids: Collection[str] | None = None,
    on_unknown: OnUnknown = "error",
    merge_duplicates: bool = True,
    query_field: str = "query",
    ids_field: str = "relevant_ids",
    weight_field: str = "weight",
) -> tuple[list[str], Relevance]:
    """Read a query log (``.jsonl``/``.ndjson`` or ``.csv``) into ``(queries, relevance)``.

    Args:
        path: the log file (the format follows the suffix), or several, read in order as one log.
        known_ids: the valid node ids (e.g. the store's); ids outside it are errors, or are
            dropped with ``on_unknown="drop"`` (queries left without ids are dropped too).
        merge_duplicates: rows with the same query text (in any of the files) become one query
            (first-seen order) whose ids are the union, keeping the highest weight per id.
        query_field, ids_field, weight_field: the field/column names.

    Raises:
        ValueError naming ``path:line`` and the field for malformed rows or unknown ids.
    """
    paths = [Path(path)] if isinstance(path, (str, os.PathLike)) else [Path(one) for one in path]
    if not paths:
        raise ValueError("no query log given: pass a .jsonl/.ndjson or .csv file, or a list of them")
    if on_unknown not in ("error", "drop"):
        raise ValueError(f"on_unknown must be 'error' or 'drop', got {on_unknown!r}")
    rows: list[_LogRow] = []
    for one in paths:
        suffix = one.suffix.lower()
        if suffix in (".jsonl", ".ndjson"):
            rows.extend(_jsonl_log_rows(one, query_field, ids_field, weight_field))
        elif suffix == ".csv":
            rows.extend(_csv_log_rows(one, query_field, ids_field, weight_field))
        else:
            raise ValueError(f"unknown query log format {one.name!r}: use a .jsonl/.ndjson or .csv file")
    if known_ids is not None:
        rows = _check_known(rows, known_ids, on_unknown)
    if not rows:
        raise ValueError(f"{', '.join(map(str, paths))}: no queries found (empty log)")
    queries, relevance = [row.query for row in rows], [row.pairs for row in rows]
    if merge_duplicates:  # the one merge: first-seen order, union of ids, largest weight per id
        from llama_index_deepmemory.deep_memory.training_record import merge_query_relevance

        return merge_query_relevance((queries, relevance))
    return queries, relevance


def write_query_log(path: str | os.PathLike[str], queries: Sequence[str], relevance: Sequence[Sequence[Any]]) -> None:
    """Write ``(queries, relevance)`` as a JSONL query log (atomically) that :func:`read_query_log` reads back."""
    clean_queries, clean_relevance = validate_query_relevance(queries, relevance)
    lines = [
        json.dumps({"query": query, "relevant_ids": [[doc_id, weight] for doc_id, weight in pairs]}, ensure_ascii=False)
        for query, pairs in zip(clean_queries, clean_relevance)
    ]
    write_text_atomic(path, "\n".join(lines) + "\n")


def _jsonl_log_rows(path: Path, query_field: str, ids_field: str, weight_field: str) -> Iterator[_LogRow]:
    for line_number, record in _read_jsonl(path):
        where = f"{path}:{line_number}"
        query = _log_query(record.get(query_field), where, query_field)
        default = 1.0
        if record.get(weight_field) is not None:
            default = check_weight(record[weight_field], f"{where}: field {weight_field!r}")
        pairs = _log_ids(record.get(ids_field), default, where, ids_field)
        yield _LogRow(where, query, pairs)


def _log_query(value: Any, where: str, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: field {name!r} must be a non-empty string, got {shown(value)}")
    return value.strip()


def _log_ids(value: Any, default: float, where: str, name: str) -> list[tuple[str, float]]:
    label = f"{where}: field {name!r}"
    if isinstance(value, str):
        items: list[Any] = [value]
    elif isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list):
        items = value
    else:
        raise ValueError(f"{label} must be an id, a list of ids, [id, weight] pairs or {{id: weight}}, got {shown(value)}")
    pairs = []
    for item in items:
        if isinstance(item, str):
            pairs.append(check_pair((item, default), label))
        elif isinstance(item, (list, tuple)) and len(item) == 2:
            pairs.append(check_pair(tuple(item), label))
        else:
            raise ValueError(f"{label}: each entry must be an id or an [id, weight] pair, got {shown(item)}")
    if not pairs:
        raise ValueError(f"{label} is empty; every query needs at least one relevant id")
    return _with_relevant(pairs, label)


def _with_relevant(pairs: list[tuple[str, float]], label: str) -> list[tuple[str, float]]:
    """``pairs``, or ValueError when none has a weight > 0 (a query needs a relevant id)."""
    if not has_relevant(w for _, w in pairs):
        raise ValueError(f"{label} gives every id the weight 0; give at least one relevant id a weight > 0")
    return pairs


def _csv_log_rows(path: Path, query_field: str, ids_field: str, weight_field: str) -> Iterator[_LogRow]:
    with io.StringIO(utf8_text(path), newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        for required in (query_field, ids_field):
            if required not in header:
                raise ValueError(f"{path}:1: missing column {required!r} (header: {header})")
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if None in row:
                raise ValueError(f"{where}: more cells than header columns ({len(header)})")
            query = _log_query(row.get(query_field), where, query_field)
            ids = [part.strip() for part in (row.get(ids_field) or "").split(LOG_ID_SEPARATOR) if part.strip()]
            if not ids:
                raise ValueError(f"{where}: column {ids_field!r} is empty; list ids separated by {LOG_ID_SEPARATOR!r}")
            label = f"{where}: column {weight_field!r}"
            weights = _csv_weights(row.get(weight_field), len(ids), label)
            yield _LogRow(where, query, _with_relevant(list(zip(ids, weights)), label))


def _csv_weights(cell: str | None, count: int, where: str) -> list[float]:
    if cell is None or not cell.strip():
        return [1.0] * count
    parts = [part.strip() for part in cell.split(LOG_ID_SEPARATOR)]
    if len(parts) not in (1, count):
        raise ValueError(f"{where}: {len(parts)} weights for {count} ids; give one weight or one per id")
    try:
        numbers = [float(part) for part in parts]
    except ValueError:
        raise ValueError(f"{where}: the weight must be a number >= 0, got {cell!r}") from None
    values = [check_weight(number, where) for number in numbers]
    return values * count if len(values) == 1 else values


def _check_known(rows: list[_LogRow], known_ids: Collection[str], on_unknown: OnUnknown) -> list[_LogRow]:
    known = known_ids if isinstance(known_ids, (set, frozenset, dict)) else set(known_ids)
    kept = []
    dropped = 0
    for row in rows:
        unknown = [doc_id for doc_id, _ in row.pairs if doc_id not in known]
        if unknown and on_unknown == "error":
            raise ValueError(
                f"{row.where}: unknown ids {unknown[:5]} (not among the {len(known)} known ids); "
                "fix the log or pass on_unknown='drop'"
            )
        dropped += len(unknown)
        pairs = [pair for pair in row.pairs if pair[0] in known]
        if has_relevant(w for _, w in pairs):  # a query left with only 0-weight ids is dropped too
            kept.append(_LogRow(row.where, row.query, pairs))
    if dropped:
        logger.warning("dropped %d unknown ids; %d of %d queries left", dropped, len(kept), len(rows))
    return kept


# ---------------------------------------------------------------------------------------------
# BEIR folders
# ---------------------------------------------------------------------------------------------


@dataclass
class BeirDataset:
    """A BEIR-format dataset: the corpus, all queries and per-split relevance judgements.

    ``corpus``: doc id -> ``(title, text)``; ``queries``: query id -> text;
    ``qrels``: split -> query id -> {doc id: score} (only scores > 0, file order).
    """

    folder: Path
    corpus: dict[str, tuple[str, str]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

    @property
    def splits(self) -> list[str]:
        return list(self.qrels)

    def doc_text(self, doc_id: str, include_title: bool = True) -> str:
        title, text = self.corpus[doc_id]
        return f"{title}\n{text}" if include_title and title else text

    def nodes(self, include_title: bool = True) -> "list[TextNode]":
        """One ``TextNode`` per document, id = BEIR doc id, title in metadata (not embedded twice)."""
        from llama_index.core.schema import TextNode

        return self._as(TextNode, include_title)

    def documents(self, include_title: bool = True) -> "list[Document]":
        """Like :meth:`nodes` but as ``Document`` objects (to chunk further)."""
        from llama_index.core.schema import Document

        return self._as(Document, include_title)

    def _as(self, cls: type, include_title: bool) -> list:
        return [
            cls(
                id_=doc_id,
                text=self.doc_text(doc_id, include_title),
                metadata={"title": title} if title else {},
                excluded_embed_metadata_keys=["title"],
                excluded_llm_metadata_keys=["title"],
            )
            for doc_id, (title, _text) in self.corpus.items()
        ]

    def query_ids(self, split: str) -> list[str]:
        """The ids of the queries judged in ``split``, in qrels file order."""
        return list(self._split(split))

    def query_relevance(self, split: str) -> tuple[list[str], Relevance]:
        """``(queries, relevance)`` of ``split`` for ``deep_memory.train``/``evaluate``."""
        judged = self._split(split)
        return [self.queries[qid] for qid in judged], [list(docs.items()) for docs in judged.values()]

    def qa_dataset(self, split: str, include_title: bool = True) -> "EmbeddingQAFinetuneDataset":
        """``split`` as an :class:`EmbeddingQAFinetuneDataset` (corpus = the whole corpus)."""
        from llama_index_deepmemory.data.qa_dataset import EmbeddingQAFinetuneDataset

        judged = self._split(split)
        return EmbeddingQAFinetuneDataset(
            queries={qid: self.queries[qid] for qid in judged},
            corpus={doc_id: self.doc_text(doc_id, include_title) for doc_id in self.corpus},
            relevant_docs={qid: list(docs) for qid, docs in judged.items()},
        )

    def _split(self, split: str) -> dict[str, dict[str, float]]:
        if split not in self.qrels:
            raise ValueError(f"unknown split {split!r} for {self.folder}; available: {self.splits}")
        return self.qrels[split]


def load_beir(
    folder: str | os.PathLike[str],
    splits: Sequence[str] | None = None,
    *,
    on_unknown: OnUnknown = "error",
) -> BeirDataset:
    """Read a BEIR folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``).

    ``splits``: which qrels files to read (default: every ``qrels/*.tsv``). Qrels naming unknown
    query or doc ids raise ValueError with ``file:line``, or are dropped with ``on_unknown="drop"``.
    """
    folder = Path(folder)
    if on_unknown not in ("error", "drop"):
        raise ValueError(f"on_unknown must be 'error' or 'drop', got {on_unknown!r}")
    for name in ("corpus.jsonl", "queries.jsonl", "qrels"):
        if not (folder / name).exists():
            raise ValueError(f"{folder} is not a BEIR folder: {name} is missing ({BEIR_LAYOUT})")
    corpus: dict[str, tuple[str, str]] = {}
    for line_number, record in _read_jsonl(folder / "corpus.jsonl"):
        where = f"{folder / 'corpus.jsonl'}:{line_number}"
        doc_id = _beir_id(record, where)
        if doc_id in corpus:
            raise ValueError(f"{where}: duplicate _id {doc_id!r}")
        title = record.get("title") or ""
        text = record.get("text")
        if not isinstance(text, str) or not isinstance(title, str):
            raise ValueError(f"{where}: fields 'text' and 'title' must be strings, got {shown(text)}, {shown(title)}")
        corpus[doc_id] = (title, text)
    queries: dict[str, str] = {}
    for line_number, record in _read_jsonl(folder / "queries.jsonl"):
        where = f"{folder / 'queries.jsonl'}:{line_number}"
        query_id = _beir_id(record, where)
        if query_id in queries:
            raise ValueError(f"{where}: duplicate _id {query_id!r}")
        text = record.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{where}: field 'text' must be a non-empty string, got {shown(text)}")
        queries[query_id] = text
    names = list(splits) if splits is not None else sorted(p.stem for p in (folder / "qrels").glob("*.tsv"))
    qrels = {name: _read_qrels(folder / "qrels" / f"{name}.tsv", corpus, queries, on_unknown) for name in names}
    logger.info("%s: %d docs, %d queries, splits %s", folder, len(corpus), len(queries), {k: len(v) for k, v in qrels.items()})
    return BeirDataset(folder=folder, corpus=corpus, queries=queries, qrels=qrels)


def _beir_id(record: dict[str, Any], where: str) -> str:
    value = record.get("_id")
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: field '_id' must be a non-empty string, got {shown(value)}")
    return value


def _read_qrels(
    path: Path, corpus: dict[str, Any], queries: dict[str, str], on_unknown: OnUnknown
) -> dict[str, dict[str, float]]:
    if not path.is_file():
        raise ValueError(f"qrels file {path} not found")
    judged: dict[str, dict[str, float]] = {}
    dropped = 0
    for line_number, line in utf8_lines(path):
        if not line.strip():
            continue
        cells = line.rstrip("\r\n").split("\t")
        if line_number == 1 and cells[0] == "query-id":
            continue
        where = f"{path}:{line_number}"
        if len(cells) != 3:
            raise ValueError(f"{where}: expected 3 tab-separated cells (query-id, corpus-id, score), got {len(cells)}")
        query_id, doc_id, score_text = cells
        try:
            score = float(score_text)
        except ValueError:
            raise ValueError(f"{where}: field 'score' must be a number, got {score_text!r}") from None
        if not math.isfinite(score):
            raise ValueError(f"{where}: field 'score' must be finite, got {score_text!r}")
        unknown = "query-id" if query_id not in queries else "corpus-id" if doc_id not in corpus else None
        if unknown is not None:
            if on_unknown == "error":
                value = query_id if unknown == "query-id" else doc_id
                raise ValueError(f"{where}: unknown {unknown} {value!r}; fix the file or pass on_unknown='drop'")
            dropped += 1
            continue
        if score > 0:  # a judgement listed twice keeps its largest score (the one relevance rule)
            docs = judged.setdefault(query_id, {})
            docs[doc_id] = max(score, docs.get(doc_id, 0.0))
    if dropped:
        logger.warning("%s: dropped %d judgements naming unknown ids", path, dropped)
    return judged


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for every non-blank line; ValueError with ``path:line`` otherwise."""
    for line_number, line in utf8_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{line_number}: invalid JSON ({error.msg} at column {error.colno})") from None
        except RecursionError:
            raise ValueError(f"{path}:{line_number}: {JSON_TOO_DEEP}") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{line_number}: expected a JSON object, got {type(record).__name__}")
        yield line_number, record
