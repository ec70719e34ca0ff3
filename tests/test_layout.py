"""The project's shape: dependencies run one way (no import cycle, processing never imports
release, no stage imports the simulator), and what the docs and docstrings name exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.conftest import REPO

PACKAGES = ("processing", "release")


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for p in sorted((REPO / package).rglob("*.py")):
            name = ".".join(p.relative_to(REPO).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = p
    return out


def _imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports anywhere (inside functions too), but under
    ``if TYPE_CHECKING:`` (annotations only, never executed)."""
    tree = ast.parse(path.read_text())
    typing_only = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING"
        for n in ast.walk(node)
    }
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}
    return {m for m in out if m in known and m != name}


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {name: _imports(name, path, known) for name, path in known.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_among_the_projects_modules():
    graph = _graph()
    assert len(graph) > 60
    assert _cycles(graph) == []


def test_a_cycle_is_found_when_there_is_one():
    """(The cycle finder itself, on a graph with one.)"""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_dependencies_run_one_way():
    """processing/ never imports release/ (outside type annotations); product code never imports
    the synthetic program: only the simulator itself, and the command's `hlsp simulate` and
    `hlsp demo` (release.cli), do."""
    graph = _graph()
    assert not {
        m: sorted(d) for m, d in graph.items() if m.startswith("processing") and any(x.startswith("release") for x in d)
    }
    offenders = {
        m: sorted(x for x in d if x.startswith("processing.simulate"))
        for m, d in graph.items()
        if not m.startswith("processing.simulate")
        and m != "release.cli"
        and any(x.startswith("processing.simulate") for x in d)
    }
    assert offenders == {}, offenders


#: Paths in text that name a file or folder of this repository (a placeholder like
#: <stage> or a pattern like *.fits is not a path).
_PATH = re.compile(r"(?<![\w./-])((?:processing|release|docs|tests|templates|manifests|reference|\.ci)/[\w./-]*[\w/])")
#: Paths the docs name on purpose that are not in the repository: outputs of the commands.
_OUTPUTS = ("releases/", "release/<")


def _named_paths(text: str) -> list[str]:
    out = []
    for m in _PATH.finditer(text):
        path = m.group(1).rstrip(".")
        end = m.end(1)
        if end < len(text) and text[end] in "<*{":  # a pattern, not a path
            continue
        out.append(path)
    return out


def test_every_path_a_doc_or_docstring_names_exists():
    """The README, docs/ and every module's docstrings and comments name only files and folders
    that exist (a stale name is a bug: the reader cannot follow it)."""
    sources = [REPO / "README.md", REPO / "Makefile", *sorted((REPO / "docs").glob("*.md"))]
    sources += sorted(
        p
        for pkg in (*PACKAGES, "tests", "templates")
        for p in (REPO / pkg).rglob("*")
        if p.is_file() and p.suffix in (".py", ".j2", ".md") and p != Path(__file__).resolve()
    )
    missing = []
    for src in sources:
        for path in _named_paths(src.read_text(errors="replace")):
            if path.startswith(_OUTPUTS) or "/<" in path:
                continue
            if not (REPO / path).exists():
                missing.append(f"{src.relative_to(REPO)}: {path}")
    assert missing == []


def test_the_path_finder_sees_a_missing_path():
    text = "see docs/provenance and reference/pipeline.md, docs/engine.md, processing/stages/<stage>/"
    found = _named_paths(text)
    assert "docs/provenance" in found and "reference/pipeline.md" in found and "docs/engine.md" in found
    assert not (REPO / "docs/provenance").exists() and not (REPO / "reference").exists()
