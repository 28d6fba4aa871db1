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
    "DeepMemoryVectorStoreIndex": "llama_index_deepmemory.vector_index",
    "RetrieverEvaluator": "llama_index_deepmemory.retriever_evaluator",
    "DeepMemoryModel": "llama_index_deepmemory.deep_memory.base",
    "AdapterMemoryModel": "llama_index_deepmemory.deep_memory.models",
    "TrainOptions": "llama_index_deepmemory.deep_memory.training",
    "TrainResult": "llama_index_deepmemory.deep_memory.training",
    "TrainingCancelled": "llama_index_deepmemory.deep_memory.training",
    "train_model": "llama_index_deepmemory.deep_memory.training",
    "load_html_documents": "llama_index_deepmemory.data.html",
    "CrawlReport": "llama_index_deepmemory.data.html",
    "CrawlIssue": "llama_index_deepmemory.data.html",
    "assign_stable_ids": "llama_index_deepmemory.data.ids",
    "split_nodes": "llama_index_deepmemory.data.ids",
    "EmbeddingQAFinetuneDataset": "llama_index_deepmemory.data.questions",
    "generate_question_context_pairs": "llama_index_deepmemory.data.questions",
    "QuestionGenerationError": "llama_index_deepmemory.data.questions",
    "PermanentLLMError": "llama_index_deepmemory.data.questions",
    "DEFAULT_QA_GENERATE_PROMPT_TMPL": "llama_index_deepmemory.data.questions",
    "create_query_relevance": "llama_index_deepmemory.data.questions",
    "dataset_from_query_relevance": "llama_index_deepmemory.data.questions",
    "validate_query_relevance": "llama_index_deepmemory.data.datasets",
    "read_query_log": "llama_index_deepmemory.data.datasets",
    "write_query_log": "llama_index_deepmemory.data.datasets",
    "load_beir": "llama_index_deepmemory.data.datasets",
    "BeirDataset": "llama_index_deepmemory.data.datasets",
    "default_embedding": "llama_index_deepmemory.embeddings",
    "default_cache_dir": "llama_index_deepmemory.embeddings",
    "embed_nodes": "llama_index_deepmemory.embeddings",
    "embed_texts": "llama_index_deepmemory.embeddings",
    "evaluate_dataset": "llama_index_deepmemory.evaluation",
    "aevaluate_dataset": "llama_index_deepmemory.evaluation",
    "evaluate_retrievers": "llama_index_deepmemory.evaluation",
    "display_results": "llama_index_deepmemory.evaluation",
    "recall_at_k_table": "llama_index_deepmemory.evaluation",
    "recall_curves": "llama_index_deepmemory.evaluation",
    "plot_recall_at_k": "llama_index_deepmemory.evaluation",
    "evaluate_answers": "llama_index_deepmemory.answers",
    "AnswerEvaluation": "llama_index_deepmemory.answers",
    "DeepMemoryChatEngine": "llama_index_deepmemory.chat.engine",
    "load_python_faq": "llama_index_deepmemory.data.python_faq",
    "PythonFAQ": "llama_index_deepmemory.data.python_faq",
    "run_demo": "llama_index_deepmemory.demo",
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
