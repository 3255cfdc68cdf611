"""Node identities.

A :class:`Peer` names one HyParView agent: a stable node id plus the endpoint where
its agent listens. Two peers are the same node when their ids are equal, whatever
endpoint each copy carries, so views keyed by peer never hold a node twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Peer", "NodeId"]

NodeId = str
"""A node id: any non-empty string (a Ray NodeID in hex, a host name, ...)."""


@dataclass(frozen=True, slots=True, order=False)
class Peer:
    """One node of the overlay."""

    id: NodeId
    """Stable node id; equality and hashing use this field alone."""

    endpoint: str = field(default="", compare=False)
    """Where the node's agent listens, e.g. ``tcp://10.0.0.7:7946``; empty when unknown."""

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"Peer.id must be a non-empty string, got {self.id!r}")
        if not isinstance(self.endpoint, str):
            raise ValueError(f"Peer.endpoint must be a string, got {self.endpoint!r}")

    def __str__(self) -> str:
        return f"{self.id}@{self.endpoint}" if self.endpoint else self.id
