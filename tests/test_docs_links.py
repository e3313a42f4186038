"""README.md and docs/*.md point at what exists: relative links (and their #anchors) resolve,
and every repository path or ``pdmtrack.`` module they name is there."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
REPO_PATH = re.compile(r"(?<![\w./-])((?:pdmtrack|tests|tools|benchmarks|docs|\.ci)/[\w./-]*[\w/])")
MODULE = re.compile(r"(?<![\w./-])(pdmtrack(?:\.\w+)+)")


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(doc: Path) -> set[str]:
    anchors: set[str] = set()
    fenced = False
    for line in doc.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            slug = _slug(line.lstrip("#"))
            anchors.add(slug if slug not in anchors else f"{slug}-1")
    return anchors


@pytest.mark.parametrize("doc", DOCS, ids=[doc.name for doc in DOCS])
def test_relative_links_resolve(doc: Path) -> None:
    broken = []
    for target in LINK.findall(doc.read_text(encoding="utf-8")):
        if re.match(r"\w+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        linked = (doc.parent / path).resolve() if path else doc
        if not linked.exists():
            broken.append(target)
        elif anchor and (linked.suffix != ".md" or anchor not in _anchors(linked)):
            broken.append(target)
    assert not broken, f"{doc.name}: {broken}"


def test_docs_link_every_page() -> None:
    """Every page of docs/ is reachable from the README."""
    linked = {(REPO / target.partition("#")[0]).resolve() for target in LINK.findall((REPO / "README.md").read_text())}
    assert {doc.resolve() for doc in DOCS[1:]} <= linked


@pytest.mark.parametrize("doc", DOCS, ids=[doc.name for doc in DOCS])
def test_named_paths_and_modules_exist(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    missing = [path for path in REPO_PATH.findall(text) if not (REPO / path).exists()]
    for dotted in MODULE.findall(text):
        parts = dotted.split(".")
        # the longest importable prefix, then attributes
        for cut in range(len(parts), 0, -1):
            try:
                found: object = importlib.import_module(".".join(parts[:cut]))
            except ModuleNotFoundError:
                continue
            for name in parts[cut:]:
                found = getattr(found, name, None)
            if found is None:
                missing.append(dotted)
            break
    assert not missing, f"{doc.name}: {missing}"
