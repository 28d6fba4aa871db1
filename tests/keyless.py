"""A small BEIR folder and query logs for the keyless path (README's 'No API key' section).

The corpus is the chunks of the notebook's small HTML pages. Like team jargon in real query logs,
every chunk has a code name that never occurs in its text; training and test queries ask about a
chunk by its code name, so plain retrieval cannot find it but Deep Memory's memory of the training
queries can. Built in a temporary folder by the tests; nothing large is committed.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "notebooks" / "data" / "docs"
TRAIN_TEMPLATES = ("What does the {code} section explain?", "Where is {code} documented?", "Tell me about {code}.")
TEST_TEMPLATES = ("Explain {code} to me.",)


def chunk_texts(chunk_size: int = 128) -> list[tuple[str, str]]:
    """``(title, text)`` of every chunk of the notebook's HTML pages."""
    from llama_index.core.node_parser import SentenceSplitter

    from llama_index_deepmemory import load_html_documents

    documents = load_html_documents(str(DOCS), show_progress=False)
    splitter = SentenceSplitter(chunk_size=chunk_size, chunk_overlap=16)
    chunks = []
    for document in documents:
        for text in splitter.split_text(document.text):
            chunks.append((str(document.metadata.get("title", "")), text))
    return chunks


def code_name(seed: str) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice("bdfgklmnprstvz") + rng.choice("aeiou") for _ in range(3))


def make_beir(folder: Path, chunk_size: int = 128) -> Path:
    """Write ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/train.tsv`` / ``qrels/test.tsv``."""
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    corpus, queries, qrels = [], [], {"train": [], "test": []}
    for i, (title, text) in enumerate(chunk_texts(chunk_size)):
        doc_id = f"d{i}"
        corpus.append({"_id": doc_id, "title": title, "text": text})
        code = code_name(text)
        for split, templates in (("train", TRAIN_TEMPLATES), ("test", TEST_TEMPLATES)):
            for j, template in enumerate(templates):
                query_id = f"{split}_{i}_{j}"
                queries.append({"_id": query_id, "text": template.format(code=code)})
                qrels[split].append((query_id, doc_id))
    write_jsonl(folder / "corpus.jsonl", corpus)
    write_jsonl(folder / "queries.jsonl", queries)
    for split, rows in qrels.items():
        lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t1" for q, d in rows]
        (folder / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n", "utf-8")
    return folder


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), "utf-8")


def write_csv_log(path: Path, rows: list[tuple[str, list[str]]]) -> Path:
    """A CSV query log: columns query and relevant_ids (ids separated by ';')."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["query", "relevant_ids"])
        for query, ids in rows:
            writer.writerow([query, ";".join(ids)])
    return path
