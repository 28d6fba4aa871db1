"""What ``deepmemory train`` trains on: several sources at once, merged, plus what the active model learned.

``--questions`` (repeatable), ``--query-log`` (repeatable) and ``--beir FOLDER --split S`` may be
combined; the same question in several sources becomes one query (union of its relevant ids,
largest weight). Unless ``--fresh``, the queries the active model was trained on are added too, so
training on a feedback log adds to what the model learned instead of replacing it. Only the
standard library is imported here; readers load when the command runs.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

logger = logging.getLogger(__name__)

Source = tuple[str, list[str], list[list[tuple[str, float]]]]  # (description, queries, relevance)


def add_arguments(parser: argparse.ArgumentParser, log_help: str, split: str = "train") -> None:
    """The training-source options of ``deepmemory train``."""
    group = parser.add_argument_group("training data (any combination; at least one source)")
    group.add_argument("--questions", action="append", default=[], metavar="FILE",
                       help="EmbeddingQAFinetuneDataset JSON (from `generate` or the demo); repeatable (default: none)")
    group.add_argument("--query-log", action="append", default=[], metavar="LOG", help=log_help + "; repeatable (default: none)")
    group.add_argument("--beir", metavar="FOLDER", help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv); "
                       "the store must have been built from it with `ingest FOLDER` (default: none)")
    group.add_argument("--split", default=split, help=f"qrels split read with --beir (default: {split})")
    group.add_argument("--fresh", action="store_true",
                       help="train on the given sources only, not also on the data the active model was trained on "
                            "(default: add to it, so a feedback log adds to what was learned)")


def read_sources(args: argparse.Namespace) -> list[Source]:
    """Every source given, read and checked (files first, so errors come before any loading)."""
    from llama_index_deepmemory.cli_common import read_relevance as _read_relevance  # shared with `evaluate`

    if not (args.questions or args.query_log or args.beir):
        raise ValueError("train needs training data: --questions FILE.json, --query-log LOG (both repeatable) "
                         "and/or --beir FOLDER --split SPLIT")
    one = [argparse.Namespace(questions=path, query_log=None, beir=None, split=args.split) for path in args.questions]
    one += [argparse.Namespace(questions=None, query_log=path, beir=None, split=args.split) for path in args.query_log]
    if args.beir:
        one.append(argparse.Namespace(questions=None, query_log=None, beir=args.beir, split=args.split))
    sources = []
    for namespace in one:
        queries, relevance, description = _read_relevance(namespace)
        sources.append((description, queries, relevance))
    return sources


def previous_data(store: Any, fresh: bool) -> Source | None:
    """What the active model was trained on (None with ``fresh``, without a model, or without a record)."""
    if fresh or store.deep_memory.get_model() is None:
        return None
    try:
        previous = store.deep_memory.training_data()
    except ValueError as exc:  # a damaged record: the new sources alone still train
        from llama_index_deepmemory.cli_common import UserError

        raise UserError(f"{exc}; pass --fresh to train on the given sources only") from None
    name = store.deep_memory.get_model()
    if previous is None:
        print(f"Note: the active model {name} keeps no record of its training data (trained by an earlier version); "
              "training on the given sources only.")
        return None
    from llama_index_deepmemory.deep_memory.training_record import drop_missing_ids

    queries, relevance = drop_missing_ids(store, *previous)
    return f"the {len(queries)} queries {name} was trained on", queries, relevance


def merged(sources: list[Source]) -> tuple[list[str], list[list[tuple[str, float]]], str]:
    """``(queries, relevance, description)`` of every source merged."""
    from llama_index_deepmemory.deep_memory.training_record import merge_query_relevance

    queries, relevance = merge_query_relevance(*[(q, r) for _, q, r in sources])
    if len(sources) == 1:
        return queries, relevance, sources[0][0]
    parts = ", ".join(f"{len(q)} from {d}" for d, q, _ in sources)
    return queries, relevance, f"{len(queries)} merged queries ({parts})"
