"""The import direction, read from the source with ast, and the absence of import circles.

- ``tasks`` and ``evaluation`` know nothing of models: no transformers, peft,
  ``continual`` or ``prompts`` (``tasks`` may use ``evaluation``'s evaluators);
- ``prompts`` knows hosts only through the host interface: from ``continual``
  it imports the shared helpers alone, never a host module;
- ``continual.errors`` (the one error base class) and ``continual.registry`` (the one registry class), which
  import nothing of the project, serve every layer;
- ``continual`` may import everything;
- no module imports, through any chain of imports (those inside functions included), a module that
  imports it back.
"""
import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.fast

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("continual", "tasks", "prompts", "evaluation")
EVERYWHERE = {"continual.errors", "continual.registry"}
SHARED_HELPERS = {"continual.atomic", "continual.digest", "continual.faults", "continual.compat", "continual.registry"}
FORBIDDEN = {
    "tasks": ("continual", "prompts", "transformers", "peft", "avalanche"),
    "evaluation": ("continual", "prompts", "tasks", "transformers", "peft", "avalanche"),
    "prompts": ("continual", "tasks", "evaluation", "transformers"),
}


def imports(path: Path, root: Path = ROOT) -> list[str]:
    """Every absolute import of a file (``from a import b`` gives ``a``, and ``a.b`` where b is a module)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names += [node.module, *(f"{node.module}.{a.name}" for a in node.names
                                     if module_path(f"{node.module}.{a.name}", root))]
    return list(dict.fromkeys(names))


def violations(package: str) -> list[str]:
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in imports(path):
            if name in EVERYWHERE or (name in SHARED_HELPERS and package == "prompts"):
                continue
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[package]):
                found.append(f"{path.relative_to(ROOT)} imports {name}")
    return found


def module_path(name: str, root: Path) -> Path | None:
    base = root / name.replace(".", "/")
    return next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()), None)


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the project modules it imports (a package's own modules as ``pkg.mod``)."""
    modules = {}
    for package in PACKAGES:
        for path in (root / package).rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return {name: {n for n in imports(path, root) if n in modules and n != name} for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each import circle once, as the chain of modules that closes it."""
    found, done = [], set()

    def visit(node: str, chain: list[str]) -> None:
        if node in chain:
            found.append(chain[chain.index(node):] + [node])
            return
        if node in done:
            return
        for nxt in sorted(graph[node]):
            visit(nxt, chain + [node])
        done.add(node)

    for node in sorted(graph):
        visit(node, [])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_import_direction(package):
    assert violations(package) == []


def test_the_check_sees_a_forbidden_import(tmp_path, monkeypatch):
    fake = tmp_path / "evaluation"
    fake.mkdir()
    (fake / "bad.py").write_text("from continual.hosts.base import Batch\nimport transformers\n")
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    assert violations("evaluation") == ["evaluation/bad.py imports continual.hosts.base",
                                        "evaluation/bad.py imports transformers"]


def test_no_import_circles():
    # a package's __init__ importing its own modules is how the registries fill, not a circle
    graph = {name: {n for n in deps if not n.startswith(name + ".")} for name, deps in import_graph().items()}
    assert cycles(graph) == []


def test_the_cycle_check_sees_a_circle_through_a_function_level_import(tmp_path):
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "continual" / "engine.py").write_text("from continual.seeds import run_seeds\n")
    (tmp_path / "continual" / "seeds.py").write_text("def f():\n    from continual.engine import run\n")
    graph = import_graph(tmp_path)
    assert cycles(graph) == [["continual.engine", "continual.seeds", "continual.engine"]]
