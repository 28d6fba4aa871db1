"""The training objective: a listwise softmax cross-entropy over candidate nodes (candidates come
from :mod:`.mining`). torch is imported inside functions only."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch


def store_scores(queries: "torch.Tensor", vectors: "torch.Tensor", metric: str) -> "torch.Tensor":
    """Store-scale scores in torch; the query-norm term of l2 is dropped (constant per query)."""
    dots = queries @ vectors.T
    if metric == "l2":
        return 2.0 * dots - (vectors * vectors).sum(1)[None, :]
    return dots


def listwise_loss(logits: "torch.Tensor", targets: "torch.Tensor", temperature: float) -> "torch.Tensor":
    """Cross-entropy between each row's target distribution over candidates (relevance weights,
    summing to 1) and the softmax of its scores divided by ``temperature``."""
    import torch

    log_probs = torch.log_softmax(logits / temperature, dim=1)
    return -(targets * log_probs).sum(1).mean()
