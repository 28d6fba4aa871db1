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
"""

from __future__ import annotations

import codecs
import fnmatch
import hashlib
import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence
from urllib.parse import urljoin, urlsplit, urlunsplit

if TYPE_CHECKING:  # pragma: no cover
    import httpx
    from llama_index.core.schema import Document

logger = logging.getLogger(__name__)

HTML_SUFFIXES = (".html", ".htm", ".xhtml")
HTML_CONTENT_TYPES = ("text/html", "application/xhtml+xml")
WEB_SCHEMES = ("http", "https")
USER_AGENT = "llama-index-deepmemory-crawler/0.1"

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


@dataclass(frozen=True)
class CrawlIssue:
    """One URL or file that did not become a document, and why."""

    url: str
    reason: str


@dataclass
class CrawlReport:
    """What a :func:`load_html_documents` run loaded, failed to load and chose not to follow.

    ``loaded``: the ids (URLs or relative paths) of the returned documents, in order.
    ``failed``: pages that were tried but unusable (HTTP errors, timeouts, over the size cap,
    not HTML, redirects leaving the site or looping, unreadable files).
    ``skipped``: links not followed (another site, outside the base path, unsupported scheme
    such as ``javascript:``/``file:``/``data:``, deeper than ``max_depth``, over ``max_pages``).
    """

    source: str
    loaded: list[str] = field(default_factory=list)
    failed: list[CrawlIssue] = field(default_factory=list)
    skipped: list[CrawlIssue] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.source}: {len(self.loaded)} loaded, {len(self.failed)} failed, "
            f"{len(self.skipped)} links skipped"
        )


@dataclass
class _Page:
    """A fetched (or read) page, before conversion."""

    url: str
    data: bytes
    charset: str | None


@dataclass(frozen=True)
class _Options:
    max_depth: int
    max_pages: int
    timeout: float
    max_bytes: int
    concurrency: int
    max_redirects: int
    main_content: bool
    keep_links: bool
    exclude: tuple[str, ...]
    show_progress: bool


def load_html_documents(
    source: str | os.PathLike[str],
    *,
    max_depth: int = 2,
    max_pages: int = 1000,
    timeout: float = 10.0,
    max_bytes: int = 5_000_000,
    concurrency: int = 8,
    max_redirects: int = 5,
    main_content: bool = True,
    keep_links: bool = False,
    exclude: Sequence[str] = (),
    show_progress: bool = True,
    return_report: bool = False,
) -> "list[Document] | tuple[list[Document], CrawlReport]":
    """Load the pages of ``source`` (an http(s) URL or a local HTML file/folder) as Documents.

    Args:
        source: start URL to crawl, or a local ``.html`` file or folder (searched recursively).
        max_depth: how many links away from the start page to follow (0: the start page only).
        max_pages: most pages requested (URLs) or read (folders).
        timeout: seconds allowed per page (connect, each read, and the whole download).
        max_bytes: size cap per page; bigger pages are reported as failed, not loaded.
        concurrency: pages fetched at the same time.
        max_redirects: redirects followed per page (each must stay on the site).
        main_content: keep only the page's main content, dropping navigation chrome.
        keep_links: keep hyperlinks in the Markdown text (default: link text only).
        exclude: glob patterns on the URL path or relative file path to leave out
            (e.g. ``"*/genindex*"``).
        show_progress: show a tqdm progress bar.
        return_report: also return the :class:`CrawlReport`.

    Returns:
        The documents (id = page URL after redirects, or path relative to the folder; metadata
        ``url``/``path``, ``title``), or ``(documents, report)`` with ``return_report=True``.
    """
    options = _Options(
        max_depth=_check_int("max_depth", max_depth, 0),
        max_pages=_check_int("max_pages", max_pages, 1),
        timeout=_check_positive("timeout", timeout),
        max_bytes=_check_int("max_bytes", max_bytes, 1),
        concurrency=_check_int("concurrency", concurrency, 1),
        max_redirects=_check_int("max_redirects", max_redirects, 0),
        main_content=bool(main_content),
        keep_links=bool(keep_links),
        exclude=_check_patterns(exclude),
        show_progress=bool(show_progress),
    )
    kind, location = _classify_source(source)
    if kind == "url":
        documents, report = _crawl(location, options)
    else:
        documents, report = _read_folder(Path(location), options)
    logger.info("%s", report.summary())
    for issue in report.failed:
        logger.warning("not loaded: %s (%s)", issue.url, issue.reason)
    for issue in report.skipped:
        logger.debug("not followed: %s (%s)", issue.url, issue.reason)
    return (documents, report) if return_report else documents


# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _check_positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
        raise ValueError(f"{name} must be a positive finite number of seconds, got {value!r}")
    return float(value)


def _check_patterns(patterns: Sequence[str]) -> tuple[str, ...]:
    if isinstance(patterns, str) or not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"exclude must be a list of glob patterns (str), got {patterns!r}")
    return tuple(patterns)


def _classify_source(source: str | os.PathLike[str]) -> tuple[str, str]:
    """``("url", normalised_url)`` or ``("path", path)``; ValueError for anything else."""
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str):
        raise TypeError(f"source must be a URL or a path (str), got {type(source).__name__} {source!r}")
    text = source.strip()
    scheme = urlsplit(text).scheme.lower()
    if len(scheme) > 1 and not os.path.exists(text):  # one letter: a Windows drive, not a scheme
        if scheme not in WEB_SCHEMES:
            raise ValueError(
                f"unsupported source {source!r}: only http(s) URLs and local HTML files/folders are "
                f"accepted, not {scheme}: (pass a local path without a scheme)"
            )
        try:
            parts = urlsplit(text)
            parts.port  # noqa: B018 - raises ValueError for an invalid port
        except ValueError as error:
            raise ValueError(f"source URL {source!r} is malformed ({error})") from None
        if not parts.hostname:
            raise ValueError(f"source URL {source!r} has no host; use e.g. 'https://docs.example.com/'")
        return "url", text
    if not os.path.exists(text):
        raise ValueError(f"source {source!r} is neither an http(s) URL nor an existing file or folder")
    return "path", text


def _excluded(path: str, options: _Options) -> bool:
    return any(fnmatch.fnmatchcase(path, pattern) for pattern in options.exclude)


# ---------------------------------------------------------------------------------------------
# URLs
# ---------------------------------------------------------------------------------------------


def url_key(url: str) -> str:
    """A URL's identity for de-duplication: no fragment, lower-case scheme/host, no default
    port, no trailing slash (``/docs/`` and ``/docs`` are one page)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    port = parts.port
    if port and (scheme, port) not in (("http", 80), ("https", 443)):
        host = f"{host}:{port}"
    path = parts.path or "/"
    if len(path) > 1:
        path = path.rstrip("/") or "/"
    return urlunsplit((scheme, host, path, parts.query, ""))


@dataclass(frozen=True)
class _Scope:
    """Same scheme and host as the start URL, and a path under its folder."""

    site: str  # scheme://host[:port] as in url_key
    base_path: str  # ends with "/"

    @classmethod
    def of(cls, start_url: str) -> "_Scope":
        key = urlsplit(url_key(start_url))
        raw_path = urlsplit(start_url).path or "/"
        if raw_path.endswith("/"):
            base = raw_path
        else:
            head, _, last = raw_path.rpartition("/")
            base = f"{head}/" if "." in last else f"{raw_path}/"
        return cls(f"{key.scheme}://{key.netloc}", base)

    def reason_outside(self, url: str) -> str | None:
        """None when ``url`` is in scope, else why not."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in WEB_SCHEMES:
            return f"unsupported scheme {scheme or '(none)'}:"
        key = urlsplit(url_key(url))
        if f"{key.scheme}://{key.netloc}" != self.site:
            return f"another site ({key.scheme}://{key.netloc}), crawl stays on {self.site}"
        path = parts.path or "/"
        if not (path.startswith(self.base_path) or path == self.base_path.rstrip("/")):
            return f"outside the base path {self.base_path}"
        return None


def _short(url: str, limit: int = 200) -> str:
    return url if len(url) <= limit else url[:limit] + "..."


# ---------------------------------------------------------------------------------------------
# Crawling
# ---------------------------------------------------------------------------------------------


class _FetchError(Exception):
    """A page that cannot be used; the message is the reason reported."""


def _crawl(start_url: str, options: _Options) -> "tuple[list[Document], CrawlReport]":
    """Breadth-first crawl, one depth level at a time so the output order never depends on timing."""
    import httpx
    from tqdm.auto import tqdm

    crawler = _Crawler(start_url, options)
    client = httpx.Client(
        timeout=httpx.Timeout(options.timeout),
        follow_redirects=False,
        headers={"User-Agent": USER_AGENT, "Accept": "text/html,application/xhtml+xml;q=0.9,*/*;q=0.1"},
        limits=httpx.Limits(max_connections=options.concurrency),
        event_hooks={"response": [_refuse_redirect_to_other_schemes]},
    )

    def fetch(url: str) -> _Page | _FetchError:
        try:
            return _fetch(client, url, crawler.scope, options)
        except _FetchError as error:
            return error
        except Exception as error:  # noqa: BLE001 - one bad page must not end the crawl
            logger.debug("unexpected error fetching %s", url, exc_info=True)
            return _FetchError(f"unexpected error: {type(error).__name__}: {error}")

    level = [start_url]
    requested = 0
    progress = tqdm(total=1, desc="Crawling", unit="page", disable=not options.show_progress)
    try:
        with ThreadPoolExecutor(max_workers=options.concurrency, thread_name_prefix="crawl") as pool:
            for depth in range(options.max_depth + 1):
                room = options.max_pages - requested
                crawler.skip(level[room:], f"page limit max_pages={options.max_pages} reached")
                level = level[:room]
                if not level:
                    break
                requested += len(level)
                progress.total = requested + (0 if depth == options.max_depth else 1)
                progress.refresh()
                next_level: list[str] = []
                for url, result in zip(level, pool.map(fetch, level)):
                    progress.update(1)
                    links = crawler.accept(url, result)
                    next_level.extend(crawler.follow(links, depth))
                level = next_level
    finally:
        progress.close()
        client.close()
    return crawler.documents, crawler.report


class _Crawler:
    """The crawl's bookkeeping: what was seen, loaded and reported."""

    def __init__(self, start_url: str, options: _Options) -> None:
        self.options = options
        self.scope = _Scope.of(start_url)
        self.report = CrawlReport(source=start_url)
        self.documents: list[Document] = []
        self.seen: set[str] = {url_key(start_url)}  # URL keys queued or reported
        self.loaded_keys: set[str] = set()
        self.loaded_texts: dict[str, str] = {}  # sha256 of a page's text -> the URL loaded with it

    def skip(self, urls: Sequence[str], reason: str) -> None:
        self.report.skipped.extend(CrawlIssue(_short(url), reason) for url in urls)

    def accept(self, url: str, result: _Page | _FetchError) -> list[str]:
        """Turn a fetched page into a document (or a reported issue); its links to follow."""
        if isinstance(result, _FetchError):
            self.report.failed.append(CrawlIssue(url, str(result)))
            return []
        final_key = url_key(result.url)
        if final_key in self.loaded_keys:
            self.skip([url], f"same page as {result.url} (redirect)")
            return []
        try:
            converted = _convert(result, self.options)
        except Exception as error:  # noqa: BLE001 - malformed markup is reported, not fatal
            self.report.failed.append(CrawlIssue(url, f"cannot convert HTML: {type(error).__name__}: {error}"))
            return []
        self.skip(converted.bad_links, f"malformed URL on {result.url}")
        if not converted.text:
            self.report.failed.append(CrawlIssue(url, "no text content"))
            return []
        digest = hashlib.sha256(converted.text.encode("utf-8")).hexdigest()
        if digest in self.loaded_texts:  # e.g. /docs/ and /docs/index.html
            self.skip([url], f"same content as {self.loaded_texts[digest]}")
            return []
        self.loaded_texts[digest] = result.url
        self.loaded_keys.add(final_key)
        self.seen.add(final_key)
        self.documents.append(_make_document(result.url, converted, {"url": result.url}))
        self.report.loaded.append(result.url)
        return converted.links

    def follow(self, links: list[str], depth: int) -> list[str]:
        """The new in-scope links (found at ``depth``) to fetch next; the others are reported."""
        queued = []
        for link in links:
            key = url_key(link) if urlsplit(link).scheme.lower() in WEB_SCHEMES else link
            if key in self.seen:
                continue
            self.seen.add(key)
            reason = self.scope.reason_outside(link)
            if reason is None and _excluded(urlsplit(link).path, self.options):
                reason = "matches an exclude pattern"
            if reason is None and depth == self.options.max_depth:
                reason = f"deeper than max_depth={self.options.max_depth}"
            if reason is None:
                queued.append(link)
            else:
                self.skip([link], reason)
        return queued


def _fetch(client: "httpx.Client", url: str, scope: _Scope, options: _Options) -> _Page:
    """GET ``url``, following in-scope redirects; raises :class:`_FetchError` with the reason."""
    import httpx

    deadline = time.monotonic() + options.timeout
    chain = [url_key(url)]
    current = url
    for _hop in range(options.max_redirects + 1):
        try:
            with client.stream("GET", current) as response:
                if response.is_redirect:
                    target = _join(current, response.headers["location"].strip())
                    if target is None:
                        raise _FetchError(f"redirect to a malformed URL {_short(response.headers['location'])!r}")
                    reason = scope.reason_outside(target)
                    if reason is not None:
                        raise _FetchError(f"redirect to {_short(target)} not followed: {reason}")
                    if url_key(target) in chain:
                        raise _FetchError(f"redirect loop via {_short(target)}")
                    chain.append(url_key(target))
                    current = target
                    continue
                if response.status_code >= 400:
                    raise _FetchError(f"HTTP {response.status_code}")
                if response.status_code != 200:
                    raise _FetchError(f"HTTP {response.status_code} (expected 200)")
                content_type = response.headers.get("content-type", "")
                mime = content_type.split(";")[0].strip().lower()
                if mime and mime not in HTML_CONTENT_TYPES:
                    raise _FetchError(f"not HTML (content-type {mime})")
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > options.max_bytes:
                    raise _FetchError(f"too large: {int(declared)} bytes > max_bytes={options.max_bytes}")
                data = _read_capped(response, options, deadline)
                if not mime and not _looks_like_html(data):
                    raise _FetchError("not HTML (no content-type and no HTML markup)")
                return _Page(str(response.url), data, response.charset_encoding)
        except httpx.TimeoutException as error:
            raise _FetchError(f"timed out after {options.timeout:g}s ({type(error).__name__})") from None
        except httpx.HTTPError as error:
            raise _FetchError(f"request failed: {type(error).__name__}: {error}") from None
    raise _FetchError(f"more than max_redirects={options.max_redirects} redirects")


def _refuse_redirect_to_other_schemes(response: "httpx.Response") -> None:
    """Response hook: refuse a redirect to ``javascript:``/``data:``/``file:`` and the like.

    httpx builds the next request from ``Location`` even when not following redirects, and
    fails with ``InvalidURL`` on such targets before :func:`_fetch` sees the response; this
    hook runs first and reports the scheme instead. Other redirects are checked in ``_fetch``.
    """
    location = response.headers.get("location")
    if location is None or not response.is_redirect:
        return
    target = _join(str(response.request.url), location.strip())
    if target is None:  # malformed: reported as such by httpx
        return
    scheme = urlsplit(target).scheme.lower()
    if scheme not in WEB_SCHEMES:
        raise _FetchError(f"redirect to {_short(target)} not followed: unsupported scheme {scheme}:")


def _read_capped(response: "httpx.Response", options: _Options, deadline: float) -> bytes:
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > options.max_bytes:
            raise _FetchError(f"too large: more than max_bytes={options.max_bytes} bytes")
        if time.monotonic() > deadline:
            raise _FetchError(f"timed out after {options.timeout:g}s (download too slow)")
        chunks.append(chunk)
    return b"".join(chunks)


def _looks_like_html(data: bytes) -> bool:
    head = data[:1024].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html")) or b"<body" in head


# ---------------------------------------------------------------------------------------------
# Local folders
# ---------------------------------------------------------------------------------------------


def _read_folder(root: Path, options: _Options) -> "tuple[list[Document], CrawlReport]":
    from tqdm.auto import tqdm

    report = CrawlReport(source=str(root))
    if root.is_file() and root.suffix.lower() not in HTML_SUFFIXES:  # an image would become nodes of garbage
        with open(root, "rb") as handle:
            if not _looks_like_html(handle.read(1024)):
                raise ValueError(f"{root} is not an HTML file (no HTML suffix or opening tags); pass HTML files, "
                                 "a folder of them, a BEIR folder or an http(s) URL")
    base = root.parent if root.is_file() else root
    files = []
    for path in [root] if root.is_file() else iter_html_files(root):
        relative = path.relative_to(base).as_posix()
        if _excluded(relative, options):
            report.skipped.append(CrawlIssue(relative, "matches an exclude pattern"))
        elif len(files) >= options.max_pages:
            report.skipped.append(CrawlIssue(relative, f"page limit max_pages={options.max_pages} reached"))
        else:
            files.append((path, relative))
    documents: list[Document] = []
    for path, relative in tqdm(files, desc="Reading HTML", unit="file", disable=not options.show_progress):
        try:
            size = path.stat().st_size
            if size > options.max_bytes:
                raise _FetchError(f"too large: {size} bytes > max_bytes={options.max_bytes}")
            converted = _convert(_Page(relative, path.read_bytes(), None), options)
        except _FetchError as error:
            report.failed.append(CrawlIssue(relative, str(error)))
            continue
        except Exception as error:  # noqa: BLE001 - one bad file must not end the run
            report.failed.append(CrawlIssue(relative, f"cannot read HTML: {type(error).__name__}: {error}"))
            continue
        if not converted.text:
            report.failed.append(CrawlIssue(relative, "no text content"))
            continue
        metadata = {"path": relative, "file_path": str(path.resolve())}
        documents.append(_make_document(relative, converted, metadata))
        report.loaded.append(relative)
    return documents, report


# ---------------------------------------------------------------------------------------------
# HTML -> text
# ---------------------------------------------------------------------------------------------


@dataclass
class _Converted:
    title: str
    text: str
    links: list[str]
    bad_links: list[str] = field(default_factory=list)


def _convert(page: _Page, options: _Options) -> _Converted:
    """Parse ``page``: its title, main-content text and absolute ``<a href>`` links."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(decode_html(page.data, page.charset), "html.parser")
    base_tag = soup.find("base", href=True)
    base_url = (_join(page.url, str(base_tag["href"]).strip()) if base_tag else None) or page.url
    links, bad_links = [], []
    for anchor in soup.find_all("a", href=True):
        href = str(anchor["href"]).strip()
        if href and not href.startswith("#"):
            link = _join(base_url, href)
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
    return _Converted(title=title or page.url, text=text, links=links, bad_links=bad_links)


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


def _join(base: str, href: str) -> str | None:
    """``href`` resolved against ``base``; None when it is not a valid URL (bad IPv6 host, port)."""
    try:
        url = urljoin(base, href)
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for an invalid port
    except ValueError:
        return None
    return url


def _main_element(soup: Any) -> Any:
    """The first ``[role=main]``, else ``<main>``, ``<article>``, ``div.body``, ``#content``, ``<body>``
    (one pass over the tree; CSS selectors are far slower on big pages)."""
    found: dict[str, Any] = {}
    for tag in soup.find_all(True):
        if tag.get("role") == "main":
            return tag
        if tag.name in ("main", "article", "body") and tag.name not in found:
            found[tag.name] = tag
        elif tag.name == "div" and "body" in (tag.get("class") or ()) and "div.body" not in found:
            found["div.body"] = tag
        elif tag.get("id") == "content" and "#content" not in found:
            found["#content"] = tag
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


def _to_markdown(html: str, base_url: str, options: _Options) -> str:
    import html2text

    converter = html2text.HTML2Text(baseurl=base_url)
    converter.body_width = 0  # no hard wrapping
    converter.unicode_snob = True  # keep non-ASCII characters as they are
    converter.ignore_images = True
    converter.ignore_links = not options.keep_links
    text = converter.handle(html)
    lines = (line.rstrip() for line in text.splitlines())
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def _make_document(doc_id: str, converted: _Converted, metadata: dict[str, Any]) -> "Document":
    from llama_index.core.schema import Document

    location_keys = [key for key in metadata if key != "title"]
    return Document(
        id_=doc_id,
        text=converted.text,
        metadata={**metadata, "title": converted.title},
        excluded_embed_metadata_keys=location_keys,
        excluded_llm_metadata_keys=location_keys,
    )


def iter_html_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The HTML files under ``folder`` (recursive) in the order :func:`load_html_documents` reads them."""
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in HTML_SUFFIXES and p.is_file())
