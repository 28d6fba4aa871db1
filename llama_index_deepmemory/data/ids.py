"""Stable node ids (``node_0``, ``node_1``, ...) and a reproducible train/test split of nodes."""

from __future__ import annotations

import logging
import math
import random
from typing import TYPE_CHECKING, Sequence, TypeVar

if TYPE_CHECKING:  # pragma: no cover
    from llama_index.core.schema import BaseNode

logger = logging.getLogger(__name__)

NodeT = TypeVar("NodeT", bound="BaseNode")


def assign_stable_ids(nodes: Sequence[NodeT], prefix: str = "node_", start: int = 0) -> list[NodeT]:
    """Rename ``nodes`` in place to ``f"{prefix}{i}"`` (i = ``start``, ``start + 1``, ...) and return them.

    The same nodes in the same order always get the same ids (as the seed notebook does with
    ``node.id_ = f"node_{idx}"``), so relevance lists written against these ids stay valid across
    runs. Links between the given nodes (previous/next/parent/child) are renamed too, so the
    nodes still point at each other; links to documents outside ``nodes`` are left as they are.
    """
    from llama_index.core.schema import BaseNode, RelatedNodeInfo

    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, got {type(prefix).__name__} {prefix!r}")
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ValueError(f"start must be a non-negative int, got {start!r}")
    nodes = list(nodes)
    for position, node in enumerate(nodes):
        if not isinstance(node, BaseNode):
            raise TypeError(
                f"nodes[{position}] is a {type(node).__name__}, expected a LlamaIndex node "
                "(TextNode/Document); chunk documents with a node parser first"
            )
    old_ids = [node.node_id for node in nodes]
    if len(set(map(id, nodes))) != len(nodes):
        raise ValueError("the same node object appears more than once in nodes; pass each node once")
    new_ids = [f"{prefix}{start + i}" for i in range(len(nodes))]  # by position: nodes sharing an id get one each
    renamed: dict[str, str] = {}
    for old, new in zip(old_ids, new_ids):
        renamed.setdefault(old, new)  # a link to an id several nodes share follows its first holder
    for node, new in zip(nodes, new_ids):
        node.id_ = new
    for node in nodes:
        for kind, related in node.relationships.items():
            infos = related if isinstance(related, list) else [related]
            for info in infos:
                if isinstance(info, RelatedNodeInfo) and info.node_id in renamed:
                    info.node_id = renamed[info.node_id]
    logger.debug("assigned %d stable ids %s%d..%s%d", len(nodes), prefix, start, prefix, start + len(nodes) - 1)
    return nodes


def split_nodes(
    nodes: Sequence[NodeT], train_fraction: float = 0.8, seed: int = 42
) -> tuple[list[NodeT], list[NodeT]]:
    """Shuffle ``nodes`` with ``seed`` and cut them into ``(train, test)``; reproducible.

    ``train`` holds ``round(len(nodes) * train_fraction)`` nodes (the seed notebook's 80/20 with
    the default). Each part keeps the shuffled order; no node is in both parts.
    """
    if isinstance(train_fraction, bool) or not isinstance(train_fraction, (int, float)):
        raise TypeError(f"train_fraction must be a number in [0, 1], got {train_fraction!r}")
    if not math.isfinite(train_fraction) or not 0.0 <= train_fraction <= 1.0:
        raise ValueError(f"train_fraction must be in [0, 1], got {train_fraction!r}; use e.g. 0.8 for 80/20")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    items = list(nodes)
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    cut = int(round(len(items) * train_fraction))
    train = [items[i] for i in order[:cut]]
    test = [items[i] for i in order[cut:]]
    return train, test
