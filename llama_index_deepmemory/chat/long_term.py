"""Long-term conversation memory: earlier turns that left the token budget come back when relevant.

:func:`earlier_turns_block` builds a LlamaIndex ``VectorMemoryBlock`` over one of our vector
stores. LlamaIndex's ``Memory`` archives the oldest turns in the chat store when the conversation
outgrows its token budget; before each question the block indexes every archived turn it has not
seen yet (read back from the chat store, so turns archived by other processes, or before a
restart, count too), one node per turn embedded by what the user said, then returns the earlier
turns most similar to the new message, above a similarity cutoff, which ``Memory`` puts into the
system message. A question about nothing said
before gets nothing.
"""

from __future__ import annotations

import logging
from typing import Any, List, Optional

from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.memory.memory_blocks.vector import VectorMemoryBlock
from llama_index.core.schema import TextNode
from llama_index.core.storage.chat_store.base_db import AsyncDBChatStore, MessageStatus

from llama_index_deepmemory.chat.conversations import pair_turns

logger = logging.getLogger(__name__)

BLOCK_NAME = "earlier_turns"
DEFAULT_TOP_K = 2
DEFAULT_CUTOFF = 0.45  # cosine similarity; all-MiniLM-L6-v2 puts unrelated sentences well below (tests)


class EarlierTurnsBlock(VectorMemoryBlock):
    """A ``VectorMemoryBlock`` whose source is the turns the chat store archived (one node per turn)."""

    chat_store: AsyncDBChatStore = Field(exclude=True, description="The chat store the turns are archived in.")
    _indexed: set = PrivateAttr(default_factory=set)

    async def _aget(self, messages: Optional[List[ChatMessage]] = None, session_id: Optional[str] = None,
                    **block_kwargs: Any) -> str:
        if not messages or session_id is None:
            return ""
        await self.index_archived(session_id)
        if not self._indexed:
            return ""
        return await super()._aget(messages[-1:], session_id=session_id, **block_kwargs)  # the new message only

    async def _aput(self, messages: List[ChatMessage]) -> None:
        """Nothing to do: archived turns are read back from the chat store when next needed."""

    async def index_archived(self, session_id: str) -> int:
        """Index the archived turns not indexed yet; returns how many were added."""
        archived = await self.chat_store.get_messages(session_id, status=MessageStatus.ARCHIVED)
        fresh = [t for t in pair_turns(archived) if t.assistant and f"{session_id}:{t.turn_id}" not in self._indexed]
        if not fresh:
            return 0
        texts = [f"user: {t.user}\nassistant: {t.assistant}" for t in fresh]
        # found by what the user said (the answers come from the knowledge store, which is searched anyway)
        vectors = await self.embed_model.aget_text_embedding_batch([t.user for t in fresh])
        nodes = [TextNode(id_=f"{session_id}:{t.turn_id}", text=text, embedding=list(vector),
                          metadata={"session_id": session_id})
                 for t, text, vector in zip(fresh, texts, vectors)]
        await self.vector_store.async_add(nodes)
        self._indexed.update(node.node_id for node in nodes)
        logger.debug("Long-term memory of %s: %d earlier turns indexed", session_id, len(self._indexed))
        return len(nodes)


def earlier_turns_block(chat_store: Any, embed_model: Any, *, top_k: int = DEFAULT_TOP_K,
                        cutoff: float = DEFAULT_CUTOFF, vector_store: Any = None) -> EarlierTurnsBlock:
    """The block over ``vector_store`` (default: a new in-memory ``DeepMemoryVectorStore``)."""
    from llama_index.core.postprocessor import SimilarityPostprocessor

    if vector_store is None:
        from llama_index_deepmemory.store import DeepMemoryVectorStore

        vector_store = DeepMemoryVectorStore()
    return EarlierTurnsBlock(
        name=BLOCK_NAME, chat_store=chat_store, vector_store=vector_store, embed_model=embed_model,
        similarity_top_k=top_k, node_postprocessors=[SimilarityPostprocessor(similarity_cutoff=cutoff)],
        priority=0,
    )
