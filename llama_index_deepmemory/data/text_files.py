"""Reading users' UTF-8 text files (BEIR folders, query logs, saved datasets): a leading byte-order
mark dropped, any line ending, and a file that is not UTF-8 refused naming ``path:line``, the byte
and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator


def utf8_text(path: Path) -> str:
    """The whole text of ``path`` (for files parsed at once: JSON, CSV)."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(_not_utf8(path, raw[: error.start].count(b"\n") + 1, raw[error.start:error.start + 1])) from None


def utf8_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of each line of ``path``, streamed (BEIR corpora can be gigabytes)."""
    with open(path, encoding="utf-8-sig") as handle:
        try:
            yield from enumerate(handle, start=1)
        except UnicodeDecodeError:
            raise ValueError(_not_utf8(path, *_first_bad_line(path))) from None


def _first_bad_line(path: Path) -> tuple[int, bytes]:
    """The number of the first line of ``path`` that is not UTF-8, and its first bad byte."""
    with open(path, "rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as error:
                return line_number, raw[error.start:error.start + 1]
    return 0, b""  # pragma: no cover - only called after a decoding error


def _not_utf8(path: Path, line_number: int, byte: bytes) -> str:
    return f"{path}:{line_number}: not valid UTF-8 (byte {byte!r}); save the file as UTF-8, e.g. iconv -f latin1 -t utf-8"
