"""The folders of the package are its layers: each may import only the layers below it.

This is the architecture drawing, checked: a module that imports upwards (an agent reaching
for Ray, a protocol core reaching for a socket, the wire format depending on the transport)
fails here with the offending line. Imports inside functions count too: a lazy import is still
a dependency. Entry points (``__main__`` modules) and the package's own ``__init__`` sit on top
of everything and are not checked.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import ray_hyparview

PACKAGE = Path(ray_hyparview.__file__).parent

LAYERS: tuple[tuple[str, ...], ...] = (
    ("protocol",),
    ("wire",),
    ("transport",),
    ("config",),
    ("agent", "sim"),
    ("cluster",),
    ("mesh", "cli"),
    ("testing",),
)
"""Bottom up. Layers in one tuple are siblings: neither may import the other."""

RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}
ROOT = "__init__"
RANK[ROOT] = RANK["agent"]
"""The package root re-exports the agent and the configuration, so only layers above the agent
may import from it (e.g. ``__version__``)."""


def _layer(module: str) -> str | None:
    """The layer of a dotted module name inside the package, ``None`` for the package root."""
    parts = module.split(".")
    if parts[0] != "ray_hyparview":
        return None
    if len(parts) < 2 or parts[1].startswith("__"):
        return ROOT
    return parts[1]


def _modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        if name == "ray_hyparview" or name.endswith(".__main__"):
            continue
        found.append((name, path))
    return found


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "ray_hyparview":
                out.extend((node.lineno, f"ray_hyparview.{a.name}") for a in node.names)
            else:
                out.append((node.lineno, node.module))
    return out


def violations() -> list[str]:
    found = []
    for module, path in _modules():
        own = _layer(module)
        assert own != ROOT
        assert own in RANK, f"{module}: folder {own!r} is in no layer; add it to LAYERS"
        for line, target in _imports(path):
            other = _layer(target)
            if other is None or (other == own and own != ROOT):
                continue
            if other not in RANK:
                found.append(f"{path}:{line}: {module} imports {target}, which is in no layer")
            elif RANK[other] >= RANK[own]:
                found.append(f"{path}:{line}: {module} ({own}) imports {target} ({other})")
    return found


def test_every_folder_imports_only_the_layers_below_it() -> None:
    assert violations() == []


def test_the_checker_sees_an_upward_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "ray_hyparview" / "protocol"
    bad.mkdir(parents=True)
    (tmp_path / "ray_hyparview" / "__init__.py").write_text("")
    (bad / "__init__.py").write_text("")
    (bad / "leaky.py").write_text("def f():\n    from ray_hyparview.agent.node import Agent\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "ray_hyparview")
    assert [v.split(": ", 1)[1] for v in violations()] == [
        "ray_hyparview.protocol.leaky (protocol) imports ray_hyparview.agent.node (agent)"
    ]


def test_no_module_is_left_at_the_top_of_the_package() -> None:
    top = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in {"__init__.py"})
    assert top == ["mesh.py"]
