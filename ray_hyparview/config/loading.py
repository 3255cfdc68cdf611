"""From the TOML-shaped mapping to a :class:`~ray_hyparview.config.strategy.Strategy`.

The mapping is validated against :class:`~ray_hyparview.config.models.StrategyFile` (types,
bounds, unknown keys), then turned into the constructor's arguments; the constructor checks
what involves more than one key.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from ray_hyparview.config.errors import StrategyError
from ray_hyparview.config.models import AgentSection, StrategyFile, TransportLimits, error_from
from ray_hyparview.config.security import check_node_id, drop_none, security_from
from ray_hyparview.protocol.config import HyParViewConfig
from ray_hyparview.protocol.errors import ConfigError
from ray_hyparview.protocol.peer import Peer

if TYPE_CHECKING:
    from ray_hyparview.config.strategy import Strategy

__all__ = ["build"]


def build(cls: type[Strategy], data: Mapping[str, Any], base_dir: Path | None) -> Strategy:
    """A strategy (of class ``cls``) from the TOML-shaped mapping: the models check each key,
    the constructor what involves several."""
    if not isinstance(data, Mapping):
        raise StrategyError("", data, "a table")
    given = drop_none(data)
    given.setdefault("node", {})
    try:
        file = StrategyFile.model_validate(given)
    except ValidationError as exc:
        raise error_from(exc, StrategyFile, given) from None
    node, nodes = file.node, dict(file.nodes)
    check_node_id(node.id, "node.id")  # before Peer() below, which refuses less politely
    for node_id in nodes:
        check_node_id(node_id, f"nodes.{node_id}")
    if node.contacts is not None:
        contacts: tuple[Peer | str, ...] = tuple(node.contacts)
    else:
        contacts = tuple(Peer(other) for other in nodes if other != node.id)
    transport = file.transport
    return cls(
        local_peer=Peer(node.id, node.endpoint),
        nodes=nodes,
        bind=node.bind,
        contacts=contacts,  # type: ignore[arg-type]  # bare ids and 'id=endpoint' resolve
        hyparview_config=_hyparview_config(file.hyparview),
        transport=transport.kind,
        heartbeat_interval=transport.heartbeat_interval,
        heartbeat_timeout=transport.heartbeat_timeout,
        limits=TransportLimits.model_construct(
            **{name: getattr(transport, name) for name in TransportLimits.model_fields}
        ),
        security=None if file.security is None else security_from(file.security, base_dir),
        **{name: getattr(file.agent, name) for name in AgentSection.model_fields},
    )


def _hyparview_config(section: Any) -> HyParViewConfig:
    """The protocol's configuration from ``[hyparview]``; what the protocol refuses is
    reported under the key its ``ConfigError`` names."""
    values = {name: getattr(section, name) for name in type(section).model_fields}
    try:
        return HyParViewConfig(**values)
    except ConfigError as exc:
        if exc.field not in values:
            raise StrategyError("hyparview", values, str(exc)) from None
        raise StrategyError(
            f"hyparview.{exc.field}", values[exc.field], exc.expected or str(exc)
        ) from None
