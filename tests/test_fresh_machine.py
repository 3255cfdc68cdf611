"""What a fresh machine needs: every import is declared, every script imports, tools write
only where asked.

A missing dependency once hid behind a CI that installed into an interpreter where the module
happened to be present. ``.ci/run`` now builds a fresh virtual environment; these tests make the
same mistake fail in the default suite on any machine, before it reaches a user.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import importlib.util
import re
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from ray_hyparview.sim.cli import main as sim_main

ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIRS = ("ray_hyparview", "tests", "benchmarks", "examples")
_ENV_NAME = re.compile(r"RAY_HYPARVIEW_[A-Z0-9_]*[A-Z0-9]")
"""A name in the agent's environment namespace, quoted or not (not the bare prefix)."""
LOCAL_MODULES = {"ray_hyparview", "tests"} | {p.stem for p in (ROOT / "benchmarks").glob("*.py")}
"""Top-level names that are this repository's own code (a benchmark may import a sibling script,
as ``agent_roundtrip.py`` imports ``roundtrip``)."""


def _python_files() -> Iterator[Path]:
    for folder in SOURCE_DIRS:
        yield from sorted((ROOT / folder).rglob("*.py"))


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level module -> files that import it, for every import outside the standard library,
    including those inside functions (the lazy ones are the ones that slip through)."""
    found: dict[str, set[str]] = {}
    for path in _python_files():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.partition(".")[0]
                if top in sys.stdlib_module_names or top in LOCAL_MODULES:
                    continue
                found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(spec: str) -> tuple[str, list[str]]:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?", spec)
    assert match is not None, f"unreadable requirement {spec!r} in pyproject.toml"
    extras = [e.strip() for e in (match.group(2) or "").split(",") if e.strip()]
    return _normalize(match.group(1)), extras


def _declared(extra: str) -> set[str]:
    """Distributions that ``pip install -e ".[extra]"`` asks for by name: the core dependencies
    and the extra, following the project's references to its own extras."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    own = _normalize(project["name"])
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    declared: set[str] = set()
    todo, done = [extra], set()
    for spec in project["dependencies"]:
        declared.add(_requirement_name(spec)[0])
    while todo:
        current = todo.pop()
        if current in done:
            continue
        done.add(current)
        assert current in optional, f"pyproject.toml has no extra {current!r}"
        for spec in optional[current]:
            name, extras = _requirement_name(spec)
            if name == own:
                todo.extend(extras)
            else:
                declared.add(name)
    return declared


def test_every_third_party_import_is_declared_in_the_dev_extra() -> None:
    """The README's test command installs ``.[dev]``: whatever the package, the tests, the
    benchmarks and the examples import must be named there, not merely present here."""
    declared = _declared("dev")
    providers = importlib.metadata.packages_distributions()
    missing: list[str] = []
    for module, users in sorted(_third_party_imports().items()):
        dists = {_normalize(d) for d in providers.get(module, [])}
        if not dists & declared:
            missing.append(f"{module} (imported by {', '.join(sorted(users))})")
    assert not missing, "imported but not declared in pyproject.toml's dev extra: " + "; ".join(
        missing
    )


def test_the_check_above_can_fail() -> None:
    """A module imported nowhere in pyproject's closure is reported (networkx was, once)."""
    declared = _declared("test") - {"networkx"}
    providers = importlib.metadata.packages_distributions()
    assert not {_normalize(d) for d in providers.get("networkx", ["networkx"])} & declared


@pytest.mark.parametrize(
    "path",
    [p for folder in ("benchmarks", "examples") for p in sorted((ROOT / folder).glob("*.py"))],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_every_script_imports(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Benchmarks and examples are not collected by pytest: import each one, as its own
    ``python path`` would (its folder first on ``sys.path``), without running its ``main``."""
    monkeypatch.syspath_prepend(str(path.parent))
    monkeypatch.syspath_prepend(str(ROOT))
    spec = importlib.util.spec_from_file_location(f"_script_{path.stem}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    assert callable(getattr(module, "main", None)), f"{path.name} has no main()"


def test_package_reads_no_environment_variable_the_agent_loader_refuses() -> None:
    """The agent refuses every unknown ``RAY_HYPARVIEW_*`` variable (a typo must not pass
    silently). So no other part of the package may read a name in that namespace: exporting it
    would stop every agent started with environment overrides."""
    from ray_hyparview.config.strategy import ENV_PREFIX, ENV_VARS, PROCESS_ENV_VARS, Strategy

    known = {ENV_PREFIX + suffix for suffix in (*ENV_VARS, *PROCESS_ENV_VARS)}
    strays = {
        f"{name} in {path.relative_to(ROOT)}"
        for path in sorted((ROOT / "ray_hyparview").rglob("*.py"))
        for name in _ENV_NAME.findall(path.read_text())
        if name not in known
    }
    assert not strays, f"variables in the agent's namespace that its loader refuses: {strays}"
    base = {"node": {"id": "n1"}, "nodes": {"n1": "tcp://127.0.0.1:7001"}}
    for suffix in sorted(PROCESS_ENV_VARS):
        Strategy.from_env(base, {ENV_PREFIX + suffix: "x"})  # accepted, not an error


def test_the_docs_name_only_environment_variables_the_agent_loader_knows() -> None:
    """A variable a user copies from the README, an example or a warning must be one the
    loader takes: it refuses the rest, and the agent does not start. The priority warning
    and the README once named ``RAY_HYPARVIEW_AGENT_NICE``, which is ``RAY_HYPARVIEW_NICE``."""
    from ray_hyparview.config.strategy import ENV_PREFIX, ENV_VARS, PROCESS_ENV_VARS

    known = {ENV_PREFIX + suffix for suffix in (*ENV_VARS, *PROCESS_ENV_VARS)}
    docs = [ROOT / "README.md", ROOT / "benchmarks" / "README.md"]
    docs += sorted(p for p in (ROOT / "examples").rglob("*") if p.is_file())
    strays = {
        f"{name} in {path.relative_to(ROOT)}"
        for path in docs
        for name in _ENV_NAME.findall(path.read_text(errors="replace"))
        if name not in known
    }
    assert not strays, f"variables the docs name that the agent's loader refuses: {strays}"


def test_simulator_writes_no_file_unless_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert sim_main(["--nodes", "60", "--fail", "0.3", "--quiet"]) == 0
    assert "reliability" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_every_console_script_points_at_a_callable() -> None:
    # A console script is resolved only when someone types its name after `pip install`; a
    # module that moved leaves it pointing at nothing, and no import in the suite notices.
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts
    for name, target in scripts.items():
        module_name, _, attr = target.partition(":")
        module = importlib.import_module(module_name)
        assert callable(getattr(module, attr, None)), f"{name} = {target!r} names no callable"
