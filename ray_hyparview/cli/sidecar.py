"""``run --ray-address ADDR``: the agent as a sidecar next to ``ray start``.

The sidecar takes the same configuration as ``run`` (``--config``, ``RAY_HYPARVIEW_*``, flags;
:func:`~ray_hyparview.cli.main.strategy_data`) and goes through the same checks, with the same
one-line errors and exit status, before it connects to Ray. From Ray it takes only what Ray
knows:

* the node id ([node] id in a file is replaced by it; ``--id`` is refused);
* the host to advertise when none is configured: with no ``endpoint``, and a ``bind`` that is
  a wildcard (``tcp://0.0.0.0:7946``) or absent, the agent is announced at the node's IP with
  the bind's port (0, any free port, when no bind is given);
* the peers and, unless ``--insecure``, their CURVE keys, through the GCS. Its own key pair is
  the ``[security]`` one if the strategy has it, else a fresh pair, published in the GCS.

Everything else (hyparview timings, transport limits, control endpoint, metrics port and
host, log level) is the strategy's, as for ``run``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from typing import Any

from ray_hyparview.agent.priority import raise_priority
from ray_hyparview.cli.main import (
    CannotStart,
    run_agent,
    setup_logging,
    strategy_data,
)
from ray_hyparview.config.keys import KeyFileError
from ray_hyparview.config.strategy import Security, Strategy, StrategyError

__all__ = ["PLACEHOLDER_ID", "cmd_sidecar", "sidecar_mapping"]

PLACEHOLDER_ID = "0" * 56
"""The node id the strategy is checked with before Ray is asked for the real one (a Ray node
id has this shape: 28 bytes in hex)."""

_WILDCARDS = frozenset({"*", "0.0.0.0", "::", "[::]"})


def sidecar_mapping(data: dict[str, Any], node_id: str, host: str) -> dict[str, Any]:
    """``data`` (see :func:`strategy_data`) with Ray's ``node_id`` and, when no endpoint is
    configured and the bind is a wildcard or absent, ``tcp://<host>:<bind port>`` as the
    endpoint."""
    out = dict(data)
    node = dict(out.get("node", {}))
    node["id"] = node_id
    bind = node.get("bind")
    if not node.get("endpoint"):
        port = "0"
        wildcard = True
        if isinstance(bind, str) and bind.startswith("tcp://"):
            bind_host, _, port = bind[len("tcp://") :].rpartition(":")
            wildcard = bind_host in _WILDCARDS
        if wildcard:
            shown = f"[{host}]" if ":" in host else host
            node["endpoint"] = f"tcp://{shown}:{port}"
    out["node"] = node
    return out


def with_security(strategy: Strategy, security: Security | None) -> Strategy:
    """``strategy`` with ``security`` in place of its own (the GCS-keyed pair)."""
    # replace() runs the same checks as the constructor and carries every other field over,
    # including ones added after this was written.
    return dataclasses.replace(strategy, security=security)


def cmd_sidecar(args: argparse.Namespace) -> int:
    """``run --ray-address``: check everything ``run`` checks, then connect to Ray."""
    if args.node_id:
        print("run: --id conflicts with --ray-address (the node id is Ray's)", file=sys.stderr)
        return 1
    try:
        data, base_dir, source = strategy_data(args)
        # Checked before Ray is touched: a mistake costs no connection and no GCS entry.
        checked = Strategy.from_mapping(
            sidecar_mapping(data, PLACEHOLDER_ID, "127.0.0.1"), base_dir=base_dir, source=source
        )
    except StrategyError as exc:
        print(f"run: invalid strategy: {exc}", file=sys.stderr)
        return 1
    from ray_hyparview.cluster.sidecar import ray_node, serving, sidecar_policy

    try:
        security = sidecar_policy(checked.security, insecure=args.insecure)
    except (StrategyError, KeyFileError) as exc:
        print(f"run: invalid strategy: {exc}", file=sys.stderr)
        return 1
    setup_logging(checked)
    try:
        with ray_node(args.ray_address) as (node_id, host):
            try:
                built = Strategy.from_mapping(
                    sidecar_mapping(data, node_id, host), base_dir=base_dir, source=source
                )
            except StrategyError as exc:
                print(f"run: invalid strategy: {exc}", file=sys.stderr)
                return 1
            strategy = with_security(built, security)
            priority = raise_priority(strategy.nice)  # a process of its own, as ``run``'s
            return asyncio.run(
                run_agent(
                    strategy,
                    json_line=args.json,
                    open_agent=lambda: serving(strategy),
                    priority=priority,
                )
            )
    except CannotStart as exc:
        print(f"run: {exc}", file=sys.stderr)
        return 1
    except ConnectionError as exc:
        print(f"run: no Ray cluster at {args.ray_address}: {exc}", file=sys.stderr)
        return 1
