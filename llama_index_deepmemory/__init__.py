"""Local Deep Memory for LlamaIndex: a FAISS vector store plus a trained query adapter.

Public names are imported lazily so that ``import llama_index_deepmemory`` stays fast
(no FAISS, torch, bs4 or LlamaIndex import until a name is used).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "DeepMemoryVectorStore": "llama_index_deepmemory.store",
    "DeepMemory": "llama_index_deepmemory.deep_memory.api",
    "DeepMemoryModel": "llama_index_deepmemory.deep_memory.base",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'llama_index_deepmemory' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # pragma: no cover
    from llama_index_deepmemory.deep_memory.api import DeepMemory
    from llama_index_deepmemory.deep_memory.base import DeepMemoryModel
    from llama_index_deepmemory.store import DeepMemoryVectorStore
