"""What ``check`` prints: a summary of one strategy, and the reference of every key.

:func:`describe` sums a strategy up, one fact per line (``check``, ``status --json``).
:func:`reference` lists every key a strategy file takes, derived from the section models
(:mod:`~ray_hyparview.config.models`): its type, default, bounds, environment variable and
documentation, so that the reference cannot drift from what the loader accepts.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TextIO, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from ray_hyparview.config.env import ENV_PREFIX
from ray_hyparview.config.errors import StrategyError
from ray_hyparview.config.models import Env, Floor, StrategyFile
from ray_hyparview.protocol.config import HyParViewConfig
from ray_hyparview.transport.endpoints import format_host

if TYPE_CHECKING:
    from ray_hyparview.config.strategy import Strategy

__all__ = ["KeyDoc", "cmd_check", "configure_logging", "describe", "reference"]


@dataclasses.dataclass(frozen=True, slots=True)
class KeyDoc:
    """One key of the strategy file, as the models declare it."""

    key: str
    """Dotted key, e.g. ``hyparview.arwl``."""
    type: str
    """The value's type as written in TOML terms (``integer``, ``seconds``, ``string``, ...)."""
    default: object
    """The default; ``None`` for "not set", :data:`REQUIRED` when the key must be given."""
    bounds: str
    """Bounds beyond the type, e.g. ``1 to 1048576`` or ``at least 0.01``; empty if none."""
    env: str | None
    """The ``RAY_HYPARVIEW_*`` variable that sets it, if any."""
    doc: str
    """Its documentation (the attribute docstring of its field)."""


REQUIRED: Any = "required"


def _attribute_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of ``cls`` and its bases (the string under each field), read
    from the source when a reference is asked for: the models do not extract them at import,
    which would cost every agent's start a parse of their source."""
    import ast
    import inspect
    import itertools
    import textwrap

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass.__module__ in ("builtins", "pydantic.main") or klass.__name__.startswith("_"):
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        tree = ast.parse(textwrap.dedent(source))
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, after in itertools.pairwise(body):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def _type_name(info: FieldInfo) -> str:
    text = str(info.annotation).replace("typing.", "")
    for python, toml in (
        ("<class 'int'>", "integer"),
        ("<class 'float'>", "seconds"),
        ("<class 'str'>", "string"),
        ("float | None", "seconds or false"),
        ("int | None", "integer"),
        ("str | None", "string"),
        ("list[str] | None", "list of strings"),
        ("list[str]", "list of strings"),
        ("dict[str, str]", "table of strings"),
    ):
        if text == python:
            return toml
    if text.startswith("dict[str, ") and "NodeSpec" in text:
        return "table of endpoints"
    return text.removeprefix("Literal").replace("'", '"')


def _bounds(info: FieldInfo) -> str:
    parts = []
    low = high = None
    for meta in info.metadata:
        low = getattr(meta, "ge", low)
        high = getattr(meta, "le", high)
        if getattr(meta, "gt", None) is not None:
            parts.append(f"greater than {meta.gt}")
        floor = getattr(meta, "func", None)
        if isinstance(floor, Floor):
            parts.append(f"at least {floor.seconds}")
    if low is not None and high is not None:
        parts.insert(0, f"{low} to {high}")
    return ", ".join(parts)


def _doc(key: str, info: FieldInfo, fallback: str = "") -> KeyDoc:
    env = next((m for m in info.metadata if isinstance(m, Env)), None)
    default = REQUIRED if info.is_required() else info.get_default(call_default_factory=True)
    return KeyDoc(
        key=key,
        type=_type_name(info),
        default=default,
        bounds=_bounds(info),
        env=None if env is None else ENV_PREFIX + (env.name or key.rsplit(".", 1)[-1].upper()),
        doc=info.description or fallback,
    )


def _section_model(info: FieldInfo) -> type[BaseModel] | None:
    """The model of a section (``[node]``, or ``[security]`` which may be absent), or None
    for a table of entries (``[nodes]``)."""
    if get_origin(info.annotation) in (dict, list):
        return None
    for candidate in (info.annotation, *get_args(info.annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def reference() -> list[KeyDoc]:
    """Every key of a strategy file, section by section, from the models."""
    keys: list[KeyDoc] = []
    for section, info in StrategyFile.model_fields.items():
        model = _section_model(info)
        if model is None:  # a table of its own kind, e.g. [nodes]
            keys.append(_doc(section, info, _attribute_docs(StrategyFile).get(section, "")))
            continue
        # [hyparview] is generated from the protocol's dataclass, which holds its documentation.
        fallback = _attribute_docs(HyParViewConfig if section == "hyparview" else model)
        keys += [
            _doc(f"{section}.{name}", field, fallback.get(name, ""))
            for name, field in model.model_fields.items()
        ]
    return keys


def reference_lines() -> list[str]:
    """:func:`reference` as text, one paragraph per key."""
    lines = []
    for doc in reference():
        facts = [doc.type]
        if doc.default is not REQUIRED and doc.default not in (None, "", [], {}):
            facts.append(f"default {doc.default!r}")
        if doc.default is REQUIRED:
            facts.append("required")
        if doc.bounds:
            facts.append(doc.bounds)
        if doc.env:
            facts.append(f"${doc.env}")
        lines.append(f"{doc.key} ({'; '.join(facts)})")
        lines += ["    " + line for line in doc.doc.splitlines()]
    return lines


def _metrics_at(strategy: Strategy) -> str:
    return f"{format_host(strategy.metrics_host)}:{strategy.metrics_port}"


def describe(strategy: Strategy) -> list[str]:
    """A short human-readable summary, one fact per line."""
    local = strategy.local_peer
    lines = [f"node        {local.id} at {local.endpoint}"]
    if strategy.bind != local.endpoint:
        lines.append(f"bind        {strategy.bind}")
    contacts = ", ".join(str(peer) for peer in strategy.contacts) or "none (first node)"
    lines.append(f"contacts    {contacts}")
    lines.append(f"nodes       {len(strategy.nodes)} listed")
    lines.append(
        f"transport   {strategy.transport}, a link ends after {strategy.heartbeat_timeout:g} s"
        f" of unacknowledged data; TCP keepalive every {strategy.heartbeat_interval:g} s"
    )
    limits = strategy.limits
    lines.append(
        f"limits      {limits.recv_hwm} frames x {limits.max_msg_size} B per connection,"
        f" {limits.max_connections} connections, {limits.max_strangers} strangers,"
        f" {limits.log_lines} warnings per {limits.log_interval:g} s"
    )
    cfg = strategy.hyparview_config
    lines.append(
        f"hyparview   active {cfg.active_view_size}, passive {cfg.passive_view_size},"
        f" arwl {cfg.arwl}, prwl {cfg.prwl}, shuffle every {cfg.shuffle_interval:g} s"
    )
    if strategy.security is None:
        lines.append("security    none (plain text)")
    else:
        sec = strategy.security
        lines.append(
            f"security    CURVE, public key {sec.public_key}, {len(sec.allowed_keys)} node keys,"
            f" {len(sec.allow_list)} extra keys"
        )
    lines.append(
        f"agent       control {strategy.control or 'off'},"
        f" metrics {'off' if strategy.metrics_port is None else _metrics_at(strategy)},"
        f" log level {strategy.log_level}, nice {strategy.nice}"
    )
    return lines


def cmd_check(
    path: str | os.PathLike[str],
    *,
    environ: Mapping[str, str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """``python -m ray_hyparview.agent check --config FILE``: validate, start nothing.

    Prints a summary and any warnings on success and returns 0; prints the error and returns 1
    if the strategy is invalid. With ``environ``, ``RAY_HYPARVIEW_*`` overrides apply first.
    """
    stdout = stdout if stdout is not None else sys.stdout
    stderr = stderr if stderr is not None else sys.stderr
    from ray_hyparview.config.strategy import Strategy

    try:
        strategy = Strategy.from_file(path, environ=environ)
    except StrategyError as exc:
        print(f"{path}: invalid: {exc}", file=stderr)
        return 1
    print(f"{path}: ok", file=stdout)
    for line in describe(strategy):
        print(f"  {line}", file=stdout)
    for note in strategy.warnings():
        print(f"  warning: {note}", file=stdout)
    return 0


def configure_logging(strategy: Strategy) -> None:
    """Set the level of the package's loggers from :attr:`Strategy.log_level`."""
    logging.getLogger("ray_hyparview").setLevel(strategy.log_level)
