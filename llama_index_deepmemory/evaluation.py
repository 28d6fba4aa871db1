"""Compare retrievers (with and without Deep Memory) on a question dataset.

Two views, both over the same ``EmbeddingQAFinetuneDataset``-like object (``.queries`` and
``.relevant_docs`` dicts keyed by query id):

- LlamaIndex's ``RetrieverEvaluator`` per query (``hit_rate``, ``mrr``, ``precision``, ``recall``,
  ``ap``, ``ndcg``) averaged into a DataFrame shaped like the seed tutorial's ``display_results``;
- recall@k for k = 1..100 from the retrievers' rankings (:mod:`llama_index_deepmemory.metrics`),
  drawn as a PNG with :func:`plot_recall_at_k`.

pandas and matplotlib are imported inside the functions that need them.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from llama_index_deepmemory.atomic import atomic_write

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from llama_index.core.base.base_retriever import BaseRetriever
    from llama_index.core.evaluation.retrieval.base import RetrievalEvalResult

logger = logging.getLogger(__name__)

DEFAULT_METRICS = ("hit_rate", "mrr")
SUPPORTED_METRICS = ("hit_rate", "mrr", "precision", "recall", "ap", "ndcg")
DEFAULT_WORKERS = 8


def dataset_items(qa_dataset: Any) -> list[tuple[str, str, list[str]]]:
    """``(query_id, query, expected_node_ids)`` for every query of an ``EmbeddingQAFinetuneDataset``
    (each id once, in first-listed order)."""
    queries = getattr(qa_dataset, "queries", None)
    relevant = getattr(qa_dataset, "relevant_docs", None)
    if not isinstance(queries, Mapping) or not isinstance(relevant, Mapping):
        raise TypeError(
            f"expected an EmbeddingQAFinetuneDataset (with .queries and .relevant_docs dicts), got "
            f"{type(qa_dataset).__name__}; load one with EmbeddingQAFinetuneDataset.from_json(path)"
        )
    missing = [qid for qid in queries if not relevant.get(qid)]
    if missing:
        raise ValueError(
            f"{len(missing)} queries have no relevant node ids (e.g. {missing[:3]}); "
            "give every query at least one entry in relevant_docs or drop it"
        )
    if not queries:
        raise ValueError("the dataset has no queries; generate or load questions first")
    # an id listed twice is one judgement (LlamaIndex's nDCG would count it twice in the ideal DCG)
    return [(qid, str(query), list(dict.fromkeys(str(i) for i in relevant[qid]))) for qid, query in queries.items()]


def check_metrics(metrics: Sequence[str]) -> list[str]:
    """The metric names as a list, or a ValueError naming the unknown ones."""
    if isinstance(metrics, str):
        metrics = [metrics]
    names = list(metrics)
    unknown = [m for m in names if m not in SUPPORTED_METRICS]
    if unknown or not names:
        raise ValueError(f"unknown metric(s) {unknown or names!r}; choose from {list(SUPPORTED_METRICS)}")
    return names


def _check_workers(workers: int) -> int:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    return workers


async def gather_bounded(
    coroutine_factories: Sequence[Any], workers: int, desc: str | None, show_progress: bool, unit: str = "query"
) -> list[Any]:
    """Run the coroutines with at most ``workers`` in flight; results in input order."""
    semaphore = asyncio.Semaphore(_check_workers(workers))
    progress = None
    if show_progress:
        from tqdm.auto import tqdm

        progress = tqdm(total=len(coroutine_factories), desc=desc, unit=unit)

    async def run_one(make: Any) -> Any:
        async with semaphore:
            result = await make()
        if progress is not None:
            progress.update(1)
        return result

    try:
        return await asyncio.gather(*(run_one(make) for make in coroutine_factories))
    finally:
        if progress is not None:
            progress.close()


async def aevaluate_dataset(
    retriever: "BaseRetriever",
    qa_dataset: Any,
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    workers: int = DEFAULT_WORKERS,
    show_progress: bool = False,
    desc: str | None = None,
) -> list["RetrievalEvalResult"]:
    """``RetrieverEvaluator.aevaluate`` over every query, ``workers`` at a time, in dataset order."""
    from llama_index.core.evaluation import RetrieverEvaluator

    evaluator = RetrieverEvaluator.from_metric_names(check_metrics(metrics), retriever=retriever)
    items = dataset_items(qa_dataset)
    factories = [
        (lambda query=query, expected=expected: evaluator.aevaluate(query=query, expected_ids=expected))
        for _, query, expected in items
    ]
    return await gather_bounded(factories, workers, desc, show_progress)


def evaluate_dataset(
    retriever: "BaseRetriever",
    qa_dataset: Any,
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    workers: int = DEFAULT_WORKERS,
    show_progress: bool = False,
    desc: str | None = None,
) -> list["RetrievalEvalResult"]:
    """Synchronous :func:`aevaluate_dataset` (works inside Jupyter's running loop too)."""
    from llama_index.core.async_utils import asyncio_run

    return asyncio_run(
        aevaluate_dataset(retriever, qa_dataset, metrics, workers=workers, show_progress=show_progress, desc=desc)
    )


def display_results(
    names: Sequence[str],
    eval_results: Sequence[Sequence["RetrievalEvalResult"]],
    metrics: Sequence[str] | None = None,
) -> "pd.DataFrame":
    """One row per retriever: ``retrievers`` then the mean of each metric (seed tutorial layout)."""
    import pandas as pd

    if len(names) != len(eval_results):
        raise ValueError(f"got {len(names)} names but {len(eval_results)} result lists; pass one name per retriever")
    rows = []
    for name, results in zip(names, eval_results):
        if not results:
            raise ValueError(f"retriever {name!r} has no evaluation results")
        per_query = pd.DataFrame([result.metric_vals_dict for result in results])
        columns = list(metrics) if metrics is not None else list(per_query.columns)
        absent = [m for m in columns if m not in per_query.columns]
        if absent:
            raise ValueError(f"results for {name!r} have no metric(s) {absent}; evaluate with them first")
        rows.append({"retrievers": name, **{m: float(per_query[m].mean()) for m in columns}})
    from llama_index_deepmemory.tables import FullTable

    return FullTable(rows)


def evaluate_retrievers(
    retrievers: Mapping[str, "BaseRetriever"],
    qa_dataset: Any,
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    workers: int = DEFAULT_WORKERS,
    show_progress: bool = False,
) -> "pd.DataFrame":
    """Evaluate each named retriever on the dataset and return the :func:`display_results` table.

    >>> evaluate_retrievers({"without deep memory": r1, "with deep memory": r2}, qa_dataset)  # doctest: +SKIP
    """
    if not retrievers:
        raise ValueError("no retrievers given; pass e.g. {'without deep memory': r1, 'with deep memory': r2}")
    names = check_metrics(metrics)
    all_results = [
        evaluate_dataset(retriever, qa_dataset, names, workers=workers, show_progress=show_progress, desc=name)
        for name, retriever in retrievers.items()
    ]
    return display_results(list(retrievers), all_results, names)


async def aretrieve_rankings(
    retriever: "BaseRetriever",
    queries: Sequence[str],
    *,
    workers: int = DEFAULT_WORKERS,
    show_progress: bool = False,
    desc: str | None = None,
) -> list[list[str]]:
    """Node ids retrieved for each query, best first."""
    factories = [(lambda q=q: retriever.aretrieve(q)) for q in queries]
    results = await gather_bounded(factories, workers, desc, show_progress)
    return [[scored.node.node_id for scored in nodes] for nodes in results]


def retrieve_rankings(
    retriever: "BaseRetriever",
    queries: Sequence[str],
    *,
    workers: int = DEFAULT_WORKERS,
    show_progress: bool = False,
    desc: str | None = None,
) -> list[list[str]]:
    """Synchronous :func:`aretrieve_rankings`."""
    from llama_index.core.async_utils import asyncio_run

    return asyncio_run(aretrieve_rankings(retriever, queries, workers=workers, show_progress=show_progress, desc=desc))


def recall_at_k_table(
    rankings: Mapping[str, Sequence[Sequence[str]]],
    relevance: Sequence[Sequence[tuple[str, float]]],
    ks: Sequence[int] = tuple(range(1, 101)),
) -> "pd.DataFrame":
    """Mean recall@k per retriever: index ``k``, one column per name in ``rankings``."""
    import pandas as pd

    from llama_index_deepmemory.metrics import recall_at_k

    if not rankings:
        raise ValueError("no rankings given; pass {name: ranked node ids per query}")
    ks = [int(k) for k in ks]
    table = {name: [float(recall_at_k(ranked, relevance, k)) for k in ks] for name, ranked in rankings.items()}
    return pd.DataFrame(table, index=pd.Index(ks, name="k"))


def relevance_from_dataset(qa_dataset: Any) -> tuple[list[str], list[list[tuple[str, float]]]]:
    """``(queries, relevance)`` lists (weight 1.0) from an ``EmbeddingQAFinetuneDataset``."""
    items = dataset_items(qa_dataset)
    return [q for _, q, _ in items], [[(node_id, 1.0) for node_id in expected] for _, _, expected in items]


def recall_curves(
    retrievers: Mapping[str, "BaseRetriever"],
    qa_dataset: Any,
    ks: Sequence[int] = tuple(range(1, 101)),
    *,
    workers: int = DEFAULT_WORKERS,
    show_progress: bool = False,
) -> "pd.DataFrame":
    """:func:`recall_at_k_table` of retrievers run on the dataset (set their top-k to ``max(ks)``)."""
    queries, relevance = relevance_from_dataset(qa_dataset)
    rankings = {
        name: retrieve_rankings(r, queries, workers=workers, show_progress=show_progress, desc=name)
        for name, r in retrievers.items()
    }
    return recall_at_k_table(rankings, relevance, ks)


GATE_METRIC = "ndcg@10"  # the validation metric Deep Memory's activation gate compares


def gate_scores(val_before: Mapping[str, float], val_after: Mapping[str, float]) -> str:
    """``"validation nDCG@10 0.806 -> 0.836 (+0.030); recall@10 93.5% -> 93.5%"``: the gate's
    metric without and with the model, then recall@10 for reference; ``""`` when unknown."""
    before, after = val_before.get(GATE_METRIC), val_after.get(GATE_METRIC)
    if before is None or after is None:
        return ""
    text = f"validation nDCG@10 {before:.3f} -> {after:.3f} ({after - before:+.3f})"
    r_before, r_after = val_before.get("recall@10"), val_after.get("recall@10")
    if r_before is not None and r_after is not None:
        text += f"; recall@10 {100 * r_before:.1f}% -> {100 * r_after:.1f}%"
    return text


def model_contents(info: Mapping[str, Any]) -> str:
    """What a trained model applies at query time, from its training job's ``info``."""
    if not info:
        return "contents not recorded"
    if info.get("keywords_only"):
        return f"keyword (BM25) re-scoring only, weight {info.get('lexical_weight')}, on the plain store (no adapter, no memory)"
    parts = ["query adapter"]
    if info.get("memory_nodes"):
        parts.append(f"memory of {info['memory_nodes']} nodes")
    if info.get("key_weight"):
        parts.append(f"memory of the training queries (weight {info['key_weight']})")
    if not info.get("lexical_weight"):
        parts.append("no keyword re-scoring")
    elif info.get("far_lexical_weight", 0) > info["lexical_weight"]:
        parts.append(
            f"keyword re-scoring (weight {info['lexical_weight']}; {info['far_lexical_weight']} for queries whose "
            f"cosine to every training query is below {info.get('far_keyword_cosine')})"
        )
    else:
        parts.append(f"keyword re-scoring (weight {info['lexical_weight']})")
    return ", ".join(parts)


ANNOTATED_KS = (1, 3, 5, 10, 20, 50, 100)


def recall_limits(percent: "pd.DataFrame") -> tuple[float, float]:
    """y-axis limits (in %) zoomed to the curves: a margin around their range, within 0..100."""
    lo, hi = float(percent.min().min()), float(percent.max().max())
    pad = max(2.0, 0.08 * (hi - lo))
    return max(0.0, lo - pad), min(100.0 + pad / 2, hi + pad)


def recall_figure(curves: "pd.DataFrame", *, title: str = "Recall@k with and without Deep Memory") -> Any:
    """A matplotlib ``Figure`` of a :func:`recall_at_k_table`, in % as the printed tables are: one
    line per column, log-scaled k axis, y-axis zoomed to the data, and with two or more columns the
    gain of the last column over the first annotated at k = 1, 3, 5, 10, 20, 50, 100 (in points)."""
    from matplotlib.figure import Figure  # a bare Figure renders with Agg, whatever pyplot's backend

    if curves.empty:
        raise ValueError("the recall table is empty; compute it with recall_at_k_table first")
    percent = curves * 100.0
    figure = Figure(figsize=(7, 4.5), dpi=120)
    axes = figure.add_subplot()
    for name in percent.columns:
        axes.plot(percent.index, percent[name], marker="o" if len(percent) <= 12 else None, markersize=3, label=str(name))
    if percent.index.min() >= 1 and percent.index.max() / percent.index.min() >= 20:
        from matplotlib.ticker import ScalarFormatter

        axes.set_xscale("log")
        lo, hi = percent.index.min(), percent.index.max()
        axes.set_xticks([t for t in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000) if lo <= t <= hi])
        axes.xaxis.set_major_formatter(ScalarFormatter())
    axes.set_ylim(*recall_limits(percent))
    if percent.shape[1] >= 2:
        _annotate_gain(axes, percent)
    axes.set_xlabel("k (retrieved nodes)")
    axes.set_ylabel("recall@k (%)")
    axes.grid(True, which="both", alpha=0.3)
    axes.set_title(title)
    axes.legend(loc="lower right")
    figure.tight_layout()
    return figure


def _annotate_gain(axes: Any, percent: "pd.DataFrame") -> None:
    """Write ``+1.9`` / ``-3.8`` (points, last column minus first) above the curves at a few k."""
    first, last = percent.columns[0], percent.columns[-1]
    for k in ANNOTATED_KS:
        if k not in percent.index:
            continue
        gain = float(percent.at[k, last] - percent.at[k, first])
        top = float(max(percent.at[k, last], percent.at[k, first]))
        color = "tab:green" if gain > 0.05 else "tab:red" if gain < -0.05 else "dimgray"
        axes.annotate(f"{gain:+.1f}", (k, top), xytext=(0, 6), textcoords="offset points", ha="center",
                      fontsize=8, color=color)
    axes.text(0.01, 0.98, f"labels: {last} minus {first}, in recall points", transform=axes.transAxes,
              va="top", fontsize=8, color="dimgray")


def plot_recall_at_k(
    curves: "pd.DataFrame",
    path: str | os.PathLike[str],
    *,
    title: str = "Recall@k with and without Deep Memory",
) -> Path:
    """Draw a :func:`recall_at_k_table` into a PNG with :func:`recall_figure` (atomically)."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"plot path must end with .png, got {str(path)!r}")
    figure = recall_figure(curves, title=title)
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png"))
    logger.info("Wrote recall@k plot to %s", path)
    return path
