"""The layering in STYLE.md is enforced, and the enforcement itself catches a forbidden import."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("app", "omni_core", "medical_data", "training", "audit")
LIBRARY_PACKAGES = ("omni_core", "medical_data", "audit")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _copy_tree(destination: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(REPO / package, destination / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", destination / "pyproject.toml")
    return destination


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", str(tree / "pyproject.toml")],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_contracts_hold_on_this_tree(tmp_path: Path) -> None:
    result = _lint(_copy_tree(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "statement", "broken_contract"),
    [
        ("omni_core", "import app.main", "Library packages never import the app or training"),
        ("medical_data", "from training import something", "Library packages never import the app or training"),
        ("medical_data", "import omni_core", "medical_data never imports omni_core (the processor is passed in)"),
        ("audit", "import torch", "audit stands alone on SQLAlchemy"),
        ("training", "from app.core import config", "Training never imports the app"),
    ],
)
def test_a_forbidden_import_breaks_the_build(tmp_path: Path, module: str, statement: str, broken_contract: str) -> None:
    tree = _copy_tree(tmp_path)
    (tree / module / "forbidden_edge.py").write_text(f"{statement}\n")
    result = _lint(tree)
    assert result.returncode != 0
    assert f"{broken_contract} BROKEN" in result.stdout


def _reads_environment(tree: ast.AST) -> bool:
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr in {"environ", "getenv", "putenv"}
            and isinstance(node.value, ast.Name)
            and node.value.id == "os"
        ):
            return True
        if (
            isinstance(node, ast.ImportFrom)
            and node.module == "os"
            and any(alias.name in {"environ", "getenv"} for alias in node.names)
        ):
            return True
    return False


def test_only_the_app_reads_the_environment() -> None:
    offenders = [
        str(path.relative_to(REPO))
        for package in LIBRARY_PACKAGES
        for path in (REPO / package).rglob("*.py")
        if _reads_environment(ast.parse(path.read_text(), filename=str(path)))
    ]
    assert offenders == [], "library packages take settings as arguments, they never read os.environ"


def test_environment_check_catches_a_read() -> None:
    assert _reads_environment(ast.parse("import os\nx = os.environ['OMNICLINIC_DATA_DIR']"))
    assert _reads_environment(ast.parse("from os import getenv\nx = getenv('A')"))
    assert not _reads_environment(ast.parse("import os\nx = os.path.join('a', 'b')"))
