"""Commit messages: a subject under 72 characters, a blank line, then a body that says why.

The rule lives in .githooks/commit-msg (installed by `make hooks`); these tests run that script
on sample messages and on every commit after 9ba8aa5, the last commit made before the rule.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.docs.mdparse import REPO

HOOK = REPO / ".githooks" / "commit-msg"
SINCE = "9ba8aa5"  # the last commit before the rule; everything after it must obey
GOOD_BODY = "\n\nThe old subject ran to 170 characters; this says why in the body.\n"


def check(message: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "COMMIT_EDITMSG"
    path.write_text(message, encoding="utf-8")
    return subprocess.run(
        [sys.executable, str(HOOK), str(path)], capture_output=True, text=True, timeout=30
    )


@pytest.mark.parametrize(
    "message",
    [
        "Split Guard into repository and request path" + GOOD_BODY,
        "x" * 71 + GOOD_BODY,
        "é" * 71 + GOOD_BODY,  # characters, not bytes
        "\n\nLeading blank lines are dropped, as git drops them" + GOOD_BODY,
        "# a comment first\nFix the link check\n\nWhy.\n# Please enter the commit message\n",
        "Fix the link check\n\nWhy, with trailing space.   \n\n",
        "Fix the link check\n\nWhy.\n"
        "# ------------------------ >8 ------------------------\n"
        "diff --git a/x b/x\n",
        "Merge branch 'wip-docs'\n",
        "Merge branch 'a-branch-whose-name-is-long-enough-to-make-this-over-72-characters'\n",
    ],
)
def test_the_hook_accepts(message: str, tmp_path: Path) -> None:
    result = check(message, tmp_path)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("x" * 72 + GOOD_BODY, "the subject is 72 characters"),
        ("é" * 72 + GOOD_BODY, "the subject is 72 characters"),
        ("Fix the link check\n", "there is no body"),
        ("Fix the link check\n\n\n", "there is no body"),
        ("Fix the link check\n\n# only a comment\n", "there is no body"),
        ("Fix the link check\nWhy, with no blank line.\n", "not followed by a blank line"),
        ("", "the message is empty"),
        ("# all comments\n", "the message is empty"),
    ],
)
def test_the_hook_refuses(message: str, reason: str, tmp_path: Path) -> None:
    result = check(message, tmp_path)
    assert result.returncode == 1
    assert reason in result.stderr


def git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=60
    )


def test_commits_after_the_rule_obey_it(tmp_path: Path) -> None:
    if git("rev-parse", "--git-dir").returncode != 0:
        pytest.skip("not a git checkout (e.g. an sdist or a container copy): no history to check")
    if git("cat-file", "-e", f"{SINCE}^{{commit}}").returncode != 0:
        pytest.skip(
            f"commit {SINCE} is not in this clone (a shallow clone?): cannot tell which commits "
            "came after the rule; fetch more history (git fetch --unshallow) to check them"
        )
    shas = git("rev-list", "--no-merges", f"{SINCE}..HEAD").stdout.split()
    problems = []
    for sha in shas:
        message = git("log", "-1", "--format=%B", sha).stdout
        result = check(message, tmp_path)
        if result.returncode != 0:
            subject = message.splitlines()[0] if message else ""
            problems.append(f"{sha[:7]} {subject[:60]!r}: {result.stderr.splitlines()[0]}")
    assert problems == [], "\n".join(problems)
