"""Every relative link and image in README.md, docs/ and reports/ resolves: to a file or folder
of this checkout and, for a ``#anchor``, to a heading of the Markdown file it points at. Paths
of this checkout named in README's and docs' code spans, and in the comments of the deploy
configuration, exist too."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from tests.docs.mdparse import REPO, Link, anchors, code_spans, links

DOCS = sorted(
    [REPO / "README.md", *(REPO / "docs").glob("*.md"), *(REPO / "reports").rglob("*.md")]
)

# Files whose comments name paths: the deploy configuration and the project's verbs.
COMMENTED = sorted(
    [
        *(REPO / "deploy").rglob("*.yml"),
        *(REPO / "deploy").rglob("*.yaml"),
        REPO / "docker-compose.yml",
        REPO / "Dockerfile",
        REPO / "Makefile",
        REPO / ".ci" / "run",
    ]
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


def top_folders(root: Path) -> list[str]:
    """The repository's top-level folders that git tracks a file in (a local, ignored runs/ or
    .venv/ is not one); every folder where ``root`` is not a git checkout."""
    try:
        files = subprocess.run(
            ["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return [p.name for p in root.iterdir() if p.is_dir() and p.name != ".git"]
    return sorted({f.split("/", 1)[0] for f in files if "/" in f})


def missing_paths(path: Path, text: str, root: Path = REPO) -> list[str]:
    """Paths in ``text`` that start with one of ``root``'s top-level folders (``deploy/...``,
    ``training/...``) and exist from none of ``path``'s folder and the folders above it up to
    ``root`` (a command may be run from deploy/prometheus). Placeholders (``models/<name>/``)
    are cut at the placeholder."""
    tops = "|".join(re.escape(name) for name in top_folders(root))
    pattern = re.compile(rf"(?<![\w./-])((?:{tops})/[\w.-]*(?:/[\w.-]+)*/?)")
    bases = [d for d in path.parents if d.is_relative_to(root)]
    return [
        p for p in pattern.findall(text) if not any((d / p.rstrip(".")).exists() for d in bases)
    ]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_links_resolve(path: Path) -> None:
    problems = [p for link in links(path) if (p := broken(path, link))]
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize(
    "path",
    [p for p in DOCS if not p.is_relative_to(REPO / "reports")],
    ids=lambda p: str(p.relative_to(REPO)),
)
def test_paths_in_code_spans_exist(path: Path) -> None:
    problems = [
        f"{path.relative_to(REPO)}:{span.line}: {p}"
        for span in code_spans(path)
        for p in missing_paths(path, span.target)
    ]
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("path", COMMENTED, ids=lambda p: str(p.relative_to(REPO)))
def test_paths_in_deploy_comments_exist(path: Path) -> None:
    problems = [
        f"{path.relative_to(REPO)}:{n}: {p}"
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if "#" in line
        for p in missing_paths(path, line[line.index("#") :])
    ]
    assert problems == [], "\n".join(problems)


def test_a_missing_path_is_reported(tmp_path: Path) -> None:
    root = tmp_path.resolve()
    (root / "deploy" / "k8s" / "monitoring").mkdir(parents=True)
    (root / "deploy" / "prometheus" / "tests").mkdir(parents=True)
    (root / "models").mkdir()
    config = root / "deploy" / "prometheus" / "prometheus.yml"
    text = (
        "# see deploy/k8s/monitoring/ and deploy/k8s/base/monitoring/, tests/ and models/<name>/;"
        " runs/ is not a folder here"
    )
    assert missing_paths(config, text, root) == ["deploy/k8s/base/monitoring/"]


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
