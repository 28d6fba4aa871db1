"""``EmbeddingQAFinetuneDataset``: queries, corpus and relevance judgements in LlamaIndex's JSON format.

The type left llama-index-core (0.14) with ``generate_question_context_pairs``; it is re-implemented
here with the same fields and file format. It depends on nothing else in ``data`` (the readers in
:mod:`~llama_index_deepmemory.data.datasets` build it, :mod:`~llama_index_deepmemory.data.questions`
generates and converts it).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from pydantic import BaseModel, ValidationError

from llama_index_deepmemory.atomic import write_text_atomic
from llama_index_deepmemory.data.text_files import utf8_text

logger = logging.getLogger(__name__)


class EmbeddingQAFinetuneDataset(BaseModel):
    """Queries, corpus and relevance judgements, as LlamaIndex's class of the same name.

    Args:
        queries: query id -> query text.
        corpus: node id -> node text.
        relevant_docs: query id -> relevant node ids.
        mode: ``"text"`` (kept for file compatibility).

    The JSON file (``save_json``/``from_json``) is LlamaIndex's format unchanged (the four keys
    above), so files written by either library load in the other.
    """

    queries: dict[str, str]
    corpus: dict[str, str]
    relevant_docs: dict[str, list[str]]
    mode: str = "text"

    @property
    def query_docid_pairs(self) -> list[tuple[str, list[str]]]:
        """``(query text, relevant node ids)`` per query."""
        return [(query, self.relevant_docs[query_id]) for query_id, query in self.queries.items()]

    def check_references(self) -> None:
        """ValueError unless every query has relevant ids, every judgement a query, and every
        relevant id is in the corpus (when the corpus is not empty)."""
        missing = [qid for qid in self.queries if not self.relevant_docs.get(qid)]
        if missing:
            raise ValueError(f"queries without relevant_docs: {missing[:5]} ({len(missing)} in all)")
        orphans = [qid for qid in self.relevant_docs if qid not in self.queries]
        if orphans:
            raise ValueError(f"relevant_docs for unknown query ids: {orphans[:5]} ({len(orphans)} in all)")
        if self.corpus:
            unknown = sorted({d for ids in self.relevant_docs.values() for d in ids if d not in self.corpus})
            if unknown:
                raise ValueError(f"relevant_docs name ids missing from the corpus: {unknown[:5]} ({len(unknown)} in all)")

    def save_json(self, path: str | os.PathLike[str]) -> None:
        """Write the dataset as JSON (atomically: a file beside it, fsync, rename)."""
        write_text_atomic(path, json.dumps(self.model_dump(), indent=4, ensure_ascii=False))

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> "EmbeddingQAFinetuneDataset":
        """Load a dataset written by :meth:`save_json` or by LlamaIndex; ValueError when malformed."""
        path = Path(path)
        try:
            data = json.loads(utf8_text(path))  # a byte-order mark (Notepad, PowerShell) is dropped
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{error.lineno}: invalid JSON ({error.msg})") from None
        except RecursionError:
            raise ValueError(f"{path}: JSON nested deeper than Python's parser allows (about 1,000 levels)") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object with queries/corpus/relevant_docs, got {type(data).__name__}")
        missing = [key for key in ("queries", "corpus", "relevant_docs") if key not in data]
        if missing:
            raise ValueError(f"{path}: missing field(s) {missing}; not an EmbeddingQAFinetuneDataset file")
        try:
            dataset = cls.model_validate(data)
        except ValidationError as error:
            first = error.errors()[0]
            field_path = ".".join(str(part) for part in first["loc"])
            raise ValueError(f"{path}: field {field_path!r}: {first['msg']} (got {first.get('input')!r:.80})") from None
        try:
            dataset.check_references()
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
        return dataset
