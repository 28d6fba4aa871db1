"""The torch loop: one run's shared context (options, device, callbacks) and a trainer per fold
holding the adapter and memory parameters, running epochs over the listwise loss."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Sequence

import numpy as np

from llama_index_deepmemory.deep_memory.base import StoreView
from llama_index_deepmemory.deep_memory.models import AdapterMemoryModel
from llama_index_deepmemory.deep_memory.training.losses import listwise_loss, store_scores
from llama_index_deepmemory.deep_memory.training.mining import CandidateSource, PlainMined
from llama_index_deepmemory.deep_memory.training.options import TrainOptions
from llama_index_deepmemory.deep_memory.training.splits import _Split

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)


class TrainingCancelled(Exception):
    """Raised inside :func:`train_model` when ``should_stop()`` turns true."""


class _Context:
    """Shared state of one training run: options, callbacks, device, timing."""

    def __init__(self, store: StoreView, options: TrainOptions, progress, should_stop) -> None:
        import torch

        self.store = store
        self.options = options
        self.progress = progress
        self.should_stop = should_stop
        self.metric = store.metric
        self.device = torch.device(options.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.started = time.perf_counter()
        self.plain_mined: PlainMined = {}  # untrained adapters' negatives, shared by the folds and the refit

    def check_stop(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise TrainingCancelled("Deep Memory training was cancelled")

    def report(self, fraction: float, message: str) -> None:
        logger.debug("training %.0f%%: %s", 100 * fraction, message)
        if self.progress is not None:
            self.progress(float(min(1.0, max(0.0, fraction))), message)


class _Trainer:
    """Parameters (adapter + node deltas) and the epoch loop with early stopping."""

    def __init__(self, ctx: _Context, split: _Split, memory_ids: list[str]) -> None:
        import torch

        self.ctx = ctx
        self.split = split
        self.memory_ids = memory_ids
        self.memory_index = {node: i for i, node in enumerate(memory_ids)}
        d = split.queries.shape[1]
        dev = ctx.device
        self.base_memory = torch.from_numpy(
            np.asarray(ctx.store.get_vectors(memory_ids), dtype=np.float32).reshape(len(memory_ids), d)
        ).to(dev)
        self.weight = torch.nn.Parameter(torch.eye(d, device=dev))
        self.bias = torch.nn.Parameter(torch.zeros(d, device=dev))
        self.delta = torch.nn.Parameter(torch.zeros((len(memory_ids), d), device=dev))
        params = [self.weight, self.bias] + ([self.delta] if ctx.options.node_memory and memory_ids else [])
        self.optimizer = torch.optim.Adam(params, lr=ctx.options.learning_rate)
        self.queries = torch.from_numpy(np.asarray(split.queries, dtype=np.float32)).to(dev)
        self.source = CandidateSource(
            ctx.store, split.queries, split.relevance, self.memory_index, device=ctx.device,
            full_softmax_max_nodes=ctx.options.full_softmax_max_nodes,
            num_negatives=ctx.options.num_negatives, check_stop=ctx.check_stop, plain_mined=ctx.plain_mined,
        )

    def transform(self, q: "torch.Tensor") -> "torch.Tensor":
        import torch

        out = q @ self.weight.T + self.bias
        return torch.nn.functional.normalize(out, dim=1) if self.ctx.metric == "cosine" else out

    def memory_vectors(self) -> "torch.Tensor":
        import torch

        vectors = self.base_memory + self.delta
        if self.ctx.metric == "cosine" and self.ctx.options.normalize_memory:
            vectors = torch.nn.functional.normalize(vectors, dim=1)
        return vectors

    def loss(self, rows: Sequence[int]) -> "torch.Tensor":
        import torch

        opts = self.ctx.options
        vectors, memory_pos, targets = self.source.batch(rows)
        qt = self.transform(self.queries[list(rows)])
        logits = store_scores(qt, vectors, self.ctx.metric)
        has_memory = memory_pos >= 0
        if opts.node_memory and bool(has_memory.any()):
            cols = torch.nonzero(has_memory).squeeze(1)
            mem_scores = store_scores(qt, self.memory_vectors()[memory_pos[cols]], self.ctx.metric)
            logits = logits.index_copy(1, cols, mem_scores)
        loss = listwise_loss(logits, targets, opts.temperature)
        eye = torch.eye(self.weight.shape[0], device=self.weight.device)
        loss = loss + opts.adapter_regularization * ((self.weight - eye) ** 2).sum() / self.weight.shape[0]
        loss = loss + opts.adapter_regularization * (self.bias**2).sum()
        if opts.node_memory and len(self.memory_ids):
            drift = self.memory_vectors() - self.base_memory
            loss = loss + opts.memory_regularization * (drift**2).sum(1).mean()
        return loss

    def snapshot(self) -> dict[str, np.ndarray]:
        return {
            "weight": self.weight.detach().cpu().numpy().copy(),
            "bias": self.bias.detach().cpu().numpy().copy(),
            "memory_vectors": self.memory_vectors().detach().cpu().numpy().copy(),
        }

    def model(self, snapshot: dict[str, np.ndarray] | None = None) -> AdapterMemoryModel:
        """A numpy model from the current (or a snapshot of) parameters, without query keys."""
        snap = snapshot or self.snapshot()
        use_memory = self.ctx.options.node_memory and len(self.memory_ids) > 0
        return AdapterMemoryModel(
            dim=snap["weight"].shape[0],
            metric=self.ctx.metric,
            weight=snap["weight"],
            bias=snap["bias"],
            memory_ids=self.memory_ids if use_memory else [],
            memory_vectors=snap["memory_vectors"] if use_memory else None,
        )

    def run_epoch(self, epoch: int, generator: "torch.Generator") -> float:
        import torch

        opts = self.ctx.options
        if epoch % opts.remine_every == 0:
            self.source.mine(self.model())
        order = torch.randperm(len(self.split.relevance), generator=generator).tolist()
        total, batches = 0.0, 0
        for start in range(0, len(order), opts.batch_size):
            self.ctx.check_stop()
            rows = order[start : start + opts.batch_size]
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.loss(rows)
            loss.backward()
            self.optimizer.step()
            total += float(loss.detach())
            batches += 1
        return total / max(1, batches)


def _identity_snapshot(trainer: _Trainer, dim: int) -> dict[str, np.ndarray]:
    return {
        "weight": np.eye(dim, dtype=np.float32),
        "bias": np.zeros(dim, np.float32),
        "memory_vectors": trainer.base_memory.cpu().numpy(),
    }
