"""The documents point only at what exists: links, anchors and file paths in README.md and docs/.

`mkdocs build --strict` (run by `make test`) checks the site's own links; these tests also
cover README.md, file paths written as text or code (``bench/tiles.py``), and names of
documents anywhere in the sources (a docstring citing a ``DESIGN.md`` that is not there).
"""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

#: Pages whose rewrite is pending: their references are known to be stale. ``strict`` makes
#: the test fail once a page is fixed, so that it leaves this set.
FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.DOTALL)
# [text](target) and ![alt](target), with an optional "title".
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
# A relative path with at least one folder: `bench/tiles.py`, iou_maps/exports/, .ci/run.
# Not the middle of a URL or a longer path (the look-behind), nor a placeholder's tail.
PATH = re.compile(r"(?<![\w./:~@<{$-])((?:\.?[\w-]+/)+[\w.-]*)(?![\w<{*…])")
# Any name of a Markdown document, with or without folders.
DOCUMENT = re.compile(r"(?<![\w./:~@<{$-])((?:\.?[\w-]+/)*[\w.-]+\.md)\b")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


@cache
def tracked() -> frozenset[str]:
    """The repository's files: committed, staged, or new and not ignored (relative, POSIX)."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return frozenset(line for line in out.splitlines() if (ROOT / line).exists())


@cache
def folders() -> frozenset[str]:
    """Every folder that holds a tracked file, as ``a/b/``."""
    found = set()
    for name in tracked():
        parts = name.split("/")[:-1]
        found.update("/".join(parts[: i + 1]) + "/" for i in range(len(parts)))
    return frozenset(found)


def ignored(paths: list[str]) -> set[str]:
    """Those of ``paths`` that git ignores: generated outputs such as ``bench/out/``."""
    res = subprocess.run(
        ["git", "check-ignore", "--no-index", "--stdin"],
        cwd=ROOT,
        input="\n".join(paths),
        capture_output=True,
        text=True,
    )
    return set(res.stdout.splitlines())


def documents() -> list[str]:
    """README.md and every page under docs/, relative to the repository root."""
    pages = sorted(str(p.relative_to(ROOT)) for p in DOCS.rglob("*.md"))
    return ["README.md", *pages]


def prose(text: str) -> str:
    """``text`` without fenced code blocks and code spans: where links are links."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def slugs(markdown: str) -> set[str]:
    """The anchors of a page's headings, as GitHub and MkDocs (Python-Markdown's toc) spell them."""
    found = set()
    for heading in HEADING.findall(FENCE.sub("", markdown)):
        words = re.sub(r"[^\w\s-]", "", re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading))
        words = words.strip().lower()
        found.add(re.sub(r"\s", "-", words))  # GitHub keeps each space as a hyphen
        found.add(re.sub(r"[-\s]+", "-", words))  # toc's slugify folds runs of them
    return found


def is_placeholder(path: str) -> bool:
    """``bench/NAME.py``: a name to fill in, not a file."""
    stem = path.rstrip("/").rsplit("/", 1)[-1].split(".")[0]
    return stem.isupper() and len(stem) > 1


def broken_links(source: Path) -> list[str]:
    """The links of one document whose file, folder or anchor is not there."""
    text = source.read_text()
    problems = []
    for target in LINK.findall(prose(text)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
            continue  # http:, https:, mailto:
        path, _, anchor = target.partition("#")
        dest = (source.parent / path).resolve() if path else source
        if not dest.exists():
            problems.append(f"{target}: no such file")
            continue
        if source.is_relative_to(DOCS) and not dest.is_relative_to(DOCS):
            problems.append(f"{target}: outside docs/, which is all the site holds")
        if anchor and dest.suffix == ".md" and anchor not in slugs(dest.read_text()):
            problems.append(f"{target}: no heading #{anchor} in {dest.name}")
    return problems


def missing_paths(text: str) -> list[str]:
    """File paths written in ``text`` (relative to the repository root) that do not exist."""
    roots = {name.split("/")[0] for name in tracked()}
    candidates = [
        ref
        for ref in dict.fromkeys(PATH.findall(text))
        if ref.split("/")[0] in roots and not is_placeholder(ref)
    ]
    absent = [
        ref for ref in candidates if ref not in tracked() and ref.rstrip("/") + "/" not in folders()
    ]
    generated = ignored(absent) if absent else set()
    return [ref for ref in absent if ref not in generated]


def missing_documents(text: str) -> list[str]:
    """Names of Markdown documents in ``text`` that match no tracked document."""
    names = {Path(name).name for name in tracked() if name.endswith(".md")}
    return sorted(
        {ref for ref in DOCUMENT.findall(text) if ref not in tracked() and ref not in names}
    )


@pytest.mark.parametrize("name", documents())
def test_links_resolve(name: str) -> None:
    assert broken_links(ROOT / name) == []


@pytest.mark.parametrize("name", documents())
def test_file_paths_exist(name: str) -> None:
    text = (ROOT / name).read_text()
    assert missing_paths(text) == []
    assert missing_documents(text) == []


def test_sources_cite_only_documents_that_exist() -> None:
    sources = [
        name
        for name in tracked()
        if name.endswith((".py", ".yaml", ".toml", ".md", "Makefile", "Dockerfile"))
        and ROOT / name != Path(__file__).resolve()  # its own examples name missing ones
    ]
    cited = {name: missing_documents((ROOT / name).read_text()) for name in sorted(sources)}
    assert {name: refs for name, refs in cited.items() if refs} == {}


def test_every_page_is_linked_from_the_readme() -> None:
    readme = prose((ROOT / "README.md").read_text())
    linked = {str((ROOT / t.partition("#")[0]).resolve()) for t in LINK.findall(readme)}
    pages = {str(p.resolve()) for p in DOCS.glob("*.md")}
    assert sorted(pages - linked) == []


def test_the_checks_catch_what_is_missing(tmp_path: Path) -> None:
    text = (
        "See DESIGN.md, `iou_maps/nosuch.py`, tests/nosuch/ and iou_maps/exports/; "
        "`bench/NAME.py`; bench/out/ is generated; http://host/iou_maps/x.py is a URL; "
        "docs/architecture.md and README.md exist."
    )
    assert missing_paths(text) == ["iou_maps/nosuch.py", "tests/nosuch/"]
    assert missing_documents(text) == ["DESIGN.md"]
    page = tmp_path / "page.md"
    page.write_text(
        "# A page: here\n\n[ok](#a-page-here) [no](#nowhere) [gone](nosuch.md) "
        "[web](https://example.org/x.md) `[code](nosuch.md)`\n"
    )
    assert broken_links(page) == [
        "#nowhere: no heading #nowhere in page.md",
        "nosuch.md: no such file",
    ]
