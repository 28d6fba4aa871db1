"""What an HTML load passes around and reports: options, fetched pages, issues, the report."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

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
class Page:
    """A fetched (or read) page, before conversion."""

    url: str
    data: bytes
    charset: str | None


@dataclass(frozen=True)
class LoadOptions:
    """The checked arguments of :func:`~llama_index_deepmemory.data.html.load_html_documents`."""

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


class FetchError(Exception):
    """A page that cannot be used; the message is the reason reported."""


def is_excluded(path: str, options: LoadOptions) -> bool:
    """True when ``path`` (URL path or relative file path) matches an ``exclude`` pattern."""
    return any(fnmatch.fnmatchcase(path, pattern) for pattern in options.exclude)
