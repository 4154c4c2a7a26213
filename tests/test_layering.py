"""The import direction of DESIGN section 2, read from the source with ast.

- ``tasks`` and ``evaluation`` know nothing of models: no transformers, peft,
  ``continual`` or ``prompts`` (``tasks`` may use ``evaluation``'s evaluators);
- ``prompts`` knows hosts only through the host interface: from ``continual``
  it imports the shared helpers alone, never a host module;
- ``continual`` may import everything.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_HELPERS = {"continual.atomic", "continual.digest", "continual.faults", "continual.compat"}
FORBIDDEN = {
    "tasks": ("continual", "prompts", "transformers", "peft", "avalanche"),
    "evaluation": ("continual", "prompts", "tasks", "transformers", "peft", "avalanche"),
    "prompts": ("continual", "tasks", "evaluation", "transformers"),
}


def imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def violations(package: str) -> list[str]:
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in imports(path):
            if name in SHARED_HELPERS and package == "prompts":
                continue
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[package]):
                found.append(f"{path.relative_to(ROOT)} imports {name}")
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
