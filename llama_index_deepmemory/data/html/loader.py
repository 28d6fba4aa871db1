"""``load_html_documents``: a URL (crawled) or a local HTML file or folder -> Documents and a report."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence
from urllib.parse import urlsplit

from llama_index_deepmemory.data.html.crawl import WEB_SCHEMES, crawl_site
from llama_index_deepmemory.data.html.pages import CrawlIssue, CrawlReport, FetchError, LoadOptions, Page, is_excluded
from llama_index_deepmemory.data.html.text import convert_page, looks_like_html, make_document

if TYPE_CHECKING:  # pragma: no cover
    from llama_index.core.schema import Document

logger = logging.getLogger(__name__)

HTML_SUFFIXES = (".html", ".htm", ".xhtml")


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
    options = LoadOptions(
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
        documents, report = crawl_site(location, options)
    else:
        documents, report = _read_folder(Path(location), options)
    logger.info("%s", report.summary())
    for issue in report.failed:
        logger.warning("not loaded: %s (%s)", issue.url, issue.reason)
    for issue in report.skipped:
        logger.debug("not followed: %s (%s)", issue.url, issue.reason)
    return (documents, report) if return_report else documents


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


def _read_folder(root: Path, options: LoadOptions) -> "tuple[list[Document], CrawlReport]":
    from tqdm.auto import tqdm

    report = CrawlReport(source=str(root))
    if root.is_file() and root.suffix.lower() not in HTML_SUFFIXES:  # an image would become nodes of garbage
        with open(root, "rb") as handle:
            if not looks_like_html(handle.read(1024)):
                raise ValueError(f"{root} is not an HTML file (no HTML suffix or opening tags); pass HTML files, "
                                 "a folder of them, a BEIR folder or an http(s) URL")
    base = root.parent if root.is_file() else root
    files = []
    for path in [root] if root.is_file() else iter_html_files(root):
        relative = path.relative_to(base).as_posix()
        if is_excluded(relative, options):
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
                raise FetchError(f"too large: {size} bytes > max_bytes={options.max_bytes}")
            converted = convert_page(Page(relative, path.read_bytes(), None), options)
        except FetchError as error:
            report.failed.append(CrawlIssue(relative, str(error)))
            continue
        except Exception as error:  # noqa: BLE001 - one bad file must not end the run
            report.failed.append(CrawlIssue(relative, f"cannot read HTML: {type(error).__name__}: {error}"))
            continue
        if not converted.text:
            report.failed.append(CrawlIssue(relative, "no text content"))
            continue
        metadata = {"path": relative, "file_path": str(path.resolve())}
        documents.append(make_document(relative, converted, metadata))
        report.loaded.append(relative)
    return documents, report


def iter_html_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The HTML files under ``folder`` (recursive) in the order :func:`load_html_documents` reads them."""
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in HTML_SUFFIXES and p.is_file())
