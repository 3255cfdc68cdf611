"""``RAY_HYPARVIEW_*`` overrides: which variables exist, how their text is read, how they merge.

:data:`ENV_VARS` is derived from the section models (:mod:`~ray_hyparview.config.models`):
every field marked with :class:`~ray_hyparview.config.models.Env` is a variable, named after
the field unless the marker names it, read by the marker's parser or one chosen from the
field's type. Unknown ``RAY_HYPARVIEW_*`` names are errors, with a did-you-mean, because a
misspelt override that is silently ignored is worse than none.
"""

from __future__ import annotations

import os
import types
from collections.abc import Callable, Mapping
from typing import Any, Final, get_args

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from ray_hyparview.config.errors import StrategyError, suggest
from ray_hyparview.config.models import Env, StrategyFile

__all__ = ["ENV_PREFIX", "ENV_VARS", "PROCESS_ENV_VARS", "apply_env", "merge_env"]

ENV_PREFIX: Final = "RAY_HYPARVIEW_"

PROCESS_ENV_VARS: Final = frozenset({"INCARNATION_FILE"})
"""``RAY_HYPARVIEW_<NAME>`` suffixes that the agent process reads itself, outside the strategy
(``INCARNATION_FILE``: where the agent keeps its last incarnation, see
:func:`ray_hyparview.agent.node.next_incarnation`). The loader lets them pass."""


def _env_list(text: str, var: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _env_int(text: str, var: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise StrategyError(var, text, "an integer") from None


def _env_float(text: str, var: str) -> float:
    try:
        return float(text.strip())
    except ValueError:
        raise StrategyError(var, text, "a number") from None


def _env_optional_float(text: str, var: str) -> float | bool:
    if text.strip().lower() in ("none", "off", "false", "no"):
        return False
    return _env_float(text, var)


def _env_optional_int(text: str, var: str) -> int | None:
    return None if not text.strip() or text.strip().lower() == "none" else _env_int(text, var)


def _env_text(text: str, var: str) -> str:
    return text.strip()


def _env_optional_text(text: str, var: str) -> str | None:
    return text.strip() or None


def _env_nodes(text: str, var: str) -> dict[str, Any]:
    nodes: dict[str, Any] = {}
    for item in _env_list(text, var):
        node_id, sep, endpoint = item.partition("=")
        if not sep or not node_id.strip() or not endpoint.strip():
            raise StrategyError(var, item, "'id=endpoint' items separated by commas")
        if node_id.strip() in nodes:
            raise StrategyError(
                var, item, "each node id once", hint=f"{node_id.strip()} is repeated"
            )
        nodes[node_id.strip()] = {"endpoint": endpoint.strip()}
    return nodes


_EnvParser = Callable[[str, str], Any]

_PARSERS: Final[dict[Any, _EnvParser]] = {
    int: _env_int,
    int | None: _env_optional_int,
    float: _env_float,
    float | None: _env_optional_float,
    str: _env_text,
    str | None: _env_optional_text,
    list[str]: _env_list,
    list[str] | None: _env_list,
}
"""The parser of a variable, by the type of the field it sets."""

_SPECIAL: Final[dict[str, _EnvParser]] = {"nodes": _env_nodes}
"""Fields whose variable has a form of its own (``NODES``: ``id=endpoint,id=endpoint``)."""


def _parser(path: str, info: FieldInfo, env: Env) -> _EnvParser:
    if env.parse is not None:
        return env.parse
    if path in _SPECIAL:
        return _SPECIAL[path]
    annotation = info.annotation
    if annotation in _PARSERS:
        return _PARSERS[annotation]
    return _env_text  # a Literal of names


def _variables(model: type[BaseModel], prefix: str) -> dict[str, tuple[str, _EnvParser]]:
    found: dict[str, tuple[str, _EnvParser]] = {}
    for name, info in model.model_fields.items():
        path = f"{prefix}.{name}" if prefix else name
        env = next((m for m in info.metadata if isinstance(m, Env)), None)
        section = info.annotation
        if env is None and not prefix:
            section = next(
                (a for a in (section, *get_args(section)) if isinstance(a, type)),
                None,
            )
            if section is not None and issubclass(section, BaseModel):
                found.update(_variables(section, path))
            continue
        if env is not None:
            found[env.name or name.upper()] = (path, _parser(path, info, env))
    return found


ENV_VARS: Final[Mapping[str, tuple[str, _EnvParser]]] = types.MappingProxyType(
    _variables(StrategyFile, "")
)
"""``RAY_HYPARVIEW_<NAME>`` suffix -> (dotted key it sets, parser), from the section models.
``CONTACTS`` is a comma list of ids or ``id=endpoint``; ``NODES`` a comma list of
``id=endpoint`` merged into [nodes]; ``CONTACTS=""`` means no contacts; ``CONTROL=""`` /
``METRICS_PORT=""`` turn those off; ``KEEPALIVE_INTERVAL=off`` turns keepalives off."""


def _overlay(environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    overlay: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for var in sorted(environ):
        if not var.startswith(ENV_PREFIX):
            continue
        suffix = var[len(ENV_PREFIX) :]
        if suffix in PROCESS_ENV_VARS:
            continue
        if suffix not in ENV_VARS:
            hint = suggest(suffix, ENV_VARS)
            raise StrategyError(
                var,
                environ[var],
                f"a known variable ({ENV_PREFIX} + one of {', '.join(ENV_VARS)})",
                hint=hint and hint.replace("'", "'" + ENV_PREFIX, 1),
            )
        path, parse = ENV_VARS[suffix]
        value = parse(environ[var], var)
        *parents, leaf = path.split(".")
        table = overlay
        for part in parents:
            table = table.setdefault(part, {})
        table[leaf] = value
        sources[path] = var
        if isinstance(value, Mapping):
            for child in value:
                sources[f"{path}.{child}"] = var
    return overlay, sources


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _merge(base: Mapping[str, Any], overlay: Mapping[str, Any], path: str) -> dict[str, Any]:
    out = dict(base)
    for key, value in overlay.items():
        current = out.get(key)
        if path == "nodes" and isinstance(current, str) and isinstance(value, Mapping):
            current = {"endpoint": current}
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            out[key] = _merge(current, value, _join(path, key))
        else:
            out[key] = value
    if path == "security":
        # A secret from the environment replaces the file's key pair, not adds to it.
        if "secret_key_file" in overlay:
            out.pop("secret_key", None)
        if "secret_key" in overlay:
            out.pop("secret_key_file", None)
        if ("secret_key" in overlay or "secret_key_file" in overlay) and (
            "public_key" not in overlay
        ):
            out.pop("public_key", None)
    return out


def merge_env(
    data: Mapping[str, Any], environ: Mapping[str, str]
) -> tuple[dict[str, Any], dict[str, str]]:
    """``data`` with the overrides of ``environ`` merged in, and the variable that set each
    dotted key (to name it in errors)."""
    overlay, sources = _overlay(environ)
    if not isinstance(data, Mapping):
        raise StrategyError("", data, "a table")
    return _merge(data, overlay, ""), sources


def apply_env(data: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``data`` with the ``RAY_HYPARVIEW_*`` overrides of ``environ`` (default ``os.environ``)
    merged in: the mapping ``from_env`` validates. Raises :class:`StrategyError` for unknown
    variables and values that do not parse."""
    return merge_env(data, os.environ if environ is None else environ)[0]
