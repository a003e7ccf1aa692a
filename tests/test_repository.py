"""The repository is self-contained: no tracked file points at a document outside it, and every
`docs/` page a file cites exists. Its packages import in one direction only: study -> analysis -> trainers."""

from __future__ import annotations

import ast
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


# Top to bottom: a package may import those below it, never one above it (docs/architecture.md).
LAYERS = ("study", "analysis", "trainers")


def imported_packages(source: str, module: str) -> list[tuple[int, str]]:
    """(line, top-level package) of every import in `source`, function-level ones included; `module` is
    the dotted name of the importing module, against which relative imports resolve."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: the importing module's package, `level` steps up
                package = module.split(".")[: -node.level]
                found.append((node.lineno, package[0] if package else ""))
            else:
                found.append((node.lineno, node.module.split(".")[0]))
    return found


def upward_imports(source: str, module: str) -> list[str]:
    own = LAYERS.index(module.split(".")[0])
    return [f"{module}:{line}: imports {package}" for line, package in imported_packages(source, module)
            if package in LAYERS and LAYERS.index(package) < own]


def test_no_package_imports_one_above_it():
    offences, modules = [], 0
    for package in LAYERS:
        for path in sorted((REPO / package).rglob("*.py")):
            module = ".".join(path.relative_to(REPO).with_suffix("").parts)
            offences += upward_imports(path.read_text(), module)
            modules += 1
    assert modules > 50  # the walk really covers the packages
    assert not offences, f"imports against the direction {' -> '.join(LAYERS)}:\n" + "\n".join(offences)


def test_the_import_check_sees_every_kind_of_import():
    source = "import analysis.x\nfrom study import run\ndef f():\n    from ..trainers import config\n    import os\n"
    assert imported_packages(source, "trainers.data.cache") == [(1, "analysis"), (2, "study"), (4, "trainers"),
                                                                (5, "os")]
    assert upward_imports(source, "trainers.data.cache") == ["trainers.data.cache:1: imports analysis",
                                                             "trainers.data.cache:2: imports study"]
    assert upward_imports("def f():\n    from study.run import main\n", "analysis.report") == [
        "analysis.report:2: imports study"]
