"""The torch loop: one run's shared context (options, device, callbacks, cancellation) and a
trainer per fold holding the adapter and memory parameters (:mod:`.losses`), its optimiser and its
candidates (:mod:`.mining`), running epochs. torch is imported inside functions only (the torch
modules of :mod:`.losses` when a trainer is built), so importing the package stays light."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Sequence

import numpy as np

from llama_index_deepmemory.deep_memory.base import StoreView
from llama_index_deepmemory.deep_memory.models import AdapterMemoryModel
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
    """One fold's parameters (:class:`~.losses.AdapterMemory`), its loss, optimiser and candidate
    source, and the epoch loop."""

    def __init__(self, ctx: _Context, split: _Split, memory_ids: list[str]) -> None:
        import torch

        from llama_index_deepmemory.deep_memory.training.adam import optimizer
        from llama_index_deepmemory.deep_memory.training.losses import AdapterMemory, ListwiseLoss

        self.ctx = ctx
        self.split = split
        self.memory_ids = memory_ids
        self.memory_index = {node: i for i, node in enumerate(memory_ids)}
        d = split.queries.shape[1]
        opts, dev = ctx.options, ctx.device
        base_memory = torch.from_numpy(
            np.asarray(ctx.store.get_vectors(memory_ids), dtype=np.float32).reshape(len(memory_ids), d)
        ).to(dev)
        self.params = AdapterMemory(base_memory, ctx.metric, opts.normalize_memory)
        self.loss = ListwiseLoss(
            self.params, temperature=opts.temperature, adapter_regularization=opts.adapter_regularization,
            memory_regularization=opts.memory_regularization, node_memory=opts.node_memory,
        )
        trained = [self.params.weight, self.params.bias]
        if opts.node_memory and memory_ids:
            trained.append(self.params.delta)
        self.optimizer = optimizer(trained, lr=opts.learning_rate)  # torch.optim.Adam's update, without its imports
        self.queries = torch.from_numpy(np.asarray(split.queries, dtype=np.float32)).to(dev)
        self.source = CandidateSource(
            ctx.store, split.queries, split.relevance, self.memory_index, device=dev,
            full_softmax_max_nodes=opts.full_softmax_max_nodes,
            num_negatives=opts.num_negatives, check_stop=ctx.check_stop, plain_mined=ctx.plain_mined,
        )

    def batch_loss(self, rows: Sequence[int]) -> "torch.Tensor":
        """The loss of the training queries at ``rows`` against their candidates."""
        vectors, memory_pos, targets = self.source.batch(rows)
        return self.loss(self.queries[list(rows)], vectors, memory_pos, targets)

    def snapshot(self) -> dict[str, np.ndarray]:
        """The current parameters as NumPy arrays (adapter weight, bias, memory vectors)."""
        return {
            "weight": self.params.weight.detach().cpu().numpy().copy(),
            "bias": self.params.bias.detach().cpu().numpy().copy(),
            "memory_vectors": self.params.memory_vectors().detach().cpu().numpy().copy(),
        }

    def identity_snapshot(self) -> dict[str, np.ndarray]:
        """The untrained parameters: identity adapter, memory at the stored vectors."""
        dim = self.params.weight.shape[0]
        return {
            "weight": np.eye(dim, dtype=np.float32),
            "bias": np.zeros(dim, np.float32),
            "memory_vectors": self.params.base_memory.cpu().numpy(),
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
        """One pass over the training queries in a seeded order (re-mining negatives every
        ``remine_every`` epochs); the mean batch loss."""
        import torch

        opts = self.ctx.options
        if epoch % opts.remine_every == 0:
            self.source.mine(self.model())
        order = torch.randperm(len(self.split.relevance), generator=generator).tolist()
        total, batches = 0.0, 0
        for start in range(0, len(order), opts.batch_size):
            self.ctx.check_stop()
            rows = order[start : start + opts.batch_size]
            self.optimizer.zero_grad()
            loss = self.batch_loss(rows)
            loss.backward()
            self.optimizer.step()
            total += float(loss.detach())
            batches += 1
        return total / max(1, batches)
