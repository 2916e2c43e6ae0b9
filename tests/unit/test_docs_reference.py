"""The docs reference only what the repository holds, and configuration.md covers every flag."""
from __future__ import annotations

import pathlib
import re

import pytest

from flannel_ext.cli import build_parser

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = ROOT / "Documentation"
LINK = re.compile(r"\]\(([^)#\s]+\.md)?(?:#([^)\s]+))?\)")
SOURCES = [p for d in ("flannel_ext", "recipes", "hooks", "demo", "Documentation", "tests")
           for p in (ROOT / d).rglob("*") if p.is_file() and p.suffix in (".py", ".md", ".j2", ".sh", "")
           and "__pycache__" not in p.parts and p.name != pathlib.Path(__file__).name]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: pathlib.Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    return {slug(m) for m in re.findall(r"^#+ (.+)$", text, flags=re.M)}


@pytest.mark.parametrize("page", sorted(DOCS.glob("*.md")), ids=lambda p: p.name)
def test_every_link_resolves_to_a_page_and_heading_of_ours(page):
    for target, anchor in LINK.findall(page.read_text()):
        linked = (page.parent / target) if target else page
        assert linked.exists(), f"{page.name} links to {target}, which is not in the repository"
        if anchor:
            assert anchor in anchors(linked), f"{page.name} links to {target}#{anchor}: no such heading"


def test_no_citation_of_the_compat_notes_anywhere():
    cited = [str(p.relative_to(ROOT)) for p in SOURCES
             if re.search(r"compat(?:ibility)? (?:notes|§)|flannel-compat\.md|\(§\d", p.read_text(errors="replace"))]
    assert cited == []


def test_the_index_lists_every_page():
    index = (DOCS / "README.md").read_text()
    missing = [p.name for p in DOCS.glob("*.md") if p.name != "README.md" and f"]({p.name})" not in index]
    assert missing == []


def test_configuration_md_documents_every_run_flag():
    text = (DOCS / "configuration.md").read_text()
    run = build_parser()._subparsers._group_actions[0].choices["run"]  # type: ignore[union-attr]
    flags = {opt for action in run._actions for opt in action.option_strings if opt not in ("-h", "--help")}
    missing = sorted(flag for flag in flags if f"`{flag}" not in text)
    assert missing == []
