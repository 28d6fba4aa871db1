"""Chat with long-term memory over a Deep Memory store, and feedback that Deep Memory learns from.

- :class:`DeepMemoryChatEngine` (``engine``): LlamaIndex's condense-plus-context chat over the
  store with ``deep_memory=True``; a follow-up is rewritten into a standalone question before
  retrieval, each answer keeps its sources, and LlamaIndex's ``Memory`` keeps the conversation
  (a token budget, and earlier turns brought back when relevant: ``long_term``).
- :class:`ConversationStore` (``conversations``): conversations in a LlamaIndex SQL chat store
  (SQLite file by default, PostgreSQL URI for servers), each turn appended as it happens by any
  number of processes; earlier versions' JSON files are migrated on first use.
- :func:`append_feedback` (``feedback``): helpful sources -> a JSONL query log that
  ``read_query_log`` and ``deepmemory train --query-log`` read.

Names are imported lazily so that ``deepmemory --help`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "DeepMemoryChatEngine": "llama_index_deepmemory.chat.engine",
    "ChatAnswer": "llama_index_deepmemory.chat.engine",
    "Conversation": "llama_index_deepmemory.chat.history",
    "ConversationStore": "llama_index_deepmemory.chat.conversations",
    "Turn": "llama_index_deepmemory.chat.history",
    "Source": "llama_index_deepmemory.chat.history",
    "append_feedback": "llama_index_deepmemory.chat.feedback",
    "train_on_feedback": "llama_index_deepmemory.chat.feedback",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'llama_index_deepmemory.chat' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
