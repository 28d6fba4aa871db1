"""The parts of an :class:`~llama_index_deepmemory.deep_memory.models.AdapterMemoryModel` as
frozen value objects, the table naming each field in the saved state, and their checking."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from llama_index_deepmemory.deep_memory.lexical import LexicalIndex


def int8_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(n, d)`` rows as int8 codes ``(n, d)`` times a power-of-two scale per row ``(n,)``.

    ``codes * scales[:, None]`` is exact in float32 and rounding it again returns the same codes
    and scales (the largest code of a non-zero row lies in [64, 127]). Relative error per entry at
    most 1/128 of the row's largest entry.
    """
    rows = np.asarray(rows, dtype=np.float32)
    peak = np.abs(rows).max(axis=1) if rows.size else np.zeros(len(rows), dtype=np.float32)
    exponent = np.ceil(np.log2(np.where(peak > 0, peak / np.float32(127.0), np.float32(1.0))))
    scales = np.exp2(np.clip(exponent, -126, 127)).astype(np.float32)
    codes = np.clip(np.rint(rows / scales[:, None]), -127, 127).astype(np.int8)
    return np.ascontiguousarray(codes), scales


def key_anchors(key_rows: np.ndarray, memory_rows: np.ndarray, link_key: np.ndarray, link_node: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """Each key's anchor for ``kernels.adapter_memory_scores``: the nearest of the memory rows it links to
    (-1: none), and the reach ``|k - m| + slack`` with which ``q . k <= q . m + |q| reach`` holds
    for the float32 products the kernel computes (sums of d terms err by at most d * 2**-24 of
    ``|q| |row|``; the slack is four times that plus 2**-16). ``key_rows`` and ``memory_rows`` are the
    rows as the kernel reads them (codes times scales)."""
    n_keys, d = key_rows.shape
    anchor = np.full(n_keys, -1, dtype=np.int64)
    reach = np.full(n_keys, np.inf, dtype=np.float64)
    if not n_keys or not len(link_key):
        return anchor, reach
    distance = np.empty(len(link_key), dtype=np.float64)
    for start in range(0, len(link_key), 8192):  # chunks: the float64 differences stay small (25 MB at d=384)
        stop = start + 8192
        difference = key_rows[link_key[start:stop]].astype(np.float64) - memory_rows[link_node[start:stop]]
        distance[start:stop] = np.sqrt(np.einsum("ij,ij->i", difference, difference))
    order = np.lexsort((distance, link_key))
    first = order[np.r_[True, link_key[order][1:] != link_key[order][:-1]]]  # each key's nearest link
    keys, nodes = link_key[first], link_node[first]
    gamma = 4.0 * d * 2.0**-24 + 2.0**-16
    norms = lambda rows: np.sqrt(np.einsum("ij,ij->i", rows.astype(np.float64), rows.astype(np.float64)))  # noqa: E731
    anchor[keys] = nodes
    reach[keys] = distance[first] * (1 + 2.0**-30) + gamma * (norms(key_rows[keys]) + norms(memory_rows[nodes]))
    return anchor, reach


def _checked_cosine(name: str, value: Any, zero: str) -> float:
    """``value`` as a cosine threshold in [0, 1], or a clear error naming ``name``."""
    number = float(value)
    if not (math.isfinite(number) and 0.0 <= number <= 1.0):
        raise ValueError(f"{name} must be a cosine in [0, 1] ({zero}), got {value!r}")
    return number


def _checked_weight(name: str, value: Any) -> float:
    """``value`` as a finite keyword weight >= 0, or a clear error naming ``name``."""
    number = float(value)
    if not (math.isfinite(number) and number >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return number


@dataclass(frozen=True, eq=False)
class Adapter:
    """The query adapter ``q_t = weight q + bias``: ``weight`` (d, d), ``bias`` (d,)."""

    weight: np.ndarray
    bias: np.ndarray


@dataclass(frozen=True, eq=False)
class Memory:
    """The memory nodes: their ``ids`` and learned vectors (n, d)."""

    ids: tuple[str, ...] = ()
    vectors: np.ndarray | None = None


@dataclass(frozen=True, eq=False)
class Keys:
    """Remembered training queries (``vectors``, transformed) linked to memory nodes:
    ``link_key[i]`` -> ``link_node[i]`` with ``link_weight[i]``; bonus ``weight`` above cosine ``threshold``."""

    vectors: np.ndarray | None = None
    link_key: np.ndarray | None = None
    link_node: np.ndarray | None = None
    link_weight: np.ndarray | None = None
    weight: float = 0.0
    threshold: float = 1.0


@dataclass(frozen=True, eq=False)
class Gate:
    """Queries whose cosine to every training query (``keys``, as embedded) is below ``threshold``
    go to the adapter alone, re-scored with ``fallback_lexical_weight`` (0: no gate)."""

    threshold: float = 0.0
    keys: np.ndarray | None = None
    fallback_lexical_weight: float = 0.0


@dataclass(frozen=True, eq=False)
class Keywords:
    """BM25 re-scoring with ``index`` at ``weight``; at ``far_weight`` for queries whose cosine to
    every training query (the gate's ``keys``) is below ``far_cosine`` (0: one weight)."""

    index: LexicalIndex | None = None
    weight: float = 0.0
    far_weight: float = 0.0
    far_cosine: float = 0.0


PARTS: dict[str, type] = {"adapter": Adapter, "memory": Memory, "keys": Keys, "gate": Gate, "keywords": Keywords}
# each field by its state name (the names to_state writes, the constructor and replace() take): (part, field)
FIELDS: dict[str, tuple[str, str]] = {
    "weight": ("adapter", "weight"), "bias": ("adapter", "bias"),
    "memory_ids": ("memory", "ids"), "memory_vectors": ("memory", "vectors"),
    "key_vectors": ("keys", "vectors"), "link_key": ("keys", "link_key"), "link_node": ("keys", "link_node"),
    "link_weight": ("keys", "link_weight"), "key_weight": ("keys", "weight"), "key_threshold": ("keys", "threshold"),
    "lexical": ("keywords", "index"), "lexical_weight": ("keywords", "weight"),
    "far_lexical_weight": ("keywords", "far_weight"), "far_cosine": ("keywords", "far_cosine"),
    "gate_threshold": ("gate", "threshold"), "gate_keys": ("gate", "keys"),
    "fallback_lexical_weight": ("gate", "fallback_lexical_weight"),
}
_STATE_ARRAYS = ("weight", "bias", "memory_vectors", "key_vectors", "link_key", "link_node", "link_weight", "gate_keys")
_STATE_META = ("gate_threshold", "far_lexical_weight", "far_cosine", "fallback_lexical_weight", "key_weight",
               "key_threshold", "lexical_weight")


def _array(value: Any, dtype: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    """``value`` as a C-contiguous array of ``dtype`` and ``shape`` (-1: any); zeros when None."""
    if value is None:
        return np.zeros(tuple(0 if n < 0 else n for n in shape), dtype=dtype)
    out = np.asarray(value, dtype=dtype)
    try:
        return np.ascontiguousarray(out.reshape(shape))
    except ValueError:
        raise ValueError(f"{name} of shape {out.shape} does not fit shape {shape} (-1: any)") from None


def _at_8_bits(rows: np.ndarray) -> np.ndarray:
    """``rows`` at the 8-bit precision the query path reads (:func:`int8_rows`; idempotent)."""
    codes, scales = int8_rows(rows)
    return codes * scales[:, None]


def _normalised(dim: int, given: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    """The five parts (``given``, defaults where None) with ``fields`` (by state name) applied,
    arrays typed and shaped, float matrices at their 8-bit values, settings checked."""
    parts = {name: given.get(name) or cls() for name, cls in PARTS.items() if name != "adapter"}
    parts["adapter"] = given.get("adapter") or Adapter(np.eye(dim, dtype=np.float32), np.zeros(dim, np.float32))
    changes: dict[str, dict[str, Any]] = {}
    for name, value in fields.items():
        if name not in FIELDS:
            raise TypeError(f"unknown Deep Memory model field {name!r}; use a part ({sorted(PARTS)}) or one of {sorted(FIELDS)}")
        part, field_name = FIELDS[name]
        changes.setdefault(part, {})[field_name] = value
    a, m, k, g, w = (dataclasses.replace(parts[name], **changes.get(name, {})) for name in PARTS)
    ids = tuple(m.ids or ())
    weight, bias = _array(a.weight, np.float32, (dim, dim), "weight"), _array(a.bias, np.float32, (dim,), "bias")
    vectors = _array(m.vectors, np.float32, (len(ids), dim), "memory_vectors")
    key_vectors = _array(k.vectors, np.float32, (-1, dim), "key_vectors")
    link_key, link_node = _array(k.link_key, np.int64, (-1,), "link_key"), _array(k.link_node, np.int64, (-1,), "link_node")
    link_weight = _array(k.link_weight, np.float32, (-1,), "link_weight")
    n_links = link_key.shape[0]
    if link_node.shape[0] != n_links or link_weight.shape[0] != n_links:
        raise ValueError("memory link arrays must have equal lengths")
    if n_links and (link_key.max() >= len(key_vectors) or link_node.max() >= len(ids)):
        raise ValueError("memory links point outside the stored keys or memory nodes")
    if n_links and (link_key.min() < 0 or link_node.min() < 0):
        raise ValueError("memory links must be non-negative indices")
    if len(set(ids)) != len(ids):
        raise ValueError("memory node ids must be unique")
    if not all(np.isfinite(x).all() for x in (weight, bias, vectors, key_vectors, link_weight)) or not math.isfinite(float(k.weight)):
        raise ValueError("Deep Memory model arrays contain NaN or infinite values; retrain the model")
    gate_threshold = _checked_cosine("gate_threshold", g.threshold, "0: no gate")
    gate_keys = None if g.keys is None else _array(g.keys, np.float32, (-1, dim), "gate_keys")
    if gate_keys is not None and not np.isfinite(gate_keys).all():
        raise ValueError("gate_keys contain NaN or infinite values; retrain the model")
    if gate_threshold > 0 and ids and (gate_keys is None or not len(gate_keys)):
        raise ValueError(
            f"gate_threshold={gate_threshold} needs the training queries as gate_keys; train with gate_threshold "
            "(training supplies them) or pass gate_threshold=0"
        )
    far_weight = _checked_weight("far_lexical_weight", w.far_weight)
    if far_weight > 0 and (gate_keys is None or not len(gate_keys)):
        raise ValueError(
            f"far_lexical_weight={far_weight} needs the training queries as gate_keys; "
            "train the model (training supplies them) or pass far_lexical_weight=0"
        )
    eye = np.eye(dim, dtype=np.float32)
    return {
        "adapter": Adapter(eye + _at_8_bits(weight - eye), bias),
        "memory": Memory(ids, _at_8_bits(vectors)),
        "keys": Keys(key_vectors, link_key, link_node, link_weight, float(k.weight), float(k.threshold)),
        "gate": Gate(gate_threshold, None if gate_keys is None else _at_8_bits(gate_keys),
                     _checked_weight("fallback_lexical_weight", g.fallback_lexical_weight)),
        "keywords": Keywords(w.index, _checked_weight("lexical_weight", w.weight), far_weight,
                             _checked_cosine("far_cosine", w.far_cosine, "0: no query is far")),
    }
