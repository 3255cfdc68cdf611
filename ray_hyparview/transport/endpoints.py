"""The one endpoint parser: ``tcp://host:port``, ``ipc://path``, ``inproc://name``, ``mem://name``.

Every layer that reads an endpoint (the transports, the configuration, the control socket, the
Ray sidecar) goes through this module, so that ``tcp://[::1]:7946`` means the same thing
everywhere. The forms are ZeroMQ's (zmq_tcp(7), zmq_ipc(7), zmq_inproc(7)): a host name, an IPv4
address or a bracketed IPv6 address, and a port; ``mem://name`` is the in-process switchboard of
:mod:`~ray_hyparview.transport.memory`.

:func:`check_endpoint` says whether an endpoint suits one use (dialled, advertised, bound, the
control socket) and raises :class:`EndpointError` with what was expected; the configuration
turns that into an error naming the key.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final, Literal, NamedTuple

__all__ = [
    "SCHEMES",
    "WILDCARD_HOSTS",
    "Endpoint",
    "EndpointError",
    "EndpointUse",
    "check_endpoint",
    "format_host",
    "is_host",
    "is_loopback_endpoint",
    "is_loopback_host",
    "parse_endpoint",
    "split_host_port",
    "tcp_host",
    "valid_host",
]

SCHEMES: Final = ("tcp://", "ipc://", "inproc://")
"""The ZeroMQ schemes the agent binds and dials."""

WILDCARD_HOSTS: Final = frozenset({"*", "0.0.0.0", "::"})
"""Hosts that mean "every interface": fine to bind, useless to dial."""

IPC_PATH_MAX: Final = 107
"""Bytes of an ``ipc://`` path: ``sun_path`` is 108 bytes on Linux, one of them the NUL."""

_HOST_LABEL_RE = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_LOOPBACK_NAMES = frozenset({"localhost"})

EndpointUse = Literal["dial", "advertise", "bind", "control"]

_EXPECTED: Final[dict[str, str]] = {
    "dial": "an endpoint tcp://host:port (port 1-65535), ipc://path or inproc://name",
    "advertise": "an endpoint tcp://host:port (port 0-65535, not a wildcard host), "
    "ipc://path or inproc://name",
    "bind": "an endpoint tcp://host:port (port 0-65535, host may be * or 0.0.0.0), "
    "ipc://path or inproc://name",
    "control": "a local endpoint: ipc://path, inproc://name or tcp://127.0.0.1:port",
}


class EndpointError(ValueError):
    """An endpoint unfit for its use: what was expected, and a hint at why."""

    def __init__(self, endpoint: object, expected: str, hint: str | None = None) -> None:
        self.endpoint = endpoint
        self.expected = expected
        self.hint = hint
        message = f"expected {expected}, got {endpoint!r}"
        super().__init__(message + (f"; {hint}" if hint else ""))


class Endpoint(NamedTuple):
    """A parsed endpoint. ``host`` and ``port`` for ``tcp``, ``path`` for the others; an IPv6
    host is held without its brackets."""

    scheme: str
    host: str | None
    port: int | None
    path: str | None


def split_host_port(rest: str) -> tuple[str | None, str]:
    """``host:port`` or ``[v6]:port`` -> (host without brackets, port text); ``(None, "")``
    if it has neither form. The port text is not checked."""
    if rest.startswith("["):
        host, bracket, tail = rest[1:].partition("]")
        if not bracket or not tail.startswith(":"):
            return None, ""
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None, ""
        return host, tail[1:]
    host, colon, port = rest.rpartition(":")
    if not colon or not host or ":" in host:
        return None, ""
    return host, port


def parse_endpoint(endpoint: str) -> Endpoint:
    """Split an endpoint into its parts, or raise :class:`EndpointError`. Only the form is
    checked (a scheme, and for ``tcp`` a host and a decimal port up to 65535), not its use."""
    scheme, sep, rest = endpoint.partition("://")
    if not sep or not rest:
        raise EndpointError(endpoint, "scheme://address")
    if scheme != "tcp":
        return Endpoint(scheme, None, None, rest)
    host, port_text = split_host_port(rest)
    if host is None or not port_text.isdigit() or not port_text.isascii():
        raise EndpointError(endpoint, "tcp://host:port")
    port = int(port_text)
    if port > 65535:
        raise EndpointError(endpoint, "tcp://host:port", hint=f"port {port} is out of range")
    return Endpoint("tcp", host, port, None)


def tcp_host(endpoint: str) -> str | None:
    """The host of a ``tcp://`` endpoint (IPv6 without brackets), else None."""
    if not endpoint.startswith("tcp://"):
        return None
    host, _ = split_host_port(endpoint[len("tcp://") :])
    return host


def format_host(host: str) -> str:
    """``host`` as it goes before ``:port``: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host


def valid_host(host: str) -> bool:
    """An IP address or a DNS host name (labels of letters, digits and inner hyphens)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return True
    if re.fullmatch(r"[0-9.]+", host):
        return False  # looks like IPv4 but is not one (e.g. 10.0.0.256)
    labels = host.rstrip(".").split(".")
    return len(host) <= 253 and all(_HOST_LABEL_RE.match(label) for label in labels)


_HOST_NAME: Final = re.compile(
    r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


def is_host(text: str) -> bool:
    """An IP address (v4 or v6) or a DNS host name without a trailing dot, as a bind address."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return len(text) <= 253 and _HOST_NAME.fullmatch(text) is not None
    return True


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback address."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_loopback_endpoint(endpoint: str) -> bool:
    """True if no other host can reach ``endpoint``: ``ipc://`` and ``inproc://`` never leave
    the host; a ``tcp://`` endpoint must name a loopback host (a wildcard, an interface or
    another name does not count)."""
    if not endpoint.startswith("tcp://"):
        return True
    host = tcp_host(endpoint)
    return host is not None and is_loopback_host(host)


def check_endpoint(endpoint: object, use: EndpointUse, *, transport: str = "zmq") -> str:
    """Check an endpoint for one use and return it, or raise :class:`EndpointError`.

    ``dial``: a peer's endpoint (port 1-65535, no wildcard host). ``advertise``: this node's
    own endpoint (port 0 allowed, meaning the agent advertises the port it gets). ``bind``:
    wildcard hosts allowed. ``control``: ``ipc://``, ``inproc://`` or TCP on loopback only,
    since the control socket answers anyone who can reach it. With ``transport="memory"`` the
    node endpoints are the in-process switchboard's ``mem://name`` instead.
    """
    if transport == "memory" and use != "control":
        if isinstance(endpoint, str) and endpoint.startswith("mem://") and len(endpoint) > 6:
            return endpoint
        raise EndpointError(endpoint, "an in-memory endpoint mem://name")
    expected = _EXPECTED[use]
    if not isinstance(endpoint, str):
        raise EndpointError(endpoint, expected)
    scheme, sep, rest = endpoint.partition("://")
    if not sep or not rest:
        raise EndpointError(endpoint, expected)
    match scheme:
        case "ipc":
            if "\0" in rest or len(rest.encode()) > IPC_PATH_MAX:
                raise EndpointError(
                    endpoint, expected, hint=f"ipc paths are limited to {IPC_PATH_MAX} bytes"
                )
            return endpoint
        case "inproc":
            return endpoint
        case "tcp":
            pass
        case "mem":
            raise EndpointError(endpoint, expected, hint="mem:// needs transport.kind = 'memory'")
        case _:
            raise EndpointError(endpoint, expected, hint=f"unknown scheme {scheme!r}")
    host, port_text = split_host_port(rest)
    if host is None or not port_text.isdigit() or not port_text.isascii():
        raise EndpointError(endpoint, expected)
    port = int(port_text)
    # Port 0 (any free port) makes sense wherever we listen: the bind, the control endpoint
    # (the agent prints where it listens), and an advertised endpoint filled in after binding.
    lowest = 1 if use == "dial" else 0
    if not lowest <= port <= 65535:
        raise EndpointError(endpoint, expected, hint=f"port {port} is out of range")
    if host in WILDCARD_HOSTS:
        if use != "bind":
            raise EndpointError(
                endpoint,
                expected,
                hint=f"{host} is a wildcard, which other nodes cannot dial; set it as bind",
            )
        return endpoint
    if not valid_host(host):
        raise EndpointError(endpoint, expected, hint=f"{host!r} is not a valid host")
    if use == "control" and not is_loopback_host(host):
        raise EndpointError(
            endpoint, expected, hint="the control endpoint must not be reachable remotely"
        )
    return endpoint
