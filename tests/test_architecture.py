"""The layering of docs/architecture.md, enforced: imports point down, no cycle, and
plugins see labkit only through labkit.api and labkit.testing."""
import ast
import sys
from pathlib import Path

import grimp
from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[1]


def test_imports_point_down_the_layers(monkeypatch):
    monkeypatch.chdir(ROOT)
    assert lint_imports(config_filename=str(ROOT / ".importlinter"), no_cache=True,
                        no_logo=True) == 0  # the contract's report says which import broke it


def strongly_connected(graph: grimp.ImportGraph) -> list[set[str]]:
    """Import cycles: the strongly connected components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[set[str]] = []
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = set()
            while True:
                member = stack.pop()
                component.add(member)
                if member == module:
                    break
            if len(component) > 1:
                components.append(component)

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return components


def test_no_import_cycle_in_the_core(tmp_path, monkeypatch):
    # the check finds a cycle closed by a function-level import (a lazy import must not
    # hide one) ...
    package = tmp_path / "cyclic"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from cyclic import b\n")
    (package / "b.py").write_text("def f():\n    from cyclic import c\n")
    (package / "c.py").write_text("import cyclic.a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert strongly_connected(grimp.build_graph("cyclic")) == [
        {"cyclic.a", "cyclic.b", "cyclic.c"}]
    # ... and labkit has none
    assert strongly_connected(grimp.build_graph("labkit")) == []


def labkit_imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every import of a labkit module in a source file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] if node.module != "labkit" else [
                f"labkit.{alias.name}" for alias in node.names]
            found += [(node.lineno, name) for name in names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return [(line, name) for line, name in found
            if name == "labkit" or name.startswith("labkit.")]


def test_plugins_and_examples_use_the_public_api_only():
    public = {"labkit.api", "labkit.testing"}
    sources = [p for folder in ("plugins", "examples") for p in (ROOT / folder).rglob("*.py")
               if "build" not in p.relative_to(ROOT).parts]
    assert len(sources) > 30  # the three plugins and the example are really scanned
    private = [f"{path.relative_to(ROOT)}:{line}: {name}" for path in sources
               for line, name in labkit_imports(path) if name not in public]
    assert private == []


def test_every_module_lives_in_a_layer_folder():
    # the folders are the layers: a module's path says its layer, and every folder is
    # one layer of the contract
    package = ROOT / "labkit"
    loose = sorted(p.name for p in package.glob("*.py"))
    assert loose == ["__init__.py", "__main__.py", "api.py", "lab.py", "testing.py"]
    contract = (ROOT / ".importlinter").read_text()
    layers = {name.strip() for line in contract.split("layers =", 1)[1].splitlines()
              for name in line.split(":") if name.strip()}
    folders = {p.name for p in package.iterdir() if (p / "__init__.py").exists()}
    assert folders <= layers, f"folders outside the contract: {sorted(folders - layers)}"
