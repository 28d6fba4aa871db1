"""A classic LlamaIndex ``BaseChatStore`` (``SQLiteChatStore``, ``PostgresChatStore``, Redis, ...)
as the ``AsyncDBChatStore`` that LlamaIndex's ``Memory`` persists through.

Messages are only ever appended to the classic store (``async_add_message``), never rewritten.
Classic stores have no message status, so which messages ``Memory`` archived is kept as appended
markers under ``<key>#archived`` (each holds how many of the oldest active messages were archived):
the first ``sum(markers)`` messages of a key are archived, the rest active. Concurrency is the
classic store's own: the SQL chat stores of :mod:`~llama_index_deepmemory.chat.storage` are the
ones tested with many processes.
"""

from __future__ import annotations

from typing import List, Optional

from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.bridge.pydantic import Field
from llama_index.core.storage.chat_store.base import BaseChatStore
from llama_index.core.storage.chat_store.base_db import AsyncDBChatStore, MessageStatus

ARCHIVED = "#archived"


class ClassicChatStore(AsyncDBChatStore):
    """``AsyncDBChatStore`` over a ``BaseChatStore``: appends only, archive state as markers."""

    store: BaseChatStore = Field(description="The classic chat store messages are appended to.")

    async def _archived_count(self, key: str) -> int:
        return sum(int(m.content or 0) for m in await self.store.aget_messages(key + ARCHIVED))

    async def _split(self, key: str) -> tuple[list[ChatMessage], list[ChatMessage]]:
        messages = await self.store.aget_messages(key)
        archived = min(await self._archived_count(key), len(messages))
        return messages[:archived], messages[archived:]

    async def get_messages(self, key: str, status: Optional[MessageStatus] = MessageStatus.ACTIVE,
                           limit: Optional[int] = None, offset: Optional[int] = None) -> List[ChatMessage]:
        archived, active = await self._split(key)
        chosen = archived + active if status is None else (active if status == MessageStatus.ACTIVE else archived)
        chosen = chosen[offset or 0:]
        return chosen if limit is None else chosen[:limit]

    async def count_messages(self, key: str, status: Optional[MessageStatus] = MessageStatus.ACTIVE) -> int:
        return len(await self.get_messages(key, status=status))

    async def add_message(self, key: str, message: ChatMessage, status: MessageStatus = MessageStatus.ACTIVE) -> None:
        if status != MessageStatus.ACTIVE:
            raise ValueError("a classic chat store can only append active messages")
        await self.store.async_add_message(key, message)

    async def add_messages(self, key: str, messages: List[ChatMessage],
                           status: MessageStatus = MessageStatus.ACTIVE) -> None:
        for message in messages:
            await self.add_message(key, message, status)

    async def set_messages(self, key: str, messages: List[ChatMessage],
                           status: MessageStatus = MessageStatus.ACTIVE) -> None:
        await self.delete_messages(key)
        await self.add_messages(key, messages, status)

    async def delete_message(self, key: str, idx: int) -> Optional[ChatMessage]:
        return await self.store.adelete_message(key, idx)

    async def delete_messages(self, key: str, status: Optional[MessageStatus] = None) -> None:
        if status is not None:
            raise ValueError("a classic chat store deletes a key's messages all at once (status=None)")
        await self.store.adelete_messages(key)
        await self.store.adelete_messages(key + ARCHIVED)

    async def delete_oldest_messages(self, key: str, n: int) -> List[ChatMessage]:
        raise NotImplementedError("a classic chat store only appends; archive_oldest_messages keeps them instead")

    async def archive_oldest_messages(self, key: str, n: int) -> List[ChatMessage]:
        _, active = await self._split(key)
        taken = active[:max(n, 0)]
        if taken:
            await self.store.async_add_message(key + ARCHIVED, ChatMessage(role="system", content=str(len(taken))))
        return taken

    async def get_keys(self) -> List[str]:
        return [key for key in await self.store.aget_keys() if not key.endswith(ARCHIVED)]

    @classmethod
    def class_name(cls) -> str:
        return "ClassicChatStore"

    def __repr__(self) -> str:
        return f"ClassicChatStore({type(self.store).__name__})"
