"""Load HTML documentation (a website or a local folder) as LlamaIndex ``Document`` objects.

A URL is crawled breadth-first (links from ``<a href>``, as the seed notebook collects them),
staying on the same scheme and host and under the start URL's folder, up to ``max_depth`` links
away and ``max_pages`` pages. Pages are fetched concurrently with a timeout and a size cap;
everything not loaded is recorded in a :class:`CrawlReport` with its reason instead of
aborting the crawl. Each page is decoded as browsers do (:func:`decode_html`: BOM, HTTP charset,
``<meta charset>``, UTF-8, windows-1252; never a statistical guess) and its main content (Sphinx,
MkDocs or plain pages) is converted to Markdown-like text with html2text.

Documents come out in a deterministic order (breadth-first, in link order; sorted paths for
folders) with their URL or relative path as id, so stable node ids assigned after chunking stay
the same across runs of an unchanged site.

Modules: :mod:`.loader` (the entry point, arguments, local folders), :mod:`.crawl` (URLs and
fetching), :mod:`.text` (decoding and HTML -> Markdown), :mod:`.pages` (options, pages, the report).
"""

from __future__ import annotations

from llama_index_deepmemory.data.html.crawl import HTML_CONTENT_TYPES, USER_AGENT, WEB_SCHEMES, url_key
from llama_index_deepmemory.data.html.loader import HTML_SUFFIXES, iter_html_files, load_html_documents
from llama_index_deepmemory.data.html.pages import CrawlIssue, CrawlReport
from llama_index_deepmemory.data.html.text import META_SCAN_BYTES, decode_html

__all__ = [
    "HTML_CONTENT_TYPES",
    "HTML_SUFFIXES",
    "META_SCAN_BYTES",
    "USER_AGENT",
    "WEB_SCHEMES",
    "CrawlIssue",
    "CrawlReport",
    "decode_html",
    "iter_html_files",
    "load_html_documents",
    "url_key",
]
