"""A chat engine with long-term memory over a Deep Memory store.

Two memories, as in a RAG chat system with long-term memory: the *knowledge memory* is the
embedded, persisted store (queried with ``deep_memory=True`` when a model is active); the
*conversation memory* is LlamaIndex's ``Memory`` (session id = conversation id) over an SQL chat
store (:mod:`~llama_index_deepmemory.chat.conversations`: SQLite by default, PostgreSQL for
servers). Its token budget keeps the newest turns in the prompt; older turns are archived, not
deleted, and the ones relevant to a new message come back through a vector memory block
(:mod:`~llama_index_deepmemory.chat.long_term`). Every turn is appended when it is answered, so
several processes can hold the same conversation and each sees every turn.

Each turn runs LlamaIndex's ``CondensePlusContextChatEngine``: the follow-up is rewritten into a
standalone question from the history ("and how do I undo that?" -> "How do I undo a git
commit?"), that question retrieves the context, and the LLM answers from it, citing the numbered
sources. Marking a source helpful (or opting in to log the cited ones) appends the standalone
question and the source's node id to a query log that Deep Memory trains on.
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from llama_index_deepmemory.chat import long_term
from llama_index_deepmemory.chat.conversations import ConversationStore
from llama_index_deepmemory.chat.feedback import append_feedback, check_log_path
from llama_index_deepmemory.chat.history import SNIPPET_CHARS, Conversation, Source, Turn, check_conversation_id

if TYPE_CHECKING:  # pragma: no cover
    from llama_index.core.llms import LLM
    from llama_index.core.memory import Memory

logger = logging.getLogger(__name__)

DEFAULT_TOP_K = 5
DEFAULT_TOKEN_BUDGET = 3000
DEFAULT_HISTORY_DIR = "deepmemory-chats"

CONTEXT_PROMPT = """
  The following is a conversation between a user and an AI assistant that answers from the
  numbered documents below. Cite the documents you use by their numbers, e.g. [1] or [2][3].
  If the documents do not contain the answer, say that you don't know.

  Here are the relevant documents for the context:

  {context_str}

  Instruction: Based on the above documents, answer the user's question below, citing document numbers.
  """

_CITATION = re.compile(r"\[(\d{1,3})\]")
_PREFIX = re.compile(r"^\[\d+\] ")


@dataclass
class ChatAnswer:
    """What :meth:`DeepMemoryChatEngine.chat` returns: the saved turn plus what happened to the history."""

    turn: Turn
    turn_number: int  # 1-based position of the turn in the conversation (as this process saw it)
    history_turns_used: int
    history_turns_trimmed: int
    notice: str | None = None
    cited: list[int] = field(default_factory=list)  # source ranks cited in the answer

    @property
    def answer(self) -> str:
        return self.turn.assistant

    @property
    def sources(self) -> list[Source]:
        return self.turn.sources

    def format(self, width: int = 100) -> str:
        """The answer with its sources listed under it (what the CLI prints)."""
        lines = [self.answer, "", "Sources" + (" (with Deep Memory):" if self.turn.deep_memory else ":")]
        for source in self.sources:
            mark = "*" if source.rank in self.cited else " "
            score = f"{source.score:.3f}" if source.score is not None else "  -  "
            lines.append(f" {mark}[{source.rank}] {source.node_id}  {score}  {_shorten(source.text, width - 30)}")
        if not self.sources:
            lines.append("  (none retrieved)")
        return "\n".join(lines)


def _shorten(text: str, width: int) -> str:
    flat = " ".join(text.split())
    width = max(width, 20)
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def cited_ranks(answer: str, n_sources: int) -> list[int]:
    """The source numbers ``[n]`` cited in ``answer`` (1..n_sources), in order of first citation."""
    ranks = [int(m) for m in _CITATION.findall(answer)]
    return list(dict.fromkeys(r for r in ranks if 1 <= r <= n_sources))


def _numbered_sources_postprocessor() -> Any:
    """A node postprocessor that prefixes each retrieved node's text with ``[rank] `` (on copies)."""
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.schema import NodeWithScore

    class NumberedSources(BaseNodePostprocessor):
        @classmethod
        def class_name(cls) -> str:
            return "NumberedSources"

        def _postprocess_nodes(self, nodes: list[NodeWithScore], query_bundle: Any = None) -> list[NodeWithScore]:
            numbered = []
            for rank, scored in enumerate(nodes, start=1):
                copy = scored.node.model_copy()
                copy.set_content(f"[{rank}] {scored.node.get_content()}")
                numbered.append(NodeWithScore(node=copy, score=scored.score))
            return numbered

    return NumberedSources()


class DeepMemoryChatEngine:
    """Condense-plus-context chat over a Deep Memory store, with persisted, resumable conversations.

    Args:
        source: a ``DeepMemoryVectorStore`` or a ``VectorStoreIndex`` over one.
        llm: any LlamaIndex LLM (condenses follow-ups and answers).
        conversation_id: the conversation to start or resume (letters, digits, ``.``, ``_``, ``-``).
        history_dir: where conversations are stored: a folder (the SQLite file
            ``conversations.db`` inside, created if missing), a database URI
            (``postgresql://...``), a LlamaIndex chat store, or a :class:`ConversationStore`.
        top_k: sources retrieved per turn.
        deep_memory: query with Deep Memory; ``None`` (default) uses it when the store has an
            active model. ``True`` without a model is an error.
        token_budget: most tokens of earlier turns put in the prompt (LlamaIndex ``Memory``
            counts them); older turns are archived, oldest first, and :attr:`ChatAnswer.notice`
            says so (they stay stored and come back through long-term memory when relevant).
        long_term_memory: bring archived turns relevant to a new message back into the prompt
            (needs the store's ``embed_model``); ``long_term_top_k`` turns at most, with a cosine
            similarity of at least ``long_term_cutoff``.
        feedback_log: JSONL query log that feedback is appended to (None: feedback is refused).
        log_citations: also log the sources each answer cites (opt-in), with ``citation_weight``.
        tokenizer: text -> tokens for the budget (default: LlamaIndex's global tokenizer).
    """

    def __init__(
        self,
        source: Any,
        llm: "LLM",
        *,
        conversation_id: str,
        history_dir: Any = DEFAULT_HISTORY_DIR,
        top_k: int = DEFAULT_TOP_K,
        deep_memory: bool | None = None,
        token_budget: int = DEFAULT_TOKEN_BUDGET,
        long_term_memory: bool = True,
        long_term_top_k: int = long_term.DEFAULT_TOP_K,
        long_term_cutoff: float = long_term.DEFAULT_CUTOFF,
        feedback_log: str | os.PathLike[str] | None = None,
        log_citations: bool = False,
        citation_weight: float = 0.5,
        system_prompt: str | None = None,
        tokenizer: Callable[[str], Sequence[Any]] | None = None,
    ) -> None:
        from llama_index.core import VectorStoreIndex
        from llama_index.core.base.embeddings.base import BaseEmbedding
        from llama_index.core.chat_engine import CondensePlusContextChatEngine
        from llama_index.core.memory import ChatMemoryBuffer

        check_conversation_id(conversation_id)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be a positive int, got {top_k!r}")
        if isinstance(token_budget, bool) or not isinstance(token_budget, int) or token_budget < 0:
            raise ValueError(f"token_budget must be an int >= 0 (tokens of earlier turns in the prompt), got {token_budget!r}")
        if isinstance(long_term_top_k, bool) or not isinstance(long_term_top_k, int) or long_term_top_k < 1:
            raise ValueError(f"long_term_top_k must be a positive int, got {long_term_top_k!r}")
        if (isinstance(long_term_cutoff, bool) or not isinstance(long_term_cutoff, (int, float))
                or not -1.0 <= long_term_cutoff <= 1.0):
            raise ValueError(f"long_term_cutoff must be a cosine similarity in [-1, 1], got {long_term_cutoff!r}")
        if (isinstance(citation_weight, bool) or not isinstance(citation_weight, (int, float))
                or not math.isfinite(citation_weight) or citation_weight <= 0):
            raise ValueError(f"citation_weight must be a finite number > 0, got {citation_weight!r}")
        if llm is None:
            raise ValueError("the chat needs an LLM: pass llm=OpenAI(...) or any LlamaIndex LLM")
        from llama_index.core.base.llms.base import BaseLLM

        if not isinstance(llm, BaseLLM):
            raise TypeError(f"the chat's llm must be a LlamaIndex LLM, e.g. OpenAI(model='gpt-4o-mini'), got {llm!r}")
        if isinstance(source, VectorStoreIndex):
            index, store = source, source.vector_store
        elif hasattr(source, "deep_memory") and hasattr(source, "query"):
            store = source
            index = VectorStoreIndex.from_vector_store(store, embed_model=getattr(store, "embed_model", None))
        else:
            raise TypeError(f"the chat needs a DeepMemoryVectorStore or a VectorStoreIndex over one, got {type(source).__name__}")
        active = store.deep_memory.get_model() if hasattr(store, "deep_memory") else None
        if deep_memory is None:
            deep_memory = active is not None
        elif deep_memory and active is None:
            raise ValueError(
                "deep_memory=True but the store has no active Deep Memory model: train one "
                "(store.deep_memory.train or `deepmemory train`) or pass deep_memory=False"
            )
        self.store = store
        self.deep_memory = bool(deep_memory)
        self.top_k = top_k
        self.token_budget = token_budget
        self.feedback_log = check_log_path(feedback_log) if feedback_log is not None else None
        self.log_citations = log_citations
        if log_citations and self.feedback_log is None:
            raise ValueError("log_citations=True needs feedback_log=PATH.jsonl to write to")
        self.citation_weight = citation_weight
        if tokenizer is None:
            from llama_index.core.utils import get_tokenizer

            tokenizer = get_tokenizer()
        self.conversations = history_dir if isinstance(history_dir, ConversationStore) else ConversationStore(history_dir)
        self._conversation_id = conversation_id
        self.conversations.migrate(conversation_id)
        blocks = []
        embed_model = getattr(store, "embed_model", None)
        if long_term_memory and isinstance(embed_model, BaseEmbedding):
            blocks.append(long_term.earlier_turns_block(self.conversations.chat_store, embed_model,
                                                        top_k=long_term_top_k, cutoff=long_term_cutoff))
        elif long_term_memory:
            logger.warning("Long-term chat memory is off: the store has no embed_model to embed earlier turns with")
        self.memory = conversation_memory(conversation_id, self.conversations.chat_store, token_budget, blocks, tokenizer)
        self._last: Turn | None = None  # this engine's latest answer (what /good refers to)
        retriever = index.as_retriever(similarity_top_k=top_k, vector_store_kwargs={"deep_memory": self.deep_memory})
        self._engine = CondensePlusContextChatEngine.from_defaults(
            retriever,
            llm=llm,
            memory=ChatMemoryBuffer.from_defaults(token_limit=10**9),  # per call; `memory` above keeps the turns
            system_prompt=system_prompt,
            context_prompt=CONTEXT_PROMPT,
            node_postprocessors=[_numbered_sources_postprocessor()],
        )
        logger.info("Chat %r in %s: %s Deep Memory, top %d, long-term memory %s", conversation_id,
                    self.conversations.location, "with" if self.deep_memory else "without", top_k,
                    "on" if blocks else "off")

    # --- history ---------------------------------------------------------------------------
    @property
    def conversation_id(self) -> str:
        return self._conversation_id

    @property
    def conversation(self) -> Conversation:
        """The whole conversation as stored now (every process's turns)."""
        return self.conversations.load(self._conversation_id)

    @property
    def turns(self) -> list[Turn]:
        """Every turn of the conversation as stored now, oldest first."""
        return self.conversation.turns

    @property
    def path(self) -> Path | None:
        """The SQLite file the conversation is stored in (None for a database URI or a given chat store)."""
        return self.conversations.path

    @property
    def location(self) -> str:
        """Where the conversation is stored, in words."""
        return self.conversations.location

    async def _ahistory(self, message: str) -> tuple[list[Any], int, int]:
        """``(prompt messages: long-term memory, then the turns within budget; turns used; turns left out)``."""
        from llama_index.core.llms import ChatMessage
        from llama_index.core.storage.chat_store.base_db import MessageStatus

        def role(m: Any) -> str:
            return str(getattr(m.role, "value", m.role))

        messages = await self.memory.aget(input=message)
        store = self.conversations.chat_store
        archived = await store.get_messages(self._conversation_id, status=MessageStatus.ARCHIVED)
        start = next((i for i, m in enumerate(messages) if role(m) != "system"), len(messages))
        head, turns = messages[:start], messages[start:]  # long-term memory (system), then the active turns
        # Memory keeps the latest turn active whatever its size: leave out whole turns, oldest first, over budget
        counts = [self.memory._estimate_token_count(m) for m in turns]  # noqa: SLF001 - Memory's own count
        tokens, left_out = sum(counts), 0
        while turns and tokens > self.token_budget:
            end = next((i for i, m in enumerate(turns[1:], start=1) if role(m) == "user"), len(turns))
            tokens -= sum(counts[:end])
            left_out += sum(1 for m in turns[:end] if role(m) == "user")
            turns, counts = turns[end:], counts[end:]
        clean = [ChatMessage(role=m.role, blocks=m.blocks) for m in head + turns]  # no turn ids for the LLM
        used = sum(1 for m in turns if role(m) == "user")
        trimmed = sum(1 for m in archived if role(m) == "user") + left_out
        return clean, used, trimmed

    # --- chatting --------------------------------------------------------------------------
    def chat(self, message: str) -> ChatAnswer:
        """Answer ``message`` in this conversation; the turn is stored before this returns."""
        if not isinstance(message, str) or not message.strip():
            raise ValueError(f"the message must be non-empty text, got {message!r}")
        history, used, trimmed = self.conversations.run(self._ahistory(message))
        notice = None
        if trimmed:
            notice = (
                f"History trimmed: the {trimmed} oldest of {trimmed + used} earlier turns are left out of the prompt "
                f"to stay within the {self.token_budget}-token budget (they stay stored in {self.location}, "
                "and come back when a question is about them)."
            )
            logger.info(notice)
        response = self._engine.chat(message, chat_history=history)
        standalone = message
        for tool_output in response.sources:
            raw = tool_output.raw_input or {}
            if tool_output.tool_name == "retriever" and isinstance(raw.get("message"), str) and raw["message"].strip():
                standalone = raw["message"].strip()
        sources = [
            Source(rank, scored.node.node_id, None if scored.score is None else float(scored.score),
                   _PREFIX.sub("", scored.node.get_content(), count=1)[:SNIPPET_CHARS])
            for rank, scored in enumerate(response.source_nodes, start=1)
        ]
        answer = str(response.response).strip()
        turn = Turn(user=message, assistant=answer, standalone_question=standalone, sources=sources,
                    deep_memory=self.deep_memory)
        cited = cited_ranks(answer, len(sources))
        self.conversations.append_turn(self._conversation_id, turn, memory=self.memory)
        self._last = turn
        if self.log_citations and cited:
            try:
                self._log(turn, cited, kind="cited", weight=self.citation_weight)
            except (OSError, ValueError) as exc:  # the turn is saved: say so, raising would invite a duplicate
                problem = f"The cited sources were not logged: {exc}"
                logger.warning(problem)
                notice = f"{notice} {problem}" if notice else problem
        return ChatAnswer(turn, trimmed + used + 1, used, trimmed, notice, cited)

    # --- feedback --------------------------------------------------------------------------
    def mark_helpful(self, sources: Sequence[int | str], turn: int | None = None, weight: float = 1.0) -> dict[str, Any]:
        """Log that ``sources`` (ranks shown under the answer, or node ids) answered turn ``turn``.

        ``turn`` None (default) is this engine's latest answer (another process may have added
        turns since); an int indexes the conversation's turns (-1: the latest; 1-based numbers as
        shown by ``/history`` are ``number - 1``). Appends the turn's standalone question and the
        node ids to :attr:`feedback_log` and records the feedback with the conversation; returns the row.
        """
        if self.feedback_log is None:
            raise ValueError("no feedback log: create the engine with feedback_log=PATH.jsonl")
        if turn is not None and (isinstance(turn, bool) or not isinstance(turn, int)):
            raise TypeError(f"turn is an int index into the conversation's turns (-1: the latest) or None, got {turn!r}")
        if turn is None and self._last is not None:
            chosen = self._last
        else:
            turns = self.turns
            if not turns:
                raise ValueError("no answer to give feedback on yet: chat first")
            try:
                chosen = turns[range(len(turns))[-1 if turn is None else turn]]
            except IndexError:
                raise ValueError(f"turn {turn!r} is out of range: the conversation has {len(turns)} turns") from None
        if isinstance(sources, (str, int)):
            sources = [sources]
        if not isinstance(sources, Iterable):
            raise TypeError(f"sources are ranks (ints) or node ids (strs), e.g. [1, 3], got {sources!r}")
        if not sources:
            raise ValueError("name at least one source (its rank under the answer, e.g. 2, or its node id)")
        ranks = []
        for item in sources:
            ranks.append(self._rank_of(chosen, item))
        return self._log(chosen, ranks, kind="helpful", weight=weight)

    def _rank_of(self, turn: Turn, item: int | str) -> int:
        shown = {s.rank: s for s in turn.sources}
        if isinstance(item, int) and not isinstance(item, bool):
            if item not in shown:
                raise ValueError(f"source {item} was not shown under that answer; choose one of {sorted(shown) or 'none'}")
            return item
        if isinstance(item, str):
            for source in turn.sources:
                if source.node_id == item:
                    return source.rank
            raise ValueError(
                f"node {item!r} was not among that answer's sources ({[s.node_id for s in turn.sources]}); "
                "give feedback on a source shown under the answer"
            )
        raise TypeError(f"a source is a rank (int) or a node id (str), got {item!r}")

    def _log(self, turn: Turn, ranks: Sequence[int], kind: str, weight: float) -> dict[str, Any]:
        assert self.feedback_log is not None
        by_rank = {s.rank: s for s in turn.sources}
        node_ids = [by_rank[r].node_id for r in ranks]
        row = append_feedback(
            self.feedback_log, turn.standalone_question, node_ids, weight=weight, kind=kind,
            conversation=self.conversation_id, turn_id=turn.turn_id,
        )
        feedback = {"kind": kind, "node_ids": node_ids, "weight": float(weight), "at": row["at"]}
        turn.feedback.append(feedback)
        self.conversations.note_feedback(self._conversation_id, turn.turn_id, feedback)  # a turn it holds
        return row


def conversation_memory(conversation_id: str, chat_store: Any, token_budget: int, blocks: Sequence[Any],
                        tokenizer: Callable[[str], Sequence[Any]]) -> "Memory":
    """LlamaIndex ``Memory`` for the conversation: at most ``token_budget`` tokens of turns stay
    active (older ones are archived a turn at a time), plus ``blocks`` (never truncated)."""
    from llama_index.core.memory import Memory

    limit = token_budget + 1  # Memory needs a limit >= 1; the ratio makes the history's share exactly the budget
    return Memory.from_defaults(
        session_id=conversation_id, chat_store=chat_store, token_limit=limit,
        chat_history_token_ratio=token_budget / limit, token_flush_size=1, memory_blocks=list(blocks),
        tokenizer_fn=tokenizer,
    )
