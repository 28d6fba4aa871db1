"""Crawling a documentation site: breadth-first, same site and base path, concurrent, bounded."""

from __future__ import annotations

import hashlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence
from urllib.parse import urlsplit, urlunsplit

from llama_index_deepmemory.data.html.pages import CrawlIssue, CrawlReport, FetchError, LoadOptions, Page, is_excluded
from llama_index_deepmemory.data.html.text import convert_page, join_url, looks_like_html, make_document

if TYPE_CHECKING:  # pragma: no cover
    import httpx
    from llama_index.core.schema import Document

logger = logging.getLogger(__name__)

HTML_CONTENT_TYPES = ("text/html", "application/xhtml+xml")
WEB_SCHEMES = ("http", "https")
USER_AGENT = "llama-index-deepmemory-crawler/0.1"


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


def crawl_site(start_url: str, options: LoadOptions) -> "tuple[list[Document], CrawlReport]":
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

    def fetch(url: str) -> Page | FetchError:
        try:
            return _fetch(client, url, crawler.scope, options)
        except FetchError as error:
            return error
        except Exception as error:  # noqa: BLE001 - one bad page must not end the crawl
            logger.debug("unexpected error fetching %s", url, exc_info=True)
            return FetchError(f"unexpected error: {type(error).__name__}: {error}")

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

    def __init__(self, start_url: str, options: LoadOptions) -> None:
        self.options = options
        self.scope = _Scope.of(start_url)
        self.report = CrawlReport(source=start_url)
        self.documents: list[Document] = []
        self.seen: set[str] = {url_key(start_url)}  # URL keys queued or reported
        self.loaded_keys: set[str] = set()
        self.loaded_texts: dict[str, str] = {}  # sha256 of a page's text -> the URL loaded with it

    def skip(self, urls: Sequence[str], reason: str) -> None:
        self.report.skipped.extend(CrawlIssue(_short(url), reason) for url in urls)

    def accept(self, url: str, result: Page | FetchError) -> list[str]:
        """Turn a fetched page into a document (or a reported issue); its links to follow."""
        if isinstance(result, FetchError):
            self.report.failed.append(CrawlIssue(url, str(result)))
            return []
        final_key = url_key(result.url)
        if final_key in self.loaded_keys:
            self.skip([url], f"same page as {result.url} (redirect)")
            return []
        try:
            converted = convert_page(result, self.options)
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
        self.documents.append(make_document(result.url, converted, {"url": result.url}))
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
            if reason is None and is_excluded(urlsplit(link).path, self.options):
                reason = "matches an exclude pattern"
            if reason is None and depth == self.options.max_depth:
                reason = f"deeper than max_depth={self.options.max_depth}"
            if reason is None:
                queued.append(link)
            else:
                self.skip([link], reason)
        return queued


def _fetch(client: "httpx.Client", url: str, scope: _Scope, options: LoadOptions) -> Page:
    """GET ``url``, following in-scope redirects; raises :class:`FetchError` with the reason."""
    import httpx

    deadline = time.monotonic() + options.timeout
    chain = [url_key(url)]
    current = url
    for _hop in range(options.max_redirects + 1):
        try:
            with client.stream("GET", current) as response:
                if response.is_redirect:
                    target = join_url(current, response.headers["location"].strip())
                    if target is None:
                        raise FetchError(f"redirect to a malformed URL {_short(response.headers['location'])!r}")
                    reason = scope.reason_outside(target)
                    if reason is not None:
                        raise FetchError(f"redirect to {_short(target)} not followed: {reason}")
                    if url_key(target) in chain:
                        raise FetchError(f"redirect loop via {_short(target)}")
                    chain.append(url_key(target))
                    current = target
                    continue
                if response.status_code >= 400:
                    raise FetchError(f"HTTP {response.status_code}")
                if response.status_code != 200:
                    raise FetchError(f"HTTP {response.status_code} (expected 200)")
                content_type = response.headers.get("content-type", "")
                mime = content_type.split(";")[0].strip().lower()
                if mime and mime not in HTML_CONTENT_TYPES:
                    raise FetchError(f"not HTML (content-type {mime})")
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > options.max_bytes:
                    raise FetchError(f"too large: {int(declared)} bytes > max_bytes={options.max_bytes}")
                data = _read_capped(response, options, deadline)
                if not mime and not looks_like_html(data):
                    raise FetchError("not HTML (no content-type and no HTML markup)")
                return Page(str(response.url), data, response.charset_encoding)
        except httpx.TimeoutException as error:
            raise FetchError(f"timed out after {options.timeout:g}s ({type(error).__name__})") from None
        except httpx.HTTPError as error:
            raise FetchError(f"request failed: {type(error).__name__}: {error}") from None
    raise FetchError(f"more than max_redirects={options.max_redirects} redirects")


def _refuse_redirect_to_other_schemes(response: "httpx.Response") -> None:
    """Response hook: refuse a redirect to ``javascript:``/``data:``/``file:`` and the like.

    httpx builds the next request from ``Location`` even when not following redirects, and
    fails with ``InvalidURL`` on such targets before :func:`_fetch` sees the response; this
    hook runs first and reports the scheme instead. Other redirects are checked in ``_fetch``.
    """
    location = response.headers.get("location")
    if location is None or not response.is_redirect:
        return
    target = join_url(str(response.request.url), location.strip())
    if target is None:  # malformed: reported as such by httpx
        return
    scheme = urlsplit(target).scheme.lower()
    if scheme not in WEB_SCHEMES:
        raise FetchError(f"redirect to {_short(target)} not followed: unsupported scheme {scheme}:")


def _read_capped(response: "httpx.Response", options: LoadOptions, deadline: float) -> bytes:
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > options.max_bytes:
            raise FetchError(f"too large: more than max_bytes={options.max_bytes} bytes")
        if time.monotonic() > deadline:
            raise FetchError(f"timed out after {options.timeout:g}s (download too slow)")
        chunks.append(chunk)
    return b"".join(chunks)
