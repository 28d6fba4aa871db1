"""Synthetic questions per chunk, and conversions to and from ``EmbeddingQAFinetuneDataset``.

``generate_question_context_pairs`` and ``EmbeddingQAFinetuneDataset`` left llama-index-core
(0.14) and the package that kept them (llama-index-finetuning) no longer imports. They are
re-implemented here with the same prompt template, the same output parsing (one question per
line, leading ``1.``/``2)`` numbers stripped, blank lines dropped, at most
``num_questions_per_chunk`` kept; a preamble line ending with ``:`` is dropped too) and the same
JSON file format, plus progress, retries and resuming from a partial file.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping, Sequence

from llama_index_deepmemory.data.datasets import validate_query_relevance
from llama_index_deepmemory.data.qa_dataset import EmbeddingQAFinetuneDataset  # noqa: F401 - also imported from here

if TYPE_CHECKING:  # pragma: no cover
    from llama_index.core.llms import LLM
    from llama_index.core.schema import BaseNode

logger = logging.getLogger(__name__)

# The template of llama-index-core's (legacy) generate_qa_embedding_pairs, unchanged.
DEFAULT_QA_GENERATE_PROMPT_TMPL = """\
Context information is below.

---------------------
{context_str}
---------------------

Given the context information and not prior knowledge.
generate only questions based on the below query.

You are a Teacher/ Professor. Your task is to setup \
{num_questions_per_chunk} questions for an upcoming \
quiz/examination. The questions should be diverse in nature \
across the document. Restrict the questions to the \
context information provided."
"""

# Question ids are uuid5(node id, position): the same node gets the same ids on every run.
QUESTION_ID_NAMESPACE = uuid.UUID("6f0c1f5e-7d0b-4d8e-9a53-3c1f0d7e2b41")
_LEADING_NUMBER = re.compile(r"^\d+[\).\s]")


class QuestionGenerationError(RuntimeError):
    """The LLM failed (errors or no questions) for a chunk after every retry."""


class PermanentLLMError(QuestionGenerationError):
    """The LLM rejected a request in a way retrying cannot fix (credentials, permissions, model
    name, request format); generation stops at the first such error."""


class LLMUnreachableError(PermanentLLMError):
    """Consecutive LLM calls failed to connect (a wrong address, or the server is down); generation
    stops instead of retrying every node."""


# HTTP statuses worth retrying: timeout, conflict/lock, too early, rate limit (and every 5xx).
TRANSIENT_STATUS = frozenset({408, 409, 425, 429})
# Client exceptions (matched by class name, so no client library is imported) that no retry fixes.
PERMANENT_ERROR_NAMES = frozenset({
    "AuthenticationError", "PermissionDeniedError", "BadRequestError", "NotFoundError", "UnprocessableEntityError",
})
TRANSIENT_ERROR_NAMES = frozenset({
    "APIConnectionError", "APITimeoutError", "RateLimitError", "InternalServerError", "TimeoutError",
    "ConnectionError", "TimeoutException", "TransportError", "ServiceUnavailableError",
})
# Client exceptions meaning the request never reached a server (a timeout counts: nothing answered).
CONNECTION_ERROR_NAMES = frozenset({
    "APIConnectionError", "APITimeoutError", "ConnectError", "ConnectTimeout", "ConnectionError", "TimeoutException",
})
DEFAULT_MAX_CONNECTION_FAILURES = 3
_CREDENTIAL_WORDS = ("missing credentials", "api key", "api_key", "unauthorized", "invalid authentication")


def _status_code(error: BaseException) -> int | None:
    """The HTTP status an LLM client error carries (``status_code`` or ``response.status_code``)."""
    for holder in (error, getattr(error, "response", None)):
        status = getattr(holder, "status_code", None)
        if isinstance(status, int) and not isinstance(status, bool):
            return status
    return None


def is_permanent_error(error: BaseException) -> bool:
    """True for LLM errors that retrying cannot fix: HTTP 4xx other than 408/409/425/429,
    authentication/permission/bad-request/not-found errors, client configuration errors (an
    ``OpenAIError`` that is not an API error, e.g. missing credentials) and messages about a
    missing or invalid API key. Timeouts, connection errors, 429 and 5xx are transient."""
    status = _status_code(error)
    if status is not None:
        return 400 <= status < 500 and status not in TRANSIENT_STATUS
    names = {cls.__name__ for cls in type(error).__mro__}
    if names & PERMANENT_ERROR_NAMES:
        return True
    if names & TRANSIENT_ERROR_NAMES:
        return False
    if "OpenAIError" in names and "APIError" not in names:
        return True
    message = str(error).lower()
    return any(word in message for word in _CREDENTIAL_WORDS)


def is_connection_error(error: BaseException) -> bool:
    """True when the LLM call never reached a server: connection refused, DNS failure, timeout."""
    names = {cls.__name__ for cls in type(error).__mro__}
    return bool(names & CONNECTION_ERROR_NAMES) and _status_code(error) is None


def llm_address(error: BaseException | None, llm: Any = None) -> str:
    """Where the failed call went: the request URL an HTTP client error carries, else the LLM's
    ``api_base`` (``OPENAI_API_BASE``), else ``"the LLM's default endpoint"``."""
    url = getattr(getattr(error, "request", None), "url", None)
    if url:
        return str(url)
    for name in ("api_base", "base_url"):
        value = getattr(llm, name, None)
        if value:
            return str(value)
    return "the LLM's default endpoint"


class _ConnectionFailures:
    """Consecutive failed connections across every worker; any answer from the server resets it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._count = 0
        self._lock = threading.Lock()

    def failed(self) -> bool:
        """Count one failure; True when ``limit`` failures in a row are reached."""
        with self._lock:
            self._count += 1
            return self._count >= self.limit

    def answered(self) -> None:
        with self._lock:
            self._count = 0


def _unreachable_message(error: BaseException, llm: Any, failures: int) -> str:
    detail = " ".join(f"{type(error).__name__}: {error}".split())[:200]
    return (
        f"question generation stopped: {failures} LLM calls in a row could not reach {llm_address(error, llm)} "
        f"({detail}); check OPENAI_API_BASE (or the LLM's api_base) and that the server is running"
    )


def _permanent_message(error: BaseException, node_id: str) -> str:
    """One line: what failed, why retrying stopped, and what to check."""
    status = _status_code(error)
    detail = " ".join(f"{type(error).__name__}: {error}".split())
    if len(detail) > 300:
        detail = detail[:299] + "…"
    hint = (
        "check OPENAI_API_KEY (or the LLM's api_key) and that the key may use this model"
        if status in (401, 403) or "credential" in detail.lower() or "api key" in detail.lower() or "api_key" in detail.lower()
        else "check the LLM's model name, endpoint (OPENAI_API_BASE) and settings"
    )
    return (
        f"question generation stopped at node {node_id!r}: the LLM rejected the request ({detail}); "
        f"this error is permanent, so nothing was retried and no more nodes were asked; {hint}. "
        "Without an LLM, train on a query log or a BEIR folder instead (see the README's 'No API key' section)"
    )


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------


def parse_questions(response_text: str, num_questions_per_chunk: int) -> list[str]:
    """Questions in an LLM answer, as LlamaIndex parsed them: one per line, a leading
    ``1.``/``2)``/``3 `` removed, blank lines dropped, the first ``num_questions_per_chunk`` kept.
    A line ending with ``:`` (a preamble such as ``Here are 2 questions:``) is no question and is
    dropped too (kept, it took the place of the last real question)."""
    lines = str(response_text).strip().split("\n")
    questions = [_LEADING_NUMBER.sub("", line).strip() for line in lines]
    return [question for question in questions if question and not _is_preamble(question)][:num_questions_per_chunk]


def _is_preamble(line: str) -> bool:
    """``Here are the questions:`` or ``**Questions:**``: an introduction, not a question."""
    return line.rstrip("*_ ").endswith(":")


def generate_question_context_pairs(
    nodes: Sequence["BaseNode"],
    llm: "LLM | None" = None,
    qa_generate_prompt_tmpl: str = DEFAULT_QA_GENERATE_PROMPT_TMPL,
    num_questions_per_chunk: int = 2,
    *,
    retry_limit: int = 3,
    retry_delay: float = 1.0,
    on_failure: Literal["continue", "fail"] = "continue",
    output_path: str | os.PathLike[str] | None = None,
    save_every: int = 20,
    num_workers: int = 1,
    show_progress: bool = True,
    max_connection_failures: int = DEFAULT_MAX_CONNECTION_FAILURES,
) -> EmbeddingQAFinetuneDataset:
    """Ask ``llm`` for ``num_questions_per_chunk`` questions about each node.

    Args:
        nodes: the chunks (their ids become the relevant ids; assign stable ids first).
        llm: any LlamaIndex LLM; default ``Settings.llm`` (OpenAI unless configured).
        qa_generate_prompt_tmpl: prompt with ``{context_str}`` and ``{num_questions_per_chunk}``.
        num_questions_per_chunk: questions asked (and at most kept) per node.
        retry_limit: attempts per node; an exception or an answer without any question fails one.
            Only transient errors (timeouts, connection errors, HTTP 429 and 5xx) are retried; a
            permanent one (missing or rejected credentials, other 4xx, see :func:`is_permanent_error`)
            raises :class:`PermanentLLMError` at once, whatever ``on_failure`` says.
        retry_delay: seconds before the first retry, doubled after each.
        on_failure: ``"continue"`` skips a node that failed every attempt (with a warning);
            ``"fail"`` raises :class:`QuestionGenerationError` (after saving progress).
        output_path: a JSON file saved every ``save_every`` nodes and at the end; when it already
            holds a partial dataset for these nodes, nodes with questions there are not asked again.
        num_workers: nodes asked concurrently (the output order stays the node order).
        show_progress: show a tqdm progress bar.
        max_connection_failures: LLM calls in a row (over every node and worker) that cannot reach
            the server (connection refused, DNS failure, timeout) before generation stops with
            :class:`LLMUnreachableError` naming the address, instead of retrying every node.

    Returns:
        The dataset: corpus = every node's text, one query per question, each relevant to its node.
    """
    from llama_index.core.schema import BaseNode, MetadataMode

    _check_generation_args(qa_generate_prompt_tmpl, num_questions_per_chunk, retry_limit, retry_delay, on_failure, save_every, num_workers)
    if isinstance(max_connection_failures, bool) or not isinstance(max_connection_failures, int) or max_connection_failures < 1:
        raise ValueError(f"max_connection_failures must be an int >= 1, got {max_connection_failures!r}")
    corpus: dict[str, str] = {}
    for position, node in enumerate(nodes):
        if not isinstance(node, BaseNode):
            raise TypeError(f"nodes[{position}] is a {type(node).__name__}, expected a LlamaIndex node")
        if node.node_id in corpus:
            raise ValueError(f"duplicate node id {node.node_id!r} (nodes[{position}]); assign_stable_ids(nodes) first")
        corpus[node.node_id] = node.get_content(metadata_mode=MetadataMode.NONE)
    if llm is None:
        from llama_index.core import Settings

        llm = Settings.llm

    queries, relevant_docs = _resume(output_path, corpus)
    done = set().union(*relevant_docs.values()) if relevant_docs else set()
    todo = [node_id for node_id in corpus if node_id not in done and corpus[node_id].strip()]
    empty = [node_id for node_id in corpus if not corpus[node_id].strip()]
    if empty:
        logger.warning("%d nodes have no text and get no questions: %s", len(empty), empty[:5])

    permanent: list[PermanentLLMError] = []  # the first permanent error stops every worker
    connections = _ConnectionFailures(max_connection_failures)

    def ask(node_id: str) -> list[str] | QuestionGenerationError:
        if permanent:
            return permanent[0]
        prompt = qa_generate_prompt_tmpl.format(context_str=corpus[node_id], num_questions_per_chunk=num_questions_per_chunk)
        result = _ask_with_retries(llm, prompt, node_id, num_questions_per_chunk, retry_limit, retry_delay, connections)
        if isinstance(result, PermanentLLMError):
            permanent.append(result)
        return result

    def save() -> None:
        if output_path is not None:
            EmbeddingQAFinetuneDataset(queries=queries, corpus=corpus, relevant_docs=relevant_docs).save_json(output_path)

    from tqdm.auto import tqdm

    failed: list[str] = []
    progress = tqdm(total=len(corpus), initial=len(corpus) - len(todo), desc="Generating questions", unit="node", disable=not show_progress)
    pool = ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="questions")
    try:
        for count, (node_id, result) in enumerate(zip(todo, pool.map(ask, todo)), start=1):
            progress.update(1)
            if permanent:
                save()
                raise permanent[0]
            if isinstance(result, QuestionGenerationError):
                if on_failure == "fail":
                    save()
                    raise result
                logger.warning("%s; skipping this node", result)
                failed.append(node_id)
            else:
                if len(result) < num_questions_per_chunk:
                    warnings.warn(
                        f"Fewer questions generated ({len(result)}) than requested ({num_questions_per_chunk}) "
                        f"for node {node_id!r}.",
                        stacklevel=2,
                    )
                for index, question in enumerate(result):
                    question_id = str(uuid.uuid5(QUESTION_ID_NAMESPACE, f"{node_id}\x00{index}"))
                    queries[question_id] = question
                    relevant_docs[question_id] = [node_id]
            if count % save_every == 0:
                save()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        progress.close()
    save()
    if failed:
        warnings.warn(f"No questions for {len(failed)} nodes after {retry_limit} attempts each: {failed[:5]}", stacklevel=2)
    return EmbeddingQAFinetuneDataset(queries=queries, corpus=corpus, relevant_docs=relevant_docs)


def _check_generation_args(
    template: str, per_chunk: int, retry_limit: int, retry_delay: float, on_failure: str, save_every: int, num_workers: int
) -> None:
    if not isinstance(template, str) or "{context_str}" not in template:
        raise ValueError("qa_generate_prompt_tmpl must be a str containing {context_str}")
    try:
        template.format(context_str="", num_questions_per_chunk=1)
    except (KeyError, IndexError, ValueError) as error:
        raise ValueError(
            f"qa_generate_prompt_tmpl cannot be filled in: {type(error).__name__} {error}; only {{context_str}} and "
            "{num_questions_per_chunk} are replaced, write other braces doubled ({{ and }})"
        ) from None
    for name, value in (("num_questions_per_chunk", per_chunk), ("retry_limit", retry_limit), ("save_every", save_every), ("num_workers", num_workers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if isinstance(retry_delay, bool) or not isinstance(retry_delay, (int, float)) or not 0 <= retry_delay < float("inf"):
        raise ValueError(f"retry_delay must be a number of seconds >= 0, got {retry_delay!r}")
    if on_failure not in ("continue", "fail"):
        raise ValueError(f"on_failure must be 'continue' or 'fail', got {on_failure!r}")


def _ask_with_retries(
    llm: "LLM", prompt: str, node_id: str, per_chunk: int, retry_limit: int, retry_delay: float,
    connections: _ConnectionFailures | None = None,
) -> list[str] | QuestionGenerationError:
    """The parsed questions, or the error to report after ``retry_limit`` failed attempts (or
    :class:`LLMUnreachableError` once ``connections`` counts too many failed connections in a row)."""
    problem = ""
    for attempt in range(1, retry_limit + 1):
        try:
            questions = parse_questions(str(llm.complete(prompt)), per_chunk)
        except Exception as error:  # noqa: BLE001 - transient LLM client errors are retried
            if is_permanent_error(error):
                return PermanentLLMError(_permanent_message(error, node_id))
            if connections is not None and is_connection_error(error) and connections.failed():
                return LLMUnreachableError(_unreachable_message(error, llm, connections.limit))
            problem = f"{type(error).__name__}: {error}"
        else:
            if connections is not None:
                connections.answered()
            if questions:
                return questions
            problem = "the LLM answered without any question (empty response)"
        logger.info("node %s, attempt %d/%d failed: %s", node_id, attempt, retry_limit, problem)
        if attempt < retry_limit and retry_delay:
            time.sleep(retry_delay * 2 ** (attempt - 1))
    return QuestionGenerationError(f"no questions for node {node_id!r} after {retry_limit} attempts: {problem}")


def _resume(output_path: str | os.PathLike[str] | None, corpus: dict[str, str]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Queries and judgements already in ``output_path`` (empty when it does not exist)."""
    if output_path is None or not Path(output_path).exists():
        return {}, {}
    previous = EmbeddingQAFinetuneDataset.from_json(output_path)
    for node_id, text in previous.corpus.items():
        if node_id in corpus and corpus[node_id] != text:
            raise ValueError(
                f"{output_path} holds questions for a different text of node {node_id!r}; "
                "delete the file or choose another output_path to start over"
            )
    unknown = sorted({d for ids in previous.relevant_docs.values() for d in ids if d not in corpus})
    if unknown:
        raise ValueError(
            f"{output_path} holds questions for nodes that are not given: {unknown[:5]}; "
            "pass the same nodes to resume, or choose another output_path"
        )
    logger.info("resuming from %s: %d questions already there", output_path, len(previous.queries))
    return dict(previous.queries), {qid: list(ids) for qid, ids in previous.relevant_docs.items()}


# ---------------------------------------------------------------------------------------------
# Conversions
# ---------------------------------------------------------------------------------------------


def create_query_relevance(qa_dataset: EmbeddingQAFinetuneDataset) -> tuple[list[str], list[list[tuple[str, int]]]]:
    """``(queries, relevance)`` for ``deep_memory.train`` from a dataset, as the seed notebook
    does, but keeping every relevant id of a query (each with weight 1), in query order."""
    if not isinstance(qa_dataset, EmbeddingQAFinetuneDataset):
        raise TypeError(f"qa_dataset must be an EmbeddingQAFinetuneDataset, got {type(qa_dataset).__name__}")
    queries: list[str] = []
    relevance: list[list[tuple[str, int]]] = []
    for query_id, query in qa_dataset.queries.items():
        ids = qa_dataset.relevant_docs.get(query_id)
        if not ids:
            raise ValueError(f"query {query_id!r} ({query!r}) has no relevant_docs; every query needs at least one")
        queries.append(query)
        relevance.append([(doc_id, 1) for doc_id in dict.fromkeys(ids)])
    return queries, relevance


def dataset_from_query_relevance(
    queries: Sequence[str],
    relevance: Sequence[Sequence[Any]],
    corpus: "Mapping[str, str] | Sequence[BaseNode] | None" = None,
    query_ids: Sequence[str] | None = None,
) -> EmbeddingQAFinetuneDataset:
    """The inverse of :func:`create_query_relevance` (weights are dropped).

    ``corpus``: node id -> text, or the nodes; when given, every relevant id must be in it.
    ``query_ids``: ids for the queries (default ``query_0``, ``query_1``, ...).
    """
    corpus_texts = _corpus_texts(corpus)
    clean_queries, clean_relevance = validate_query_relevance(queries, relevance, corpus_texts if corpus is not None else None)
    ids = [f"query_{i}" for i in range(len(clean_queries))] if query_ids is None else [str(q) for q in query_ids]
    if len(ids) != len(clean_queries) or len(set(ids)) != len(ids):
        raise ValueError(f"query_ids must be {len(clean_queries)} distinct ids, got {len(ids)} ({len(set(ids))} distinct)")
    return EmbeddingQAFinetuneDataset(
        queries=dict(zip(ids, clean_queries)),
        corpus=corpus_texts,
        relevant_docs={qid: [doc_id for doc_id, _ in pairs] for qid, pairs in zip(ids, clean_relevance)},
    )


def _corpus_texts(corpus: "Mapping[str, str] | Sequence[BaseNode] | None") -> dict[str, str]:
    if corpus is None:
        return {}
    if isinstance(corpus, Mapping):
        return {str(k): str(v) for k, v in corpus.items()}
    from llama_index.core.schema import BaseNode, MetadataMode

    texts = {}
    for position, node in enumerate(corpus):
        if not isinstance(node, BaseNode):
            raise TypeError(f"corpus[{position}] is a {type(node).__name__}; pass {{id: text}} or LlamaIndex nodes")
        texts[node.node_id] = node.get_content(metadata_mode=MetadataMode.NONE)
    return texts

