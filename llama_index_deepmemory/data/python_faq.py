"""Python's own FAQ as a real retrieval dataset (questions written by people, not an LLM).

Debian's ``python3.11-doc`` ships the Sphinx HTML of the Python docs. Every FAQ question is a
section heading ending with ``?`` (about 170 of them). The answer section, without its heading,
becomes a corpus node; the heading becomes a query whose one relevant node is that answer.
Other doc pages (tutorial, how-tos, ...) can be added, chunked, as distractor nodes.
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from llama_index.core.schema import TextNode

    from llama_index_deepmemory.data.qa_dataset import EmbeddingQAFinetuneDataset

logger = logging.getLogger(__name__)

DEFAULT_DOCS_DIR = Path("/usr/share/doc/python3.11/html")
INSTALL_HINT = "apt-get install python3.11-doc"
_HEADINGS = ("h1", "h2", "h3", "h4", "h5", "h6")


@dataclass
class PythonFAQ:
    """Corpus nodes plus FAQ questions and their relevant answer node (score 1.0)."""

    nodes: list["TextNode"]
    queries: list[str]
    relevance: list[list[tuple[str, float]]]
    query_ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.queries) != len(self.relevance):
            raise ValueError(
                f"queries ({len(self.queries)}) and relevance ({len(self.relevance)}) differ in length"
            )
        if not self.query_ids:
            self.query_ids = [f"q_{i}" for i in range(len(self.queries))]

    @property
    def answer_nodes(self) -> list["TextNode"]:
        """The FAQ answer nodes (no distractors)."""
        return [n for n in self.nodes if n.metadata.get("kind") == "faq_answer"]

    def split(self, test_fraction: float = 0.3, seed: int = 0) -> tuple["PythonFAQ", "PythonFAQ"]:
        """Random (train, test) split of the questions; both keep the full corpus."""
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
        order = list(range(len(self.queries)))
        random.Random(seed).shuffle(order)
        n_test = max(1, round(len(order) * test_fraction))
        test, train = sorted(order[:n_test]), sorted(order[n_test:])
        return self._subset(train), self._subset(test)

    def _subset(self, indices: Sequence[int]) -> "PythonFAQ":
        return PythonFAQ(
            nodes=self.nodes,
            queries=[self.queries[i] for i in indices],
            relevance=[self.relevance[i] for i in indices],
            query_ids=[self.query_ids[i] for i in indices],
        )

    def to_qa_dataset(self) -> "EmbeddingQAFinetuneDataset":
        """The LlamaIndex ``EmbeddingQAFinetuneDataset`` (queries, corpus, relevant_docs)."""
        from llama_index_deepmemory.data.qa_dataset import EmbeddingQAFinetuneDataset

        return EmbeddingQAFinetuneDataset(
            queries=dict(zip(self.query_ids, self.queries)),
            corpus={n.node_id: n.get_content() for n in self.nodes},
            relevant_docs={
                qid: [node_id for node_id, _ in rel] for qid, rel in zip(self.query_ids, self.relevance)
            },
        )


def find_faq_dir(docs_dir: str | Path | None = None) -> Path:
    """The folder holding the FAQ pages: ``docs_dir/faq`` or ``docs_dir`` itself."""
    root = Path(docs_dir) if docs_dir is not None else DEFAULT_DOCS_DIR
    for candidate in (root / "faq", root):
        if candidate.is_dir() and any(candidate.glob("*.html")):
            return candidate
    raise FileNotFoundError(
        f"No Python FAQ HTML found in {root} (looked for {root / 'faq'}/*.html and {root}/*.html). "
        f"Install the Python docs with `{INSTALL_HINT}` or pass the folder holding the HTML docs."
    )


def load_python_faq(
    docs_dir: str | Path | None = None,
    *,
    distractor_dirs: Iterable[str] = (),
    max_distractor_nodes: int | None = None,
    chunk_size: int = 256,
    chunk_overlap: int = 20,
) -> PythonFAQ:
    """Load the FAQ questions and answer nodes, optionally with chunked distractor pages.

    ``docs_dir`` is the HTML root (default ``/usr/share/doc/python3.11/html``) or the FAQ folder.
    ``distractor_dirs`` are folders under the HTML root (e.g. ``("tutorial", "howto")``) whose
    pages are chunked with LlamaIndex's ``SentenceSplitter`` and added, up to
    ``max_distractor_nodes``. FAQ pages are never used as distractors (their table of
    contents repeats the questions).
    """
    faq_dir = find_faq_dir(docs_dir)
    nodes, queries, relevance, query_ids = [], [], [], []
    for page in sorted(faq_dir.glob("*.html")):
        for number, (question, answer_html) in enumerate(_faq_sections(page.read_text("utf-8"))):
            text = html_to_text(answer_html)
            if not text:
                logger.debug("Skipping empty answer for %r in %s", question, page)
                continue
            node_id = f"faq_{page.stem}_{number:03d}"
            nodes.append(_make_node(node_id, text, {"kind": "faq_answer", "source": f"faq/{page.name}"}))
            queries.append(question)
            relevance.append([(node_id, 1.0)])
            query_ids.append(f"q_{page.stem}_{number:03d}")
    if not queries:
        raise ValueError(
            f"Found HTML in {faq_dir} but no FAQ questions (section headings ending with '?'). "
            f"Pass the Python docs HTML folder (from `{INSTALL_HINT}`)."
        )
    distractors = list(distractor_dirs)
    if distractors:
        root = faq_dir.parent if faq_dir.name == "faq" else faq_dir
        nodes.extend(
            load_distractor_nodes(
                root, distractors, max_nodes=max_distractor_nodes,
                chunk_size=chunk_size, chunk_overlap=chunk_overlap,
            )
        )
    logger.info("Loaded %d FAQ questions and %d nodes from %s", len(queries), len(nodes), faq_dir)
    return PythonFAQ(nodes=nodes, queries=queries, relevance=relevance, query_ids=query_ids)


def load_distractor_nodes(
    root: str | Path,
    subdirs: Sequence[str],
    *,
    max_nodes: int | None = None,
    chunk_size: int = 256,
    chunk_overlap: int = 20,
) -> list["TextNode"]:
    """Chunk the pages of ``root/<subdir>`` (read by ``load_html_documents``) into nodes.

    Node ids are ``doc_<subdir>_<page>_<i>`` (``<page>_2``, ... for a later page whose name gives
    the same slug); pages come in sorted order, so ids are stable.
    """
    from llama_index.core.node_parser import SentenceSplitter

    from llama_index_deepmemory.data.html import load_html_documents

    if max_nodes is not None and (isinstance(max_nodes, bool) or not isinstance(max_nodes, int) or max_nodes < 0):
        raise ValueError(f"max_nodes must be an int >= 0 or None, got {max_nodes!r}")
    root = Path(root)
    splitter = SentenceSplitter(chunk_size=chunk_size, chunk_overlap=chunk_overlap)
    nodes: list[TextNode] = []
    slugs: set[str] = set()
    for subdir in subdirs:
        folder = root / subdir
        if not folder.is_dir():
            raise FileNotFoundError(f"Distractor folder {folder} does not exist; pick folders under {root}.")
        for document in load_html_documents(folder, show_progress=False, exclude=("faq/*", "*/faq/*")):
            rel = f"{subdir}/{document.metadata.get('path', document.id_)}"
            slug = base = re.sub(r"[^A-Za-z0-9]+", "_", rel.removesuffix(".html")).strip("_")
            suffix = 2
            while slug in slugs:  # a-b.html after a_b.html: a page of its own, not the same ids
                slug, suffix = f"{base}_{suffix}", suffix + 1
            slugs.add(slug)
            for i, chunk in enumerate(splitter.split_text(document.text)):
                if max_nodes is not None and len(nodes) >= max_nodes:
                    return nodes
                nodes.append(_make_node(f"doc_{slug}_{i:03d}", chunk, {"kind": "doc", "source": rel}))
    return nodes


def _make_node(node_id: str, text: str, metadata: dict[str, str]) -> "TextNode":
    from llama_index.core.schema import TextNode

    keys = list(metadata)
    # metadata stays out of embeddings and LLM prompts: only the answer text is searchable
    return TextNode(
        id_=node_id, text=text, metadata=metadata,
        excluded_embed_metadata_keys=keys, excluded_llm_metadata_keys=keys,
    )


def _faq_sections(html: str) -> list[tuple[str, str]]:
    """(question, answer HTML without the heading) for each section whose heading ends in '?'."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    for link in soup.select("a.headerlink"):
        link.decompose()
    found = []
    for section in soup.find_all("section"):
        heading = section.find(_HEADINGS, recursive=False)
        if heading is None:
            continue
        question = " ".join(heading.get_text(" ").split())
        if not question.endswith("?"):
            continue
        parts = [str(child) for child in section.children if child is not heading]
        found.append((question, "".join(parts)))
    return found


def html_to_text(html: str) -> str:
    """Markdown-ish plain text of an HTML fragment (html2text, no links or images)."""
    import html2text

    converter = html2text.HTML2Text()
    converter.body_width = 0
    converter.ignore_links = True
    converter.ignore_images = True
    converter.ignore_emphasis = True
    text = converter.handle(html)
    return re.sub(r"\n{3,}", "\n\n", text).strip()
