"""Markdown as GitHub reads it, through markdown-it-py (CommonMark plus GFM tables): the
links and images of a file, its headings' anchors, its tables as rows of cell text, and the
words of a level-2 section."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from markdown_it import MarkdownIt
from markdown_it.token import Token

REPO = Path(__file__).resolve().parents[2]

_MD = MarkdownIt("commonmark").enable("table")


def section_words(path: Path, heading: str) -> str:
    """The level-2 section that starts with the line ``heading`` (e.g. "## Benchmark"), up to
    the next one, its whitespace runs as single spaces (prose wraps anywhere)."""
    text = path.read_text(encoding="utf-8")
    start = text.index(f"\n{heading}\n") + 1
    end = text.find("\n## ", start + len(heading))
    return " ".join(text[start : end if end > 0 else None].split())


@cache
def tokens(path: Path) -> list[Token]:
    return _MD.parse(path.read_text(encoding="utf-8"))


def _text(inline: Token) -> str:
    """The text a reader sees in an inline token: code spans without backticks, no markup."""
    parts = []
    for child in inline.children or []:
        if child.type in {"text", "code_inline"}:
            parts.append(child.content)
        elif child.type in {"softbreak", "hardbreak"}:
            parts.append(" ")
        elif child.type == "image":
            parts.append(child.content)
    return "".join(parts)


@dataclass(frozen=True)
class Link:
    target: str  # the href or image src as written
    line: int  # 1-based line of the block it is in


def links(path: Path) -> Iterator[Link]:
    """Every link and image of ``path``, with the line of its block."""
    for token in tokens(path):
        if token.type != "inline":
            continue
        line = token.map[0] + 1 if token.map else 0
        for child in token.children or []:
            if child.type == "link_open":
                yield Link(str(child.attrs["href"]), line)
            elif child.type == "image":
                yield Link(str(child.attrs["src"]), line)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading (github-slugger): lower case; letters, marks, digits,
    underscores, hyphens and spaces kept, everything else dropped; spaces become hyphens."""
    kept = (
        c
        for c in heading.strip().lower()
        if c in " -" or unicodedata.category(c)[0] in "LMN" or unicodedata.category(c) == "Pc"
    )
    return "".join(kept).replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    """The anchors of ``path``'s headings; repeated headings get -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    out = set()
    toks = tokens(path)
    for i, token in enumerate(toks):
        if token.type != "heading_open":
            continue
        base = slug(_text(toks[i + 1]))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    # Explicit HTML anchors (<a id="..."> / name="...") count too.
    for token in toks:
        if token.type in {"html_block", "html_inline"} or token.type == "inline":
            content = token.content
            out.update(re.findall(r"<a\s+(?:id|name)=\"([^\"]+)\"", content))
    return frozenset(out)


def tables(path: Path) -> list[list[list[str]]]:
    """Every table of ``path`` as rows (the header row first) of cell text."""
    result: list[list[list[str]]] = []
    rows: list[list[str]] = []
    row: list[str] = []
    toks = tokens(path)
    for i, token in enumerate(toks):
        if token.type == "table_open":
            rows = []
        elif token.type == "tr_open":
            row = []
        elif token.type in {"th_open", "td_open"}:
            row.append(_text(toks[i + 1]).strip())
        elif token.type == "tr_close":
            rows.append(row)
        elif token.type == "table_close":
            result.append(rows)
    return result


def table(path: Path, header: list[str]) -> list[dict[str, str]]:
    """The one table of ``path`` whose header row is ``header``, as dicts keyed by column."""
    found = [t for t in tables(path) if t and t[0] == header]
    assert len(found) == 1, f"{path.name}: {len(found)} tables with header {header}"
    return [dict(zip(header, row, strict=True)) for row in found[0][1:]]


def code_spans(path: Path) -> Iterator[Link]:
    """Every inline code span of ``path`` (not fenced blocks: those hold commands whose
    arguments may be outputs still to be made), with the line of its block."""
    for token in tokens(path):
        if token.type != "inline":
            continue
        line = token.map[0] + 1 if token.map else 0
        for child in token.children or []:
            if child.type == "code_inline":
                yield Link(child.content, line)
