"""The package's layers import downward only, in the order docs/ARCHITECTURE.md gives ("Layers"),
and no module hides an import of another vilbert module inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "vilbert"


def layers() -> list[list[str]]:
    """The layer lines of docs/ARCHITECTURE.md's "Layers" block, top first."""
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    block = text.split("## Layers", 1)[1].split("```", 2)[1]
    return [line.split() for line in block.strip().splitlines() if line.strip()]


def imports(path: Path) -> list[tuple[str, bool]]:
    """(imported vilbert module, whether the import sits inside a function) for each import."""
    tree = ast.parse(path.read_text())
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inside.update(id(n) for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom)))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found += [(n, id(node) in inside) for n in names if n.startswith("vilbert.")]
    return found


def package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and (PACKAGE / parts[1]).is_dir() else None


def test_every_package_has_a_layer():
    listed = [p for line in layers() for p in line]
    assert len(listed) == len(set(listed)), f"a package is listed twice: {listed}"
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(listed), f"unlisted: {sorted(packages - set(listed))}; gone: {sorted(set(listed) - packages)}"


def test_imports_point_downward_only():
    level = {p: i for i, line in enumerate(layers()) for p in line}  # 0 = top
    upward = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if len(rel.parts) == 1:
            continue  # vilbert/__init__.py and __main__.py sit above every layer
        own = rel.parts[0]
        for module, _ in imports(path):
            other = package_of(module)
            if other is not None and other != own and level[other] <= level[own]:
                upward.append(f"{rel} imports {module} ({own} is not above {other})")
    assert not upward, "\n".join(sorted(set(upward)))


def test_no_vilbert_import_is_hidden_in_a_function():
    hidden = [f"{path.relative_to(PACKAGE)}: {module}" for path in PACKAGE.rglob("*.py")
              for module, in_function in imports(path) if in_function]
    assert not hidden, "\n".join(sorted(set(hidden)))


def test_the_check_sees_an_upward_import(tmp_path):
    """The checker itself: a module of a low layer importing a higher one is found."""
    module = tmp_path / "bad.py"
    module.write_text("from vilbert.cli.main import main\n\ndef f():\n    import vilbert.demo\n")
    assert imports(module) == [("vilbert.cli.main", False), ("vilbert.cli.main.main", False), ("vilbert.demo", True)]
    assert package_of("vilbert.cli.main") == "cli" and package_of("vilbert.__main__") is None
