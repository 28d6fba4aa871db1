"""Train a Deep Memory model: query adapter + per-node memory + remembered training queries.

The method: a linear query adapter ``W q + b`` (identity-initialised, pulled toward identity) and
a learned vector per "memory" node (each node marked relevant in training; unit-norm for cosine
stores, pulled toward its stored vector) are trained with a listwise softmax cross-entropy whose
target spreads over every relevant id by weight (:mod:`.losses`). The softmax runs over the whole
corpus when it is small enough, otherwise over hard negatives mined from the store. Training
queries are also remembered as keys: a query close to a remembered one lifts that query's
relevant nodes. Early stopping and the key strength are chosen on validation queries, admitting
only candidates that do not hurt validation queries whose own nodes are forgotten by the model;
the model is then refit on all queries. Small sets are cross-validated (K folds trained in
lockstep, every query validates once, predictions pooled across folds); large sets use one
``validation_fraction`` split. A model whose validation gain is not significant is returned
with ``improved=False`` so the API never activates it.

One job per module: :mod:`.options` (the options and their validation), :mod:`.splits` (inputs
checked, folds), :mod:`.trainer` (the torch loop), :mod:`.losses` (the loss as torch modules),
:mod:`.mining` (candidates and hard negatives), :mod:`.selection` (validation through the serving
ranking, the admissible best, the significance gate), :mod:`.grids` (query keys, keyword weights,
far keywords, gate) and :mod:`.run` (:func:`train_model`, step by step). Importing the package does
not import torch.
"""

from llama_index_deepmemory.deep_memory.training.grids import (  # noqa: F401 - used by tests and benchmarks
    _build_lexical,
    _FarKeywords,
    _lexical_grid,
    _with_lexical,
)
from llama_index_deepmemory.deep_memory.training.options import TrainOptions
from llama_index_deepmemory.deep_memory.training.run import TrainResult, train_model
from llama_index_deepmemory.deep_memory.training.selection import (  # noqa: F401
    METRIC_NAMES,
    _evaluate,
    ranking_metrics,
    significant_gain,
)
from llama_index_deepmemory.deep_memory.training.splits import _Fold, _Split  # noqa: F401
from llama_index_deepmemory.deep_memory.training.trainer import TrainingCancelled, _Context  # noqa: F401

__all__ = [
    "METRIC_NAMES", "TrainOptions", "TrainResult", "TrainingCancelled", "ranking_metrics", "significant_gain", "train_model",
]
