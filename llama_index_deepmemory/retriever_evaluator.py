"""LlamaIndex's ``RetrieverEvaluator`` with the ``evaluate_dataset`` / ``aevaluate_dataset`` that
llama-index-core 0.14 dropped, so Activeloop's tutorial lines
``evaluator.evaluate_dataset(test_qa_dataset, retriever=...)`` run with only their import changed.
"""

from __future__ import annotations

import logging
from typing import Any

from llama_index.core.evaluation import RetrieverEvaluator as _LlamaIndexRetrieverEvaluator
from llama_index.core.evaluation.retrieval.base import RetrievalEvalResult

from llama_index_deepmemory.evaluation import dataset_items, gather_bounded

logger = logging.getLogger(__name__)


class RetrieverEvaluator(_LlamaIndexRetrieverEvaluator):
    """``llama_index.core.evaluation.RetrieverEvaluator`` plus ``(a)evaluate_dataset``: ``aevaluate``
    over every query of an ``EmbeddingQAFinetuneDataset``, ``workers`` at a time, in dataset order.

    ``retriever=`` is accepted as the tutorial passes it (this evaluator, or its own retriever);
    another retriever is refused: build an evaluator for it with ``from_metric_names``."""

    async def aevaluate_dataset(
        self, dataset: Any, workers: int = 2, show_progress: bool = False, **kwargs: Any
    ) -> list[RetrievalEvalResult]:
        self._check_kwargs(kwargs)
        factories = [
            (lambda query=query, expected=expected: self.aevaluate(query=query, expected_ids=expected))
            for _, query, expected in dataset_items(dataset)
        ]
        return await gather_bounded(factories, workers, "Evaluating", show_progress)

    def evaluate_dataset(
        self, dataset: Any, workers: int = 2, show_progress: bool = False, **kwargs: Any
    ) -> list[RetrievalEvalResult]:
        """Synchronous :meth:`aevaluate_dataset` (works inside Jupyter's running loop too)."""
        from llama_index.core.async_utils import asyncio_run

        return asyncio_run(self.aevaluate_dataset(dataset, workers=workers, show_progress=show_progress, **kwargs))

    def _check_kwargs(self, kwargs: dict[str, Any]) -> None:
        unknown = sorted(set(kwargs) - {"retriever"})
        if unknown:
            raise TypeError(f"evaluate_dataset got unexpected keyword argument(s) {unknown}; it takes dataset, "
                            "workers, show_progress")
        given = kwargs.get("retriever")
        if given is not None and given is not self and given is not self.retriever:
            raise ValueError(
                "retriever= names another retriever than this evaluator's; an evaluator evaluates its own "
                "retriever: RetrieverEvaluator.from_metric_names(metrics, retriever=that_retriever)"
            )
