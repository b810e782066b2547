"""Every relative link and image in README.md, docs/ and reports/ resolves: to a file or folder
of this checkout and, for a ``#anchor``, to a heading of the Markdown file it points at."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from tests.docs.markdown import REPO, Link, anchors, links

DOCS = sorted(
    [REPO / "README.md", *(REPO / "docs").glob("*.md"), *(REPO / "reports").rglob("*.md")]
)


def broken(path: Path, link: Link, root: Path = REPO) -> str | None:
    """Why ``link`` in ``path`` does not resolve inside ``root``, or None when it does (or is
    not relative)."""
    parts = urlsplit(link.target)
    if parts.scheme or parts.netloc:  # http(s), mailto, //host: not ours to check offline
        return None
    where = f"{path.relative_to(root)}:{link.line}: {link.target}"
    target = path if not parts.path else (path.parent / unquote(parts.path)).resolve()
    if not target.is_relative_to(root):
        return f"{where}: leaves the repository"
    if not target.exists():
        return f"{where}: no such file"
    if parts.fragment:
        if target.suffix != ".md":
            return f"{where}: an anchor into a file that is not Markdown"
        if unquote(parts.fragment) not in anchors(target):
            return f"{where}: no heading with that anchor in {target.relative_to(root)}"
    return None


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_links_resolve(path: Path) -> None:
    problems = [p for link in links(path) if (p := broken(path, link))]
    assert problems == [], "\n".join(problems)


def test_the_files_are_found() -> None:
    names = {str(p.relative_to(REPO)) for p in DOCS}
    assert {"README.md", "docs/deploy.md", "reports/README.md"} <= names


def test_a_broken_link_or_anchor_is_reported(tmp_path: Path) -> None:
    """The check itself: a missing file, a missing anchor and an escape are caught; good
    links, anchors (GitHub's slugs, repeated headings) and URLs pass."""
    root = tmp_path.resolve()
    (root / "docs").mkdir()
    (root / "README.md").write_text("# Top\n", encoding="utf-8")
    (root / "Makefile").write_text("all:\n", encoding="utf-8")
    (root / "docs" / "deploy.md").write_text("## Runbook: flag-rate alert\n", encoding="utf-8")
    doc = root / "docs" / "probe.md"
    doc.write_text(
        "# The guard: `service/` (REST)\n\n## Notes\n\n## Notes\n\n"
        "[ok](../README.md) [ok](deploy.md#runbook-flag-rate-alert) [ok](#the-guard-service-rest)\n"
        "[ok](#notes-1) [ok](https://example.com/x.md) [ok](../docs/) [ok](../README.md#top)\n\n"
        "[bad](nowhere.md) [bad](deploy.md#no-such-heading) [bad](../../outside.md)\n"
        "![bad](missing.png) [bad](#notes-2) [bad](../Makefile#x)\n",
        encoding="utf-8",
    )
    problems = [p for link in links(doc) if (p := broken(doc, link, root))]
    targets = [p.split(": ")[1] for p in problems]
    assert targets == [
        "nowhere.md",
        "deploy.md#no-such-heading",
        "../../outside.md",
        "missing.png",
        "#notes-2",
        "../Makefile#x",
    ], problems
