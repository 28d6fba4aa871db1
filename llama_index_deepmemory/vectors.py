"""Vector checks shared by every backend (shape, dimension, finiteness, cosine normalisation) and score-row padding."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def as_matrix(
    vectors: Any, what: str, dim: int | None, metric: str, labels: Sequence[str] | None = None
) -> np.ndarray:
    """``vectors`` as (n, d) float32 checked for shape, dimension ``dim`` (None: any) and
    finiteness, normalised to unit length when ``metric`` is ``"cosine"``."""
    try:
        with np.errstate(over="ignore"):  # values beyond float32 become inf, refused below
            matrix = np.array(vectors, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be numeric vectors of one length ({exc})") from None
    if matrix.ndim == 1:
        matrix = matrix[None, :]
    if matrix.ndim != 2 or matrix.shape[1] == 0:
        raise ValueError(
            f"{what} must be non-empty vectors, got an array of shape {matrix.shape} "
            f"({matrix.shape[-1] if matrix.ndim else 0}-dimensional)"
        )
    if dim is not None and matrix.shape[1] != dim:
        raise ValueError(
            f"{what}: got {matrix.shape[1]}-dimensional vectors but this store holds "
            f"{dim}-dimensional ones; embed with the same model the store was built with."
        )
    finite = np.isfinite(matrix).all(axis=1)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        name = labels[bad] if labels is not None else f"row {bad}"
        raise ValueError(f"{what}: {name} contains NaN or infinite values")
    if metric == "cosine":
        norms = np.linalg.norm(matrix, axis=1)
        if (norms == 0).any():
            bad = int(np.flatnonzero(norms == 0)[0])
            name = labels[bad] if labels is not None else f"row {bad}"
            raise ValueError(f"{what}: {name} is a zero vector, which has no cosine similarity")
        matrix /= norms[:, None]
    return matrix


def padded(rows: Sequence[np.ndarray]) -> np.ndarray:
    """Rows of scores of different lengths as one float32 matrix, padded with -inf."""
    out = np.full((len(rows), max((len(row) for row in rows), default=0)), -np.inf, dtype=np.float32)
    for row, values in zip(out, rows):
        row[: len(values)] = values
    return out
