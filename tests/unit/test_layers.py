"""Layers: the library (``ikd/``) never imports a front door (``components/`` and ``pipelines/``, installed as
``ikd.components`` and ``ikd.pipelines``), and no ikd module imports itself back through others.

Imports are read from the source with ``ast``: module-level and function-level imports, relative imports, and
``importlib.import_module`` / ``__import__`` / ``find_spec`` calls with a literal name all count. Imports under
``if TYPE_CHECKING:`` are never executed (annotations only): they count for the front-door rule, not for cycles.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

#: Installed package name -> source folder (pyproject.toml's [tool.setuptools.package-dir]).
FOLDERS = {"ikd": ROOT / "ikd", "ikd.components": ROOT / "components", "ikd.pipelines": ROOT / "pipelines"}
FRONT_DOORS = ("ikd.components", "ikd.pipelines", "components", "pipelines")
#: Calls that import a module named by their first argument.
IMPORT_CALLS = {"import_module", "__import__", "find_spec", "run_module"}
#: Import cycles known and accepted for now, each as the sorted modules of one strongly connected component (none:
#: a new entry needs a reason; when one is gone, the test fails until its entry is deleted).
KNOWN_CYCLES: list[list[str]] = []


def modules() -> dict[str, Path]:
    """Every module of the installed ``ikd`` package: dotted name -> source file."""
    found: dict[str, Path] = {}
    for package, folder in FOLDERS.items():
        for f in sorted(folder.rglob("*.py")):
            parts = list(f.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = f
    return found


MODULES = modules()


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the nodes under ``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``): imports never executed."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and (
            getattr(node.test, "id", None) == "TYPE_CHECKING" or getattr(node.test, "attr", None) == "TYPE_CHECKING"
        ):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skip


def imported_names(name: str, path: Path, runtime_only: bool = False) -> list[tuple[str, int]]:
    """``(imported module name, line)`` for every import in ``path`` (the module ``name``), at any depth;
    ``runtime_only``: without those under ``if TYPE_CHECKING:``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: list[tuple[str, int]] = []
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_only(tree) if runtime_only else set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, one level up per extra dot
                parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*parts, base] if base else parts)
            # `from pkg import mod` imports the module pkg.mod; `from mod import name` imports mod
            out += [(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base, node.lineno) for a in node.names]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if called in IMPORT_CALLS and isinstance(node.args[0].value, str):
                out.append((node.args[0].value, node.lineno))
    return out


def code_strings(path: Path) -> list[tuple[str, int]]:
    """String literals of ``path`` that are not docstrings (e.g. a module name handed to some loader)."""
    tree = ast.parse(path.read_text(), str(path))
    docstrings = {
        id(n.body[0].value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and n.body
        and isinstance(n.body[0], ast.Expr)
        and isinstance(n.body[0].value, ast.Constant)
    }
    return [
        (n.value, n.lineno)
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings
    ]


def owner(target: str) -> str | None:
    """The ikd module an imported name belongs to (``ikd.core.metrics.read_json`` -> ``ikd.core.metrics``)."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def graph() -> dict[str, set[str]]:
    return {
        name: {o for t, _ in imported_names(name, path, runtime_only=True) if (o := owner(t)) and o != name}
        for name, path in MODULES.items()
    }


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(g):
        if root in index:
            continue
        work = [(root, iter(sorted(g[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(g[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def library() -> dict[str, Path]:
    return {n: p for n, p in MODULES.items() if p.is_relative_to(FOLDERS["ikd"])}


def test_the_walk_sees_the_whole_package():
    lib = library()
    assert {"ikd", "ikd.cli", "ikd.integrations.kubeflow", "ikd.steps.io"} <= set(lib)
    assert {"ikd.components", "ikd.components.adapt", "ikd.pipelines.ikd_pipeline", "ikd.pipelines.cli"} <= set(MODULES)
    assert len(lib) > 30


def test_the_library_never_imports_a_front_door():
    bad = [
        f"{path.relative_to(ROOT)}:{line}: {target}"
        for name, path in library().items()
        for target, line in imported_names(name, path)
        if any(target == d or target.startswith(d + ".") for d in FRONT_DOORS)
    ]
    assert not bad, "the library imports a front door:\n" + "\n".join(bad)
    named = [
        f"{path.relative_to(ROOT)}:{line}: {text!r}"
        for path in library().values()
        for text, line in code_strings(path)
        if text.startswith(("ikd.components", "ikd.pipelines"))
    ]
    assert not named, "the library names a front-door module in its code:\n" + "\n".join(named)


def test_no_import_cycles():
    found = cycles(graph())
    new = [c for c in found if c not in KNOWN_CYCLES]
    assert not new, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in new)
    stale = [c for c in KNOWN_CYCLES if c not in found]
    assert not stale, f"these cycles are gone: delete them from KNOWN_CYCLES: {stale}"


def test_the_checks_catch_what_they_are_for(tmp_path):
    # an import of a front door inside a function, a relative one and an importlib one are all seen
    f = tmp_path / "mod.py"
    f.write_text(
        "import importlib\n\ndef f():\n    from ikd.pipelines.ikd_pipeline import build\n"
        "    from ..pipelines import runner\n    return importlib.import_module('ikd.components')\n"
    )
    targets = [t for t, _ in imported_names("ikd.integrations.mod", f)]
    assert {"ikd.pipelines.ikd_pipeline", "ikd.pipelines.runner", "ikd.components"} <= set(targets)
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    # an import under TYPE_CHECKING is seen by the front-door rule, not by the cycle check (it never runs)
    g = tmp_path / "typed.py"
    g.write_text(
        "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from ikd.config import Config\nimport ikd.errors\n"
    )
    assert {t for t, _ in imported_names("ikd.x", g)} >= {"ikd.config", "ikd.errors"}
    assert {t for t, _ in imported_names("ikd.x", g, runtime_only=True)} == {"typing", "ikd.errors"}
