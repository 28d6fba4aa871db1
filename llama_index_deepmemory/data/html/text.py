"""HTML bytes -> text: browser-style decoding, main content without chrome, Markdown, Documents."""

from __future__ import annotations

import codecs
import logging
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

from llama_index_deepmemory.data.html.pages import LoadOptions, Page

if TYPE_CHECKING:  # pragma: no cover
    from llama_index.core.schema import Document

logger = logging.getLogger(__name__)

# Page chrome rather than content, removed inside the main content when ``main_content=True``.
CHROME_TAGS = frozenset({"nav", "aside", "form", "iframe"})
PAGE_FRAME_TAGS = frozenset({"header", "footer"})  # chrome only when the main content is <body>
CHROME_ROLES = frozenset({"navigation", "banner", "contentinfo", "search"})
CHROME_CLASSES = frozenset({
    "sphinxsidebar", "headerlink",  # Sphinx
    "md-header", "md-sidebar", "md-footer", "md-nav", "md-source-file",  # MkDocs Material
    "wy-nav-side", "rst-versions", "rst-footer-buttons",  # Read the Docs theme
})
CHROME_DIV_CLASSES = frozenset({"related", "footer"})  # Sphinx's top bar and footer
NEVER_TEXT = ("script", "style", "noscript", "template")


@dataclass
class Converted:
    title: str
    text: str
    links: list[str]
    bad_links: list[str] = field(default_factory=list)


def convert_page(page: Page, options: LoadOptions) -> Converted:
    """Parse ``page``: its title, main-content text and absolute ``<a href>`` links."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(decode_html(page.data, page.charset), "html.parser")
    base_tag = soup.find("base", href=True)
    base_url = (join_url(page.url, str(base_tag["href"]).strip()) if base_tag else None) or page.url
    links, bad_links = [], []
    for anchor in soup.find_all("a", href=True):
        href = str(anchor["href"]).strip()
        if href and not href.startswith("#"):
            link = join_url(base_url, href)
            if link is None:
                bad_links.append(href)
            else:
                links.append(link)
    title = _title(soup)
    for element in soup.find_all(NEVER_TEXT):
        element.decompose()
    text = ""
    if options.main_content:
        main = _main_element(soup)
        if main is not None:
            _remove_chrome(main, frame_too=main.name == "body")
            text = _to_markdown(str(main), base_url, options)
    if not text:
        text = _to_markdown(str(soup), base_url, options)
    return Converted(title=title or page.url, text=text, links=links, bad_links=bad_links)


_BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))
# <meta charset="x"> and <meta http-equiv="Content-Type" content="text/html; charset=x">
_META_CHARSET = re.compile(rb"<meta[^>]*?charset\s*=\s*[\"']?\s*([-\w.:]+)", re.IGNORECASE)
META_SCAN_BYTES = 8192  # where a <meta charset> is looked for (browsers: 1024 bytes)
# Codecs that browsers decode as windows-1252, a superset (e.g. curly quotes in 0x80-0x9f).
_CHARSET_ALIASES = {"iso8859-1": "cp1252", "ascii": "cp1252"}


def _codec(label: str | None) -> str | None:
    """The Python text codec of a charset label, or None when unknown (or e.g. ``base64``/``zlib``)."""
    if not label:
        return None
    try:
        name = codecs.lookup(label.strip().strip("\"'")).name
        b"a".decode(name, "replace")  # LookupError for codecs that are not text encodings
    except (LookupError, ValueError):
        return None
    return _CHARSET_ALIASES.get(name, name)


def _meta_charset(data: bytes) -> str | None:
    match = _META_CHARSET.search(data, 0, META_SCAN_BYTES)
    codec = _codec(match.group(1).decode("ascii", "replace")) if match else None
    if codec is not None and codec.startswith(("utf-16", "utf-32")):
        return "utf-8"  # the <meta> itself was readable as ASCII, so the page is not UTF-16/32
    return codec


def decode_html(data: bytes, declared: str | None = None) -> str:
    """``data`` as text, the way browsers pick the encoding: a byte-order mark, else the HTTP
    ``charset`` (``declared``), else a ``<meta charset>``, else UTF-8 if it decodes strictly,
    else windows-1252. A declared encoding is kept even with a few invalid bytes (each becomes
    U+FFFD). NUL characters are dropped, as browsers do in text. Never guesses from statistics.
    """
    for bom, codec in _BOMS:
        if data.startswith(bom):
            return data[len(bom):].decode(codec, errors="replace").replace("\x00", "")
    codec = _codec(declared) or _meta_charset(data)
    if codec is None:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            codec = "cp1252"
    if codec is not None:
        text = data.decode(codec, errors="replace")
    return text.replace("\x00", "")


def join_url(base: str, href: str) -> str | None:
    """``href`` resolved against ``base``; None when it is not a valid URL (bad IPv6 host, port)."""
    try:
        url = urljoin(base, href)
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for an invalid port
    except ValueError:
        return None
    return url


def _main_element(soup: Any) -> Any:
    """The first ``[role=main]``, else ``<main>``, the ``<article>`` (when there is one, not counting
    articles nested in it: several are a list of posts or sections, each content), ``div.body``,
    ``#content``, ``<body>`` (one pass over the tree; CSS selectors are far slower on big pages)."""
    found: dict[str, Any] = {}
    articles = 0
    for tag in soup.find_all(True):
        if tag.get("role") == "main":
            return tag
        if tag.name == "article" and tag.find_parent("article") is None:
            articles += 1
        if tag.name in ("main", "article", "body") and tag.name not in found:
            found[tag.name] = tag
        elif tag.name == "div" and "body" in (tag.get("class") or ()) and "div.body" not in found:
            found["div.body"] = tag
        elif tag.get("id") == "content" and "#content" not in found:
            found["#content"] = tag
    if articles > 1:
        found.pop("article", None)
    for name in ("main", "article", "div.body", "#content", "body"):
        if name in found:
            return found[name]
    return None


def _is_chrome(tag: Any, frame_too: bool) -> bool:
    if tag.name in CHROME_TAGS or (frame_too and tag.name in PAGE_FRAME_TAGS):
        return True
    if tag.get("role") in CHROME_ROLES:
        return True
    classes = tag.get("class") or ()
    if any(c in CHROME_CLASSES for c in classes):
        return True
    return tag.name == "div" and any(c in CHROME_DIV_CLASSES for c in classes)


def _remove_chrome(main: Any, frame_too: bool) -> None:
    chrome = [tag for tag in main.find_all(True) if _is_chrome(tag, frame_too)]
    for tag in chrome:
        if not tag.decomposed:
            tag.decompose()


def _title(soup: Any) -> str:
    if soup.title is not None and soup.title.get_text(strip=True):
        return " ".join(soup.title.get_text().split())
    heading = soup.find("h1")
    return " ".join(heading.get_text().split()) if heading is not None else ""


_BLANK_LINES = re.compile(r"\n{3,}")


def _to_markdown(html: str, base_url: str, options: LoadOptions) -> str:
    import html2text

    converter = html2text.HTML2Text(baseurl=base_url)
    converter.body_width = 0  # no hard wrapping
    converter.unicode_snob = True  # keep non-ASCII characters as they are
    converter.ignore_images = True
    converter.ignore_links = not options.keep_links
    text = converter.handle(html)
    lines = (line.rstrip() for line in text.splitlines())
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def make_document(doc_id: str, converted: Converted, metadata: dict[str, Any]) -> "Document":
    from llama_index.core.schema import Document

    location_keys = [key for key in metadata if key != "title"]
    return Document(
        id_=doc_id,
        text=converted.text,
        metadata={**metadata, "title": converted.title},
        excluded_embed_metadata_keys=location_keys,
        excluded_llm_metadata_keys=location_keys,
    )


def looks_like_html(data: bytes) -> bool:
    """True when ``data`` opens like an HTML page (a doctype, ``<html`` or an early ``<body``)."""
    head = data[:1024].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html")) or b"<body" in head
