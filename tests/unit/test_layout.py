"""Imports run one way: ``amo`` ← ``storage`` ← features ← ``services`` ← ``web``, CLI.

Read from the source with ``ast`` (imports inside functions count too), so a shortcut taken
anywhere — a feature router reaching into ``web``, the sandbox borrowing the SDK's parser — fails
here before it becomes a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "amobridge"
FEATURES = ("connect", "sync", "rules", "proxy", "jobs", "webhooks", "notify")

# package (first component under amobridge) → packages/modules it must never import
FORBIDDEN: dict[str, tuple[str, ...]] = {
    # The SDK is usable alone: only itself and the dependency-free error root.
    "amo": (
        "sandbox",
        "storage",
        "connect",
        "sync",
        "rules",
        "web",
        "auth",
        "audit",
        "services",
        "dependencies",
        "settings",
        "cli",
        "demo",
    ),
    # The pages' languages and texts: a leaf, so the service and the sandbox share it.
    "i18n": (
        "amo",
        "sandbox",
        "storage",
        "connect",
        "sync",
        "rules",
        "web",
        "auth",
        "audit",
        "services",
        "dependencies",
        "settings",
        "cli",
        "demo",
    ),
    # The sandbox speaks amoCRM's JSON itself, so a wrong shape in the SDK is caught by it.
    "sandbox": (
        "amo",
        "storage",
        "connect",
        "sync",
        "rules",
        "web",
        "auth",
        "audit",
        "services",
    ),
    "storage": (*FEATURES, "web", "auth", "audit", "services", "dependencies", "cli", "demo"),
    # The parameters and page model the features' list routes share: a leaf below them.
    "params": (
        *FEATURES,
        "amo",
        "sandbox",
        "storage",
        "web",
        "auth",
        "audit",
        "services",
        "dependencies",
        "cli",
        "demo",
    ),
    "audit": (*FEATURES, "web", "auth", "services", "cli", "demo"),
    "auth": (*FEATURES, "web", "services", "cli", "demo"),
    **{feature: ("web", "services", "cli", "demo") for feature in FEATURES},
    "services": ("web", "cli", "demo"),
    "dependencies": ("web", "cli", "demo"),
}


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {name for name in found if name == "amobridge" or name.startswith("amobridge.")}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _package_files(package: str) -> list[Path]:
    folder = SRC / package
    if folder.is_dir():
        return sorted(folder.rglob("*.py"))
    single = SRC / f"{package}.py"
    return [single] if single.exists() else []


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_run_one_way(package: str) -> None:
    bad = [
        f"{path.relative_to(SRC.parent)} imports {module}"
        for path in _package_files(package)
        for module in sorted(_imports(path))
        if _part(module) in FORBIDDEN[package]
    ]
    assert bad == []


def test_the_checked_packages_exist() -> None:
    """A renamed package must not silently drop out of the rule."""
    for package in ("amo", "sandbox", "storage", "audit", "auth", "connect", "services", "params"):
        assert _package_files(package), package


def test_feature_packages_keep_their_file_roles() -> None:
    for feature in FEATURES:
        folder = SRC / feature
        if not folder.is_dir():
            continue
        present = {p.stem for p in folder.glob("*.py")}
        assert {"router", "service", "repository", "schemas", "tasks"} <= present, feature


SQL_BUILDERS = {"select", "update", "delete", "insert", "text"}
SQL_CALLS = {"execute", "scalar", "scalars", "get"}
SQL_HOMES = ("storage",)  # the database handle, migrations and key rotation work on tables


def _is_repository(node: ast.ClassDef) -> bool:
    for base in node.bases:
        name = ast.unparse(base)
        if "Repository" in name:
            return True
    return False


def _sql_outside_repositories(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    builders = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sqlalchemy")
        for alias in node.names
        if alias.name in SQL_BUILDERS
    }
    found: list[str] = []

    def visit(node: ast.AST, in_repository: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_repository or (isinstance(child, ast.ClassDef) and _is_repository(child))
            if isinstance(child, ast.Call) and not inside:
                func = child.func
                if isinstance(func, ast.Name) and func.id in builders:
                    found.append(f"{path.name}:{child.lineno} {func.id}(…)")
                elif (
                    isinstance(func, ast.Attribute)
                    and func.attr in SQL_CALLS
                    and ast.unparse(func.value).split(".")[-1] == "session"
                ):
                    found.append(f"{path.name}:{child.lineno} {ast.unparse(func)}(…)")
            visit(child, inside)

    visit(tree, False)
    return found


def test_sql_lives_in_repositories() -> None:
    """Services, routers and tasks build no SQL and talk to sessions only through repositories."""
    bad = [
        f"{path.relative_to(SRC.parent)}: {hit}"
        for path in sorted(SRC.rglob("*.py"))
        if path.relative_to(SRC).parts[0] not in SQL_HOMES
        for hit in _sql_outside_repositories(path)
    ]
    assert bad == []
