"""The repository is self-contained: no tracked file points at a document outside it, and every
`docs/` page a file cites exists."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# A bare paper.md too: the repository holds no such file, so a mention of one refers to a copy outside it.
OUTSIDE_REFERENCES = re.compile(r"\.\./shared|shared/paper|\bpaper\.md\b")
DOCS_REFERENCE = re.compile(r"\bdocs/[\w./-]+\.md\b")
THIS_FILE = Path(__file__).resolve().relative_to(REPO).as_posix()  # names the patterns, so it matches them


def tracked_text_files() -> dict[str, str]:
    """Every tracked file that decodes as UTF-8 text, by its path relative to the repository root."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout: no list of tracked files")
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    texts = {}
    for name in filter(None, listed.decode().split("\0")):
        path = REPO / name
        if not path.is_file():  # deleted in the working tree, not yet committed
            continue
        data = path.read_bytes()
        if b"\0" in data:
            continue
        try:
            texts[name] = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
    return texts


def matches(pattern: re.Pattern[str], texts: dict[str, str]) -> list[tuple[str, int, str]]:
    return [
        (name, number, match.group())
        for name, text in texts.items()
        for number, line in enumerate(text.splitlines(), start=1)
        for match in pattern.finditer(line)
    ]


def test_no_tracked_file_refers_outside_the_repository():
    texts = tracked_text_files()
    assert "trainers/regularizers.py" in texts and "README.md" in texts  # the listing really covers the code
    texts.pop(THIS_FILE, None)
    offences = [f"{name}:{number}: {found}" for name, number, found in matches(OUTSIDE_REFERENCES, texts)]
    assert not offences, "cite docs/ instead of documents outside the repository:\n" + "\n".join(offences)


def test_every_cited_docs_page_exists():
    texts = tracked_text_files()
    texts.pop(THIS_FILE, None)
    cited = matches(DOCS_REFERENCE, texts)
    assert any(found == "docs/regularizers.md" for _, _, found in cited)
    missing = [f"{name}:{number}: {found}" for name, number, found in cited if not (REPO / found).is_file()]
    assert not missing, "these files cite docs/ pages that do not exist:\n" + "\n".join(missing)


def test_the_patterns_catch_what_they_name():
    # guards the two tests above against a pattern that silently matches nothing
    sample = {"a.py": 'see ../shared/x\nshared/paper\nthe paper.md\nok\n"docs/regularizers.md" and docs/missing.md'}
    assert [line for _, line, _ in matches(OUTSIDE_REFERENCES, sample)] == [1, 2, 3]
    assert [found for _, _, found in matches(DOCS_REFERENCE, sample)] == ["docs/regularizers.md", "docs/missing.md"]
