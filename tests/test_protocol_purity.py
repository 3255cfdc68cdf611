"""The protocol core stays sans-I/O: no clock, sockets, event loop, Ray or global randomness."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import ray_hyparview.protocol

FORBIDDEN = {"asyncio", "zmq", "ray", "time", "os", "socket", "threading", "subprocess", "select"}
CORE = Path(ray_hyparview.protocol.__file__).parent
MODULES = sorted(CORE.glob("*.py"))


def test_the_core_has_modules_to_check() -> None:
    names = {p.stem for p in MODULES}
    assert {"hyparview", "messages", "config", "peer"} <= names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_core_module_imports_no_io(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    for stmt in ast.walk(tree):
        if isinstance(stmt, ast.Import):
            roots = {alias.name.split(".")[0] for alias in stmt.names}
        elif isinstance(stmt, ast.ImportFrom) and stmt.level == 0 and stmt.module:
            roots = {stmt.module.split(".")[0]}
        else:
            continue
        assert not roots & FORBIDDEN, f"{path.name}:{stmt.lineno} imports {roots & FORBIDDEN}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_core_module_draws_no_module_level_randomness(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    for stmt in ast.walk(tree):
        if (
            isinstance(stmt, ast.Attribute)
            and isinstance(stmt.value, ast.Name)
            and stmt.value.id == "random"
        ):
            assert stmt.attr == "Random", f"{path.name}:{stmt.lineno} uses random.{stmt.attr}"
        if isinstance(stmt, ast.ImportFrom) and stmt.module == "random":
            names = {alias.name for alias in stmt.names}
            assert names <= {"Random"}, f"{path.name}:{stmt.lineno} imports {names}"
