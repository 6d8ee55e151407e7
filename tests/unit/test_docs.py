"""The documentation holds together: cited pages exist, links resolve, the README stays a front door."""
from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_LINES = 250

# A repository path under docs/ (not the tail of a longer path or URL).
DOCS_PATH = re.compile(r"(?<![A-Za-z0-9_./-])docs/[A-Za-z0-9_./-]+\.(?:md|png|py)")
# A markdown link or image target: ](target) or ](target "title").
LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"`[^`\n]*`")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def _text_files(*tops: Path) -> list[Path]:
    """Every readable text file under the given files or folders (caches and binaries skipped)."""
    files = []
    for top in tops:
        candidates = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for path in candidates:
            if "__pycache__" in path.parts or path.suffix in (".pyc", ".png"):
                continue
            try:
                path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue
            files.append(path)
    return files


def _markdown_pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def _prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks, with inline code spans removed."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(INLINE_CODE.sub("", line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: link text kept, lowercase, punctuation and symbols (backticks,
    asterisks) dropped except - and _, spaces to -."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links and images: their text
    kept = "".join(ch for ch in text.lower()
                   if ch in " -_" or unicodedata.category(ch)[0] in "LMN")
    return kept.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of a markdown page, with GitHub's -1, -2 … for repeated headings."""
    seen: dict[str, int] = {}
    result = set()
    fenced = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        match = None if fenced else HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def test_slug_follows_github():
    assert slug("The plans variant: `nnunet-xfer plan -d ID --arch ARCH`") == \
        "the-plans-variant-nnunet-xfer-plan--d-id---arch-arch"
    assert slug("Muscle measures (SMA, SMD, SMI, IMAT)") == "muscle-measures-sma-smd-smi-imat"
    assert slug("`Xfer<Source>Trainer_n<N>` trainers") == "xfersourcetrainer_nn-trainers"
    assert slug("Demo: 64² × 3 → 5") == "demo-64²--3--5"
    assert slug("**`nnUNet_xfer_*` variables**") == "nnunet_xfer_-variables"
    assert slug("See [the grid](experiment.md)") == "see-the-grid"


def test_cited_docs_files_exist():
    cited = {}
    for path in _text_files(ROOT / "nnunet_xfer", ROOT / "tests", ROOT / "benchmarks", README, DOCS):
        for match in DOCS_PATH.finditer(path.read_text(encoding="utf-8")):
            cited.setdefault(match.group(0), []).append(str(path.relative_to(ROOT)))
    assert cited, "no docs/ citation found at all: the scan is broken"
    missing = {name: where for name, where in cited.items() if not (ROOT / name).is_file()}
    assert not missing, f"cited but missing: {missing}"


#: A module or folder of the package named in the docs (``nnunet_xfer/imaging/names.py``).
PACKAGE_PATH = re.compile(r"(?<![A-Za-z0-9_./-])nnunet_xfer/[A-Za-z0-9_/]*[A-Za-z0-9_](?:\.py|/)")


def test_cited_package_files_exist():
    """docs/trainers.md and docs/development.md named a ``nnunet_xfer/names.py`` that was gone."""
    cited = {}
    for page in _markdown_pages():
        for match in PACKAGE_PATH.finditer(page.read_text(encoding="utf-8")):
            cited.setdefault(match.group(0), []).append(page.name)
    assert "nnunet_xfer/layout.py" in cited, "the scan is broken"
    missing = {name: where for name, where in cited.items() if not (ROOT / name).exists()}
    assert not missing, f"cited but missing: {missing}"
    tree = (DOCS / "development.md").read_text(encoding="utf-8").split("```")[1]
    listed = re.findall(r"^  ([A-Za-z0-9_]+(?:\.py|/))", tree, re.M)
    gone = [name for name in listed if not (ROOT / "nnunet_xfer" / name).exists()]
    assert not gone, f"docs/development.md's package map lists missing {gone}"


def test_markdown_links_resolve():
    pages = _markdown_pages()
    page_anchors = {page.resolve(): anchors(page) for page in pages}
    broken = []
    n_links = 0
    for page in pages:
        for line in _prose_lines(page.read_text(encoding="utf-8")):
            for target in LINK.findall(line):
                if SCHEME.match(target):
                    continue
                n_links += 1
                path_part, _, anchor = target.partition("#")
                linked = (page.parent / path_part).resolve() if path_part else page.resolve()
                if not linked.exists():
                    broken.append(f"{page.name}: {target} (no such file)")
                elif anchor and linked.suffix == ".md":
                    known = page_anchors.get(linked)
                    if known is None:
                        known = anchors(linked)
                    if anchor not in known:
                        broken.append(f"{page.name}: {target} (no such heading)")
    assert n_links > 0, "no relative link found at all: the scan is broken"
    assert not broken, "\n".join(broken)


def test_readme_is_a_front_door():
    text = README.read_text(encoding="utf-8")
    n_lines = len(text.splitlines())
    assert n_lines <= README_MAX_LINES, f"README.md has {n_lines} lines (at most {README_MAX_LINES})"
    assert "make demo" in text
    assert "make test" in text


@pytest.mark.parametrize("needle", ["DESIGN.md", "../shared"])
def test_no_citation_of_files_a_clone_lacks(needle):
    offenders = [str(path.relative_to(ROOT))
                 for path in _text_files(ROOT / "nnunet_xfer", README, DOCS)
                 if needle in path.read_text(encoding="utf-8")]
    assert not offenders, f"{needle} mentioned in: {offenders}"


def test_cli_reference_shows_every_command_as_its_parser_does():
    """docs/cli.md's usage line of each command is the parser's own (regenerate it when a
    command's options change)."""
    import argparse

    from nnunet_xfer.cli import build_parser
    text = (ROOT / "docs" / "cli.md").read_text()
    subs = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in subs.choices.items():
        usage = " ".join(parser.format_usage().removeprefix("usage: ").split())
        documented = re.search(rf"### {re.escape(name)}\n\n```\n(nnunet-xfer {re.escape(name)}\b[^\n]*)\n```", text)
        assert documented, f"docs/cli.md has no usage section for {name}"
        assert " ".join(documented.group(1).split()) == usage, f"docs/cli.md: {name} usage is stale"
