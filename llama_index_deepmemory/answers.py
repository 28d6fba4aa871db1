"""Answer-level evaluation: retrieve with and without Deep Memory, answer, judge context recall.

For each test question and each retriever (by default the store without and with Deep Memory),
:func:`evaluate_answers` retrieves the top-k nodes, answers the question from them with any
LlamaIndex LLM, and scores the retrieved context three ways, side by side:

- ``context_recall``: judged by an LLM, as RAGAS ``context_recall`` does: the reference (by
  default the text of the question's relevant nodes) is split into statements and the judge says
  which of them the retrieved context supports; the score is the supported share. With the
  optional ``ragas`` extra installed (``pip install 'llama-index-deepmemory[ragas]'``) RAGAS's own
  ``LLMContextRecall`` judges; otherwise :class:`ContextRecallEvaluator`, a LlamaIndex
  ``BaseEvaluator`` with the same prompt and scoring.
- ``id_context_recall`` / ``id_context_precision``: the share of relevant node ids retrieved and
  the share of retrieved ids that are relevant; no LLM involved.

Judge calls that fail or whose output cannot be parsed are counted (``judge_failures``) and left
out of the mean, never scored as zero; failed answers are counted too (``answer_failures``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Mapping, Sequence

from llama_index_deepmemory.evaluation import gather_bounded

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from llama_index.core.base.base_retriever import BaseRetriever
    from llama_index.core.evaluation import EvaluationResult
    from llama_index.core.llms import LLM

logger = logging.getLogger(__name__)

JudgeName = Literal["auto", "ragas", "llama_index"]
DEFAULT_TOP_K = 5
DEFAULT_WORKERS = 4
MAX_REFERENCE_CHARS = 4000

CONTEXT_RECALL_PROMPT = """\
Given a context and an answer, analyze each statement in the answer and classify if the statement \
can be attributed to the given context or not. Use only binary classification: 1 if the statement \
can be attributed to the context, 0 if it cannot. Give a short reason for each classification.

Return only JSON of this shape, with one entry per statement of the answer:
{{"classifications": [{{"statement": <a statement of the answer>, "reason": <why>, "attributed": <1 or 0>}}]}}

question: {question}

context:
{context}

answer:
{reference}

JSON:"""

ANSWER_PROMPT = """\
Context information is below.
---------------------
{context}
---------------------
Given the context information and not prior knowledge, answer the query.
Query: {question}
Answer: """


class JudgeOutputError(ValueError):
    """The judge's reply could not be read as a list of classified statements."""


# ---------------------------------------------------------------------------------------------
# ID-based metrics (no LLM)
# ---------------------------------------------------------------------------------------------


def id_context_recall(retrieved_ids: Sequence[str], relevant_ids: Sequence[str]) -> float:
    """Share of ``relevant_ids`` found among ``retrieved_ids`` (1.0 = every relevant node retrieved)."""
    relevant = set(relevant_ids)
    if not relevant:
        raise ValueError("relevant_ids is empty; every question needs at least one relevant node id")
    return len(relevant.intersection(retrieved_ids)) / len(relevant)


def id_context_precision(retrieved_ids: Sequence[str], relevant_ids: Sequence[str]) -> float:
    """Share of ``retrieved_ids`` that are relevant (0.0 when nothing was retrieved)."""
    if not retrieved_ids:
        return 0.0
    relevant = set(relevant_ids)
    return sum(1 for node_id in retrieved_ids if node_id in relevant) / len(retrieved_ids)


# ---------------------------------------------------------------------------------------------
# The LlamaIndex judge
# ---------------------------------------------------------------------------------------------


def parse_context_recall(text: str) -> list[bool]:
    """The ``attributed`` flags of a judge reply in :data:`CONTEXT_RECALL_PROMPT`'s JSON shape.

    Accepts a bare JSON object or list, or one inside a Markdown code fence or other prose; each
    classification's ``attributed`` must be 1/0 or true/false. Raises :class:`JudgeOutputError`
    saying what was wrong otherwise (an empty list is an error too: no statements judged).
    """
    data = _first_json(text)
    items = data.get("classifications") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise JudgeOutputError(f"expected a 'classifications' list, got {_clip(text)!r}")
    if not items:
        raise JudgeOutputError("the judge classified no statements")
    flags = []
    for i, item in enumerate(items):
        value = item.get("attributed") if isinstance(item, dict) else None
        if isinstance(value, bool):
            flags.append(value)
        elif isinstance(value, (int, float)) and value in (0, 1):
            flags.append(bool(value))
        elif isinstance(value, str) and value.strip().lower() in ("0", "1", "true", "false", "yes", "no"):
            flags.append(value.strip().lower() in ("1", "true", "yes"))
        else:
            raise JudgeOutputError(f"classification {i} has no 0/1 'attributed' value: {_clip(json.dumps(item))!r}")
    return flags


def _first_json(text: str) -> Any:
    """The first JSON value in ``text`` shaped like classifications (else the first JSON value at all)."""
    if not isinstance(text, str) or not text.strip():
        raise JudgeOutputError("the judge returned an empty reply")
    decoder = json.JSONDecoder()
    first: Any = None
    for match in re.finditer(r"[\[{]", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if (isinstance(value, dict) and "classifications" in value) or (
            isinstance(value, list) and value and all(isinstance(item, dict) for item in value)
        ):
            return value
        first = value if first is None else first
    if first is not None:
        return first
    raise JudgeOutputError(f"no JSON in the judge's reply {_clip(text)!r}")


def _clip(text: str, width: int = 120) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _evaluator_base() -> type:
    from llama_index.core.evaluation import BaseEvaluator

    return BaseEvaluator


class ContextRecallEvaluator(_evaluator_base()):  # type: ignore[misc]
    """LLM-judged context recall as a LlamaIndex evaluator (RAGAS ``context_recall``'s method).

    ``aevaluate(query=..., contexts=[...], reference="...")`` asks ``llm`` which statements of the
    reference the contexts support and scores the supported share. A failed call or an unreadable
    reply gives ``invalid_result=True`` with the reason, never a score of 0.
    """

    def __init__(self, llm: "LLM", prompt: str = CONTEXT_RECALL_PROMPT) -> None:
        self._llm = llm
        self._prompt = prompt

    def _get_prompts(self) -> dict[str, Any]:
        from llama_index.core.prompts import PromptTemplate

        return {"context_recall": PromptTemplate(self._prompt)}

    def _get_prompt_modules(self) -> dict[str, Any]:
        return {}

    def _update_prompts(self, prompts: dict[str, Any]) -> None:
        if "context_recall" in prompts:
            self._prompt = prompts["context_recall"].get_template()

    async def aevaluate(
        self,
        query: str | None = None,
        response: str | None = None,
        contexts: Sequence[str] | None = None,
        reference: str | None = None,
        **kwargs: Any,
    ) -> "EvaluationResult":
        from llama_index.core.evaluation import EvaluationResult

        if not query or not reference:
            raise ValueError("context recall needs the question (query=...) and a reference answer (reference=...)")
        contexts = list(contexts or [])
        prompt = self._prompt.format(question=query, context="\n\n".join(contexts) or "NULL", reference=reference)
        try:
            reply = await self._llm.acomplete(prompt)
            flags = parse_context_recall(str(reply))
        except Exception as exc:  # noqa: BLE001 - any judge failure is recorded, not raised
            reason = f"{type(exc).__name__}: {exc}"
            return EvaluationResult(query=query, contexts=contexts, response=response, invalid_result=True,
                                    invalid_reason=_clip(reason, 300))
        score = sum(flags) / len(flags)
        return EvaluationResult(
            query=query, contexts=contexts, response=response, score=score, passing=score >= 0.5,
            feedback=f"{sum(flags)} of {len(flags)} reference statements supported by the context",
        )


# ---------------------------------------------------------------------------------------------
# The RAGAS judge (optional extra)
# ---------------------------------------------------------------------------------------------


def ragas_available() -> bool:
    """True when the optional ``ragas`` package can be imported."""
    import importlib.util

    return importlib.util.find_spec("ragas") is not None


class _RagasContextRecall:
    """RAGAS's ``LLMContextRecall`` with a LlamaIndex LLM (tracking off: ``RAGAS_DO_NOT_TRACK``)."""

    def __init__(self, llm: "LLM") -> None:
        import warnings

        os.environ.setdefault("RAGAS_DO_NOT_TRACK", "true")
        try:
            with warnings.catch_warnings():  # ragas 0.4 deprecates these in favour of OpenAI-only llm_factory
                warnings.simplefilter("ignore", DeprecationWarning)
                from ragas.dataset_schema import SingleTurnSample
                from ragas.llms import LlamaIndexLLMWrapper
                from ragas.metrics import LLMContextRecall
                from ragas.run_config import RunConfig

                wrapper = LlamaIndexLLMWrapper(llm, run_config=RunConfig(max_retries=1, max_wait=2))
        except ImportError as exc:
            raise ImportError(
                f"judge='ragas' needs a ragas with LLMContextRecall and LlamaIndexLLMWrapper ({exc}); "
                "pip install 'llama-index-deepmemory[ragas]' or use judge='llama_index'"
            ) from exc
        # one attempt per call (max_retries=1): the LLM client retries itself, and a failure is counted,
        # not retried for minutes
        self._sample = SingleTurnSample
        self._metric = LLMContextRecall(llm=wrapper)

    async def aevaluate(self, query: str, contexts: Sequence[str], reference: str, **_: Any) -> "EvaluationResult":
        from llama_index.core.evaluation import EvaluationResult

        contexts = list(contexts)
        try:
            sample = self._sample(user_input=query, retrieved_contexts=contexts or ["NULL"], reference=reference)
            score = await self._metric.single_turn_ascore(sample)
        except Exception as exc:  # noqa: BLE001 - recorded as a judge failure
            return EvaluationResult(query=query, contexts=contexts, invalid_result=True,
                                    invalid_reason=_clip(f"{type(exc).__name__}: {exc}", 300))
        if score is None or not math.isfinite(float(score)):
            return EvaluationResult(query=query, contexts=contexts, invalid_result=True,
                                    invalid_reason="ragas returned no score (its judge output could not be parsed)")
        return EvaluationResult(query=query, contexts=contexts, score=float(score), passing=float(score) >= 0.5)


def _check_judge(judge: Any) -> None:
    """ValueError naming ``judge`` unless it names a judge."""
    if judge not in ("auto", "ragas", "llama_index"):
        raise ValueError(f"judge must be 'auto', 'ragas' or 'llama_index', got {judge!r}")


def make_judge(llm: "LLM", judge: JudgeName = "auto") -> tuple[str, Any]:
    """``(name, evaluator)`` for ``judge``: ``"ragas"`` when installed (``"auto"``), else LlamaIndex's path."""
    _check_judge(judge)
    if judge == "ragas":
        return "ragas", _RagasContextRecall(llm)
    if judge == "auto" and ragas_available():
        try:
            return "ragas", _RagasContextRecall(llm)
        except ImportError as exc:  # installed but broken (e.g. against a newer langchain)
            logger.warning("ragas is installed but unusable (%s); judging with the LlamaIndex evaluator", exc)
    return "llama_index", ContextRecallEvaluator(llm)


# ---------------------------------------------------------------------------------------------
# The evaluation
# ---------------------------------------------------------------------------------------------


@dataclass
class AnswerRecord:
    """One question answered with one retriever."""

    retriever: str
    query_id: str
    question: str
    retrieved_ids: list[str]
    relevant_ids: list[str]
    answer: str | None = None
    answer_error: str | None = None
    context_recall: float | None = None  # None: not judged or the judge failed
    judge_error: str | None = None
    id_context_recall: float = 0.0
    id_context_precision: float = 0.0


@dataclass
class AnswerEvaluation:
    """The result of :func:`evaluate_answers`: a side-by-side table plus every per-question record."""

    table: "pd.DataFrame"
    records: list[AnswerRecord] = field(default_factory=list)
    judge: str | None = None

    def per_question(self) -> "pd.DataFrame":
        """One row per (retriever, question) with the answer, the ids and each score."""
        import pandas as pd

        return pd.DataFrame([asdict(record) for record in self.records])

    def __str__(self) -> str:
        return self.table.to_string(index=False, float_format=lambda v: f"{v:.3f}")

    def every_answer_failed(self) -> str | None:
        """One line naming the first error when the LLM failed every answer it was asked for, else None."""
        asked = [r for r in self.records if r.answer is not None or r.answer_error is not None]
        failed = [r for r in asked if r.answer_error is not None]
        if not asked or len(failed) < len(asked):
            return None
        return (f"every answer failed ({len(failed)} of {len(asked)}; the first: {failed[0].answer_error}); "
                "check OPENAI_API_KEY, OPENAI_API_BASE and the model name")


def _dataset_rows(
    qa_dataset: Any, references: Mapping[str, str] | None, judged: bool, store: Any = None
) -> list[tuple[str, str, list[str], str | None]]:
    """``(query_id, question, relevant_ids, reference)`` per question of the dataset.

    The default reference is the relevant nodes' text: from the dataset's corpus, else the store.
    """
    from llama_index_deepmemory.evaluation import dataset_items

    items = dataset_items(qa_dataset)
    corpus = dict(getattr(qa_dataset, "corpus", None) or {})
    if judged and store is not None:
        wanted = sorted({node_id for qid, _, relevant in items for node_id in relevant
                         if node_id not in corpus and (references is None or qid not in references)})
        if wanted:
            corpus.update({node.node_id: node.get_content() for node in store.get_nodes(node_ids=wanted)})
    rows = []
    for query_id, question, relevant in items:
        reference = None
        if references is not None and query_id in references:
            reference = str(references[query_id])
        elif judged:
            texts = [corpus[node_id] for node_id in relevant if node_id in corpus]
            if not texts:
                raise ValueError(
                    f"no reference for question {query_id!r}: its relevant nodes {relevant[:3]} are neither in the "
                    "dataset's corpus nor in the store; pass references={query_id: reference answer} or judge_llm=None"
                )
            reference = "\n".join(texts)[:MAX_REFERENCE_CHARS]
        if judged and not (reference or "").strip():
            raise ValueError(f"the reference for question {query_id!r} is empty; give it a reference answer")
        rows.append((query_id, question, relevant, reference))
    return rows


def _retrievers_for(source: Any, top_k: int) -> tuple[dict[str, "BaseRetriever"], Any]:
    """``(retrievers to compare, the store or None)``: a mapping as given, or a store/index without
    and with Deep Memory."""
    if isinstance(source, Mapping):
        if not source:
            raise ValueError("no retrievers given; pass e.g. {'without deep memory': r1, 'with deep memory': r2}")
        return dict(source), None
    from llama_index.core import VectorStoreIndex

    if isinstance(source, VectorStoreIndex):
        index = source
        store = index.vector_store
    elif hasattr(source, "deep_memory") and hasattr(source, "query"):
        store = source
        index = VectorStoreIndex.from_vector_store(store, embed_model=getattr(store, "embed_model", None))
    else:
        raise TypeError(
            f"evaluate_answers needs a DeepMemoryVectorStore, a VectorStoreIndex over one, or a mapping of "
            f"name -> retriever; got {type(source).__name__}"
        )
    deep_memory = getattr(store, "deep_memory", None)
    if deep_memory is None:
        raise TypeError(f"the index's vector store ({type(store).__name__}) has no Deep Memory; use a DeepMemoryVectorStore")
    modes = {"without deep memory": False}
    if deep_memory.get_model() is not None:
        modes["with deep memory"] = True
    else:
        logger.warning("No active Deep Memory model in the store: evaluating the plain store only (train first).")
    retrievers = {
        name: index.as_retriever(similarity_top_k=top_k, vector_store_kwargs={"deep_memory": use})
        for name, use in modes.items()
    }
    return retrievers, store


async def aevaluate_answers(
    source: Any,
    qa_dataset: Any,
    llm: "LLM | None",
    *,
    judge_llm: "LLM | None | Literal['same']" = "same",
    judge: JudgeName = "auto",
    references: Mapping[str, str] | None = None,
    top_k: int = DEFAULT_TOP_K,
    workers: int = DEFAULT_WORKERS,
    show_progress: bool = False,
) -> AnswerEvaluation:
    """Async :func:`evaluate_answers`."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive int, got {top_k!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    if isinstance(judge_llm, str) and judge_llm != "same":
        raise ValueError(f"judge_llm must be an LLM, None or 'same', got {judge_llm!r}")
    from llama_index.core.base.llms.base import BaseLLM

    for what, given in (("llm", llm), ("judge_llm", None if isinstance(judge_llm, str) else judge_llm)):
        if given is not None and not isinstance(given, BaseLLM):
            raise TypeError(f"{what} must be a LlamaIndex LLM (e.g. OpenAI(model='gpt-4o-mini')) or None, got {given!r}")
    _check_judge(judge)  # also when nothing is judged (a misspelt name is still a mistake)
    judge_model = llm if isinstance(judge_llm, str) else judge_llm
    judge_name, evaluator = (None, None) if judge_model is None else make_judge(judge_model, judge)  # type: ignore[arg-type]
    retrievers, store = _retrievers_for(source, top_k)
    rows = _dataset_rows(qa_dataset, references, judged=evaluator is not None, store=store)

    records: list[AnswerRecord] = []
    for name, retriever in retrievers.items():

        def factory(row: tuple[str, str, list[str], str | None], name: str = name, retriever: Any = retriever):
            return lambda: _evaluate_one(name, retriever, row, llm, evaluator)

        mine = await gather_bounded([factory(row) for row in rows], workers, name, show_progress, unit="question")
        _warn_failures(name, mine)
        records.extend(mine)
    table = answer_table(records, list(retrievers))
    for line in table.to_string(index=False).splitlines():
        logger.info(line)
    return AnswerEvaluation(table=table, records=records, judge=judge_name)


async def _evaluate_one(
    name: str, retriever: Any, row: tuple[str, str, list[str], str | None], llm: Any, evaluator: Any
) -> AnswerRecord:
    query_id, question, relevant, reference = row
    nodes = await retriever.aretrieve(question)  # retrieval errors are the caller's to see
    ids = [scored.node.node_id for scored in nodes]
    contexts = [scored.node.get_content() for scored in nodes]
    record = AnswerRecord(
        retriever=name, query_id=query_id, question=question, retrieved_ids=ids, relevant_ids=list(relevant),
        id_context_recall=id_context_recall(ids, relevant), id_context_precision=id_context_precision(ids, relevant),
    )
    if llm is not None:
        try:
            reply = await llm.acomplete(ANSWER_PROMPT.format(context="\n\n".join(contexts), question=question))
            record.answer = str(reply).strip()
        except Exception as exc:  # noqa: BLE001 - counted as an answer failure
            record.answer_error = _clip(f"{type(exc).__name__}: {exc}", 300)
            logger.info("answering %r with %s failed: %s", question, name, record.answer_error)
    if evaluator is not None:
        result = await evaluator.aevaluate(query=question, response=record.answer, contexts=contexts, reference=reference)
        if result.invalid_result or result.score is None:
            record.judge_error = result.invalid_reason or "the judge gave no score"
            logger.info("judging %r with %s failed: %s", question, name, record.judge_error)
        else:
            record.context_recall = float(result.score)
    return record


def _warn_failures(name: str, records: Sequence[AnswerRecord]) -> None:
    """One warning per retriever and kind of failure (not one per question), naming the first error."""
    for what, errors in (("answering", [r.answer_error for r in records if r.answer_error is not None]),
                         ("judging", [r.judge_error for r in records if r.judge_error is not None])):
        if errors:
            logger.warning("%s failed for %d of %d questions with %s (the first: %s)", what, len(errors), len(records),
                           name, errors[0])


def answer_table(records: Sequence[AnswerRecord], names: Sequence[str] | None = None) -> "pd.DataFrame":
    """One row per retriever (``display_results`` layout): means of each score plus failure counts.

    ``context_recall`` is the mean over the questions the judge scored (NaN if none); ``judged``
    and ``judge_failures`` say how many those were; ``answer_failures`` counts failed answers.
    """

    names = list(names) if names is not None else list(dict.fromkeys(r.retriever for r in records))
    rows = []
    for name in names:
        mine = [r for r in records if r.retriever == name]
        if not mine:
            raise ValueError(f"no records for retriever {name!r}")
        scores = [r.context_recall for r in mine if r.context_recall is not None]
        rows.append({
            "retrievers": name,
            "context_recall": sum(scores) / len(scores) if scores else math.nan,
            "id_context_recall": sum(r.id_context_recall for r in mine) / len(mine),
            "id_context_precision": sum(r.id_context_precision for r in mine) / len(mine),
            "questions": len(mine),
            "judged": len(scores),
            "judge_failures": sum(1 for r in mine if r.judge_error is not None),
            "answer_failures": sum(1 for r in mine if r.answer_error is not None),
        })
    from llama_index_deepmemory.tables import FullTable

    return FullTable(rows)


def evaluate_answers(
    source: Any,
    qa_dataset: Any,
    llm: "LLM | None",
    *,
    judge_llm: "LLM | None | Literal['same']" = "same",
    judge: JudgeName = "auto",
    references: Mapping[str, str] | None = None,
    top_k: int = DEFAULT_TOP_K,
    workers: int = DEFAULT_WORKERS,
    show_progress: bool = False,
) -> AnswerEvaluation:
    """Answer every question of ``qa_dataset`` with and without Deep Memory and compare, side by side.

    Args:
        source: a ``DeepMemoryVectorStore`` or a ``VectorStoreIndex`` over one (compared without and,
            when a model is active, with Deep Memory at ``top_k``), or a mapping name -> retriever.
        qa_dataset: an ``EmbeddingQAFinetuneDataset`` (questions, relevant node ids, corpus texts).
        llm: the LlamaIndex LLM that answers (``None``: no answers, only the scores).
        judge_llm: the LLM judging context recall (default: ``llm``; ``None``: ID metrics only).
        judge: ``"auto"`` (RAGAS when the ``ragas`` extra is installed), ``"ragas"`` or ``"llama_index"``.
        references: query id -> reference answer for the judge (default: the relevant nodes' text).
        workers: questions in flight at once (retrieve + answer + judge).

    Returns:
        :class:`AnswerEvaluation`; ``.table`` is the side-by-side DataFrame, ``.per_question()`` the details.
    """
    from llama_index.core.async_utils import asyncio_run

    return asyncio_run(aevaluate_answers(
        source, qa_dataset, llm, judge_llm=judge_llm, judge=judge, references=references, top_k=top_k,
        workers=workers, show_progress=show_progress,
    ))
