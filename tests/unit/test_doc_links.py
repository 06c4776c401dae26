"""The user docs stand on their own: every relative link in README.md and docs/*.md points at a file inside the
repository that exists (and at a heading that exists, for ``page.md#anchor``), and none reaches ``../shared``."""

from __future__ import annotations

import re

from conftest import ROOT

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _anchors(text: str) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for heading in re.findall(r"^#+\s+(.*)$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        out.add(slug)
    return out


def test_relative_links_resolve_inside_the_repository():
    problems, checked = [], 0
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for target in LINK.findall(text):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            checked += 1
            path, _, anchor = target.partition("#")
            where = f"{page.relative_to(ROOT)}: ({target})"
            dest = (page.parent / path).resolve() if path else page
            if ROOT.resolve() not in dest.parents and dest != ROOT.resolve():
                problems.append(f"{where} leaves the repository")
            elif not dest.exists():
                problems.append(f"{where} does not exist")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest.read_text(encoding="utf-8")):
                problems.append(f"{where}: no heading '#{anchor}'")
    assert checked >= 5
    assert not problems, "\n".join(problems)


def test_no_page_sends_users_to_the_shared_folder():
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        assert "shared/docs/ALGORITHMS.md" not in text, page
    assert (ROOT / "docs" / "algorithms.md").is_file()
    assert "docs/algorithms.md" in (ROOT / "README.md").read_text()
