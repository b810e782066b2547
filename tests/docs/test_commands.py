"""The commands README and docs/ show exist: `make` targets in the Makefile, `python -m`
modules on the path, and (slow: each job's --help imports torch) every `--flag` given to a
module in that module's --help."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.docs.mdparse import REPO, code_spans, tokens

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MAKE = re.compile(r"(?<![\w-])make ([a-z][\w-]*)")
MODULE = re.compile(r"python -m ([A-Za-z_][\w.]*)([^\n]*)")
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")


def code(path: Path) -> Iterator[tuple[int, str]]:
    """Fenced blocks (continuation lines joined) and inline code spans, with their line."""
    for token in tokens(path):
        if token.type in {"fence", "code_block"} and token.info.strip() in {"", "sh", "bash"}:
            yield (token.map[0] + 1 if token.map else 0), token.content.replace("\\\n", " ")
    for span in code_spans(path):
        yield span.line, span.target


def make_targets() -> set[str]:
    text = (REPO / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([A-Za-z][\w-]*):", text, flags=re.MULTILINE))


def wrong_make(paths: list[Path], targets: set[str]) -> list[str]:
    return [
        f"{path.name}:{line}: make {t}"
        for path in paths
        for line, text in code(path)
        for t in MAKE.findall(text)
        if t not in targets
    ]


def module_flags(paths: list[Path] = DOCS) -> dict[str, dict[str, list[str]]]:
    """module -> flag -> where it is used."""
    found: dict[str, dict[str, list[str]]] = {}
    for path in paths:
        for line, text in code(path):
            for module, rest in MODULE.findall(text):
                rest = rest.split("#", 1)[0]  # a shell comment is not an argument
                flags = found.setdefault(module, {})
                for flag in FLAG.findall(rest):
                    flags.setdefault(flag, []).append(f"{path.name}:{line}")
    return found


def not_in_help(flags: dict[str, list[str]], help_text: str) -> dict[str, list[str]]:
    return {f: w for f, w in flags.items() if not re.search(re.escape(f) + r"(?![\w-])", help_text)}


def test_make_targets_exist() -> None:
    targets = make_targets()
    assert {"test", "serve", "hooks"} <= targets
    problems = wrong_make(DOCS, targets)
    assert problems == [], "\n".join(problems)


def test_python_modules_exist() -> None:
    modules = module_flags()
    assert "training.reproduce" in modules
    missing = sorted(m for m in modules if importlib.util.find_spec(m) is None)
    assert missing == []


@pytest.mark.slow
@pytest.mark.parametrize(
    "module", sorted(m for m, f in module_flags().items() if f and m.startswith("training"))
)
def test_flags_are_in_the_modules_help(module: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    unknown = not_in_help(module_flags()[module], result.stdout)
    assert unknown == {}, f"flags not in `python -m {module} --help`"


def test_the_checks_see_a_wrong_command(tmp_path: Path) -> None:
    doc = tmp_path / "probe.md"
    doc.write_text(
        "Run `make tset` or:\n\n```sh\nmake serve\n"
        "python -m training.reproduce --dataset mnist \\\n"
        "    --frobnicate  # --not-a-flag\n```\n",
        encoding="utf-8",
    )
    assert wrong_make([doc], {"serve"}) == ["probe.md:1: make tset"]
    flags = module_flags([doc])
    assert list(flags) == ["training.reproduce"]
    help_text = "usage: reproduce.py [-h] [--dataset DATASET] [--frobnicate-more]"
    assert not_in_help(flags["training.reproduce"], help_text) == {"--frobnicate": ["probe.md:3"]}
