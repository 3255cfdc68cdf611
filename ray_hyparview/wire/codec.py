"""The wire format: bytes <-> message values.

Theory of operation
-------------------
A frame is ``MAGIC (2 bytes) | VERSION (1 byte) | msgpack array``. The array is
``[tag, field_1, ..., field_n]``: an integer type tag followed by the message's fields in the
order they were registered. Nothing else is ever on the wire: no maps, no ext types, no
floats unless a field says so.

The rules this module keeps:

* **Errors are values.** :meth:`Codec.decode` never raises on remote input; it returns a
  :class:`DecodeError` whose ``cause`` is one of :data:`DECODE_CAUSES`, so the caller can count
  drops by cause (wsproto turns parse failures into events; the Elixir ``hyparview`` codec
  returns ``{:error, reason}``). Only local misuse raises (:class:`EncodeError`,
  :class:`RegistryError`, both rooted in :class:`~ray_hyparview.protocol.errors.HyParViewError`).
* **Limits first, then parse, then validate.** The frame size is checked before msgpack sees a
  byte; ``msgpack.unpackb`` then runs with explicit ``max_*_len`` bounds (arrays no longer than
  the longest registered schema needs, no maps, no ext types); maps are rejected by an
  ``object_hook`` as soon as the first one is built, so a "nested empty map" bomb costs one
  object, not millions. msgpack raises many exception types on garbage (``ValueError`` and its
  subclasses ``ExtraData``/``FormatError``/``StackError``, ``UnicodeDecodeError``,
  ``TypeError``, ``OverflowError``...), so the call is wrapped in a broad ``except Exception``.
* **Strict schema.** Every field is checked by a small :class:`Field` object: exact types (a
  ``bool`` is not an ``int``), integer ranges (TTLs in 0..255), bounded sequences, enum values,
  peer ids that are non-empty printable strings of at most 240 UTF-8 bytes (they become ZeroMQ
  routing ids, which libzmq limits to 255 bytes and whose leading zero byte is reserved).
* **One table, built once.** Every message of the package, with its tag and field kinds, is a
  row of :data:`ray_hyparview.wire.table.TABLE`; :meth:`Registry.from_table` builds a frozen
  registry from it and checks that each field spec covers its dataclass's fields exactly.
  Nothing registers at import time, so what a codec decodes never depends on which modules
  happen to be imported. Tag ranges: 1-15 HyParView, 16-31 Plumtree, 32-63 routing and mesh,
  64-127 applications (a test may build its own :class:`Registry`). Tags 0..127 encode as a
  single msgpack byte.
* **Versioned from the first frame.** A frame with another version byte is rejected as
  ``bad_version`` rather than misparsed; a future version can be accepted side by side.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

import msgpack

from ray_hyparview.protocol import limits
from ray_hyparview.protocol.errors import HyParViewError
from ray_hyparview.protocol.peer import Peer

__all__ = [
    "BOOL",
    "BoolField",
    "BytesField",
    "Codec",
    "DECODE_CAUSES",
    "DEFAULT_MAX_SIZE",
    "DecodeCause",
    "DecodeError",
    "EncodeError",
    "EnumField",
    "Field",
    "FieldError",
    "FloatField",
    "HEADER",
    "INCARNATION",
    "IntField",
    "MAGIC",
    "MAX_ENDPOINT_LEN",
    "MAX_PEER_ID_BYTES",
    "MAX_SHUFFLE_PEERS",
    "NODE_ID",
    "NodeIdField",
    "OptionalField",
    "PEER",
    "PeerField",
    "Registry",
    "RegistryError",
    "SeqField",
    "StrField",
    "TTL",
    "VERSION",
]

MAGIC: Final = b"\xc1\x68"
"""Two magic bytes. 0xc1 is the one byte msgpack never uses, so a frame of ours can never be
mistaken for (or parsed as) bare msgpack, and a stray msgpack frame fails at the first byte."""

VERSION: Final = 1
"""Wire-format version; bumped on any incompatible change."""

HEADER: Final = MAGIC + bytes([VERSION])

# The value limits live in :mod:`ray_hyparview.protocol.limits`, shared with the cores; these
# names are the codec's views of them (the same objects, not copies).
DEFAULT_MAX_SIZE: Final = limits.MAX_FRAME_SIZE
"""Largest frame accepted or produced, header included (64 KiB)."""

MAX_PEER_ID_BYTES: Final = limits.MAX_PEER_ID_BYTES
"""Longest node id in UTF-8 bytes (see :data:`ray_hyparview.protocol.limits.MAX_PEER_ID_BYTES`)."""

MAX_ENDPOINT_LEN: Final = limits.MAX_ENDPOINT_LEN
"""Longest endpoint string (``tcp://[v6 address]:port`` fits easily)."""

DecodeCause = Literal[
    "too_large", "truncated", "bad_magic", "bad_version", "malformed", "bad_schema", "unknown_type"
]
"""Why a frame was rejected; a fixed set so that drop counters have bounded names."""

DECODE_CAUSES: Final[tuple[DecodeCause, ...]] = (
    "too_large",
    "truncated",
    "bad_magic",
    "bad_version",
    "malformed",
    "bad_schema",
    "unknown_type",
)


@dataclass(frozen=True, slots=True)
class DecodeError:
    """A frame that could not be decoded. A value, not an exception: remote garbage is counted
    and dropped, never raised into the agent loop."""

    cause: DecodeCause
    """One of :data:`DECODE_CAUSES`; use it as a counter key."""

    detail: str = ""
    """A short human-readable hint for debug logs (never includes the payload)."""


class EncodeError(HyParViewError, ValueError):
    """A local message could not be encoded: unregistered type, invalid field, or too large."""


class RegistryError(HyParViewError, ValueError):
    """A message type was registered wrongly (tag taken, fields not matching the dataclass)."""


class FieldError(Exception):
    """Raised by a :class:`Field` whose value is invalid. Field kinds defined by other modules
    raise it too; :meth:`Codec.decode` turns it into ``DecodeError("bad_schema")`` and
    :meth:`Codec.encode` into :class:`EncodeError`, so it never reaches the agent loop."""


_Invalid = FieldError  # the name this module uses internally


# --------------------------------------------------------------------------------------------
# Field kinds
# --------------------------------------------------------------------------------------------


class Field(Protocol):
    """How one message field travels: ``encode`` turns the Python value into msgpack-able
    data (validating it), ``decode`` checks the unpacked data and rebuilds the value. Both raise
    an internal error on invalid input, which the codec turns into an error value or
    :class:`EncodeError`."""

    def encode(self, value: Any) -> Any:
        """Python value -> msgpack-able value, or raise."""
        ...

    def decode(self, raw: Any) -> Any:
        """Unpacked msgpack value -> Python value, or raise."""
        ...

    def max_array_len(self) -> int:
        """Longest msgpack array this field can contain (0 if none): bounds the unpacker."""
        ...


@dataclass(frozen=True, slots=True)
class IntField:
    """An integer in ``lo..hi`` inclusive. ``bool`` is rejected although it subclasses int."""

    lo: int
    hi: int

    def encode(self, value: Any) -> Any:
        return self.decode(value)

    def decode(self, raw: Any) -> Any:
        if type(raw) is not int or not self.lo <= raw <= self.hi:
            raise _Invalid(f"expected int in {self.lo}..{self.hi}")
        return raw

    def max_array_len(self) -> int:
        return 0


@dataclass(frozen=True, slots=True)
class FloatField:
    """A finite float in ``lo..hi``; msgpack ints are accepted and converted (senders in other
    languages may pack 1.0 as 1)."""

    lo: float = -math.inf
    hi: float = math.inf

    def encode(self, value: Any) -> Any:
        return self.decode(value)

    def decode(self, raw: Any) -> Any:
        if type(raw) is int:
            raw = float(raw)
        if type(raw) is not float or not math.isfinite(raw) or not self.lo <= raw <= self.hi:
            raise _Invalid(f"expected finite float in {self.lo}..{self.hi}")
        return raw

    def max_array_len(self) -> int:
        return 0


@dataclass(frozen=True, slots=True)
class BoolField:
    """``True`` or ``False``; integers are rejected."""

    def encode(self, value: Any) -> Any:
        return self.decode(value)

    def decode(self, raw: Any) -> Any:
        if type(raw) is not bool:
            raise _Invalid("expected bool")
        return raw

    def max_array_len(self) -> int:
        return 0


@dataclass(frozen=True, slots=True)
class StrField:
    """A string of ``min_len..max_len`` characters; printable only unless told otherwise (keeps
    control characters out of logs)."""

    max_len: int
    min_len: int = 0
    printable: bool = True

    def encode(self, value: Any) -> Any:
        return self.decode(value)

    def decode(self, raw: Any) -> Any:
        if type(raw) is not str or not self.min_len <= len(raw) <= self.max_len:
            raise _Invalid(f"expected str of {self.min_len}..{self.max_len} chars")
        if self.printable and not raw.isprintable():
            raise _Invalid("expected printable str")
        return raw

    def max_array_len(self) -> int:
        return 0


@dataclass(frozen=True, slots=True)
class BytesField:
    """Opaque payload bytes (msgpack ``bin``) of at most ``max_len`` bytes. Encoding accepts any
    bytes-like object; decoding yields ``bytes``."""

    max_len: int

    def encode(self, value: Any) -> Any:
        if isinstance(value, bytearray | memoryview):
            value = bytes(value)
        return self.decode(value)

    def decode(self, raw: Any) -> Any:
        if type(raw) is not bytes or len(raw) > self.max_len:
            raise _Invalid(f"expected bytes of at most {self.max_len}")
        return raw

    def max_array_len(self) -> int:
        return 0


@dataclass(frozen=True, slots=True)
class EnumField:
    """A member of ``enum_cls``, sent as its value (an int for ``IntEnum``, else a str or int).
    Unknown values are a schema error, so a newer peer's new priority is rejected, not
    misread."""

    enum_cls: type[enum.Enum]

    def encode(self, value: Any) -> Any:
        if not isinstance(value, self.enum_cls):
            raise _Invalid(f"expected {self.enum_cls.__name__}")
        raw = value.value
        return int(raw) if isinstance(value, enum.IntEnum) else raw

    def decode(self, raw: Any) -> Any:
        if type(raw) is not int and type(raw) is not str:
            raise _Invalid(f"expected {self.enum_cls.__name__} value")
        try:
            return self.enum_cls(raw)
        except ValueError:
            raise _Invalid(f"not a {self.enum_cls.__name__} value") from None

    def max_array_len(self) -> int:
        return 0


class PeerField:
    """A :class:`Peer` as ``[id, endpoint]``. The id is a non-empty printable string of at most
    :data:`MAX_PEER_ID_BYTES` UTF-8 bytes (it becomes a ZeroMQ routing id); the endpoint is a
    printable string of at most :data:`MAX_ENDPOINT_LEN` characters, empty when unknown.

    The same few peers appear in almost every message, so validated peers are kept in a small
    bounded cache keyed by ``(id, endpoint)``: a hit skips validation and construction, which
    halves the cost of decoding a KEEPALIVE. Peers are immutable, so sharing them is safe."""

    __slots__ = ("_cache",)

    _CACHE_MAX: Final = 4096

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], Peer] = {}

    def encode(self, value: Any) -> Any:
        if type(value) is not Peer:
            raise _Invalid("expected Peer")
        key = (value.id, value.endpoint)
        if key not in self._cache:
            self._validate(value.id, value.endpoint)
            self._remember(key, value)
        return list(key)

    def decode(self, raw: Any) -> Any:
        if type(raw) is not list or len(raw) != 2:
            raise _Invalid("expected [id, endpoint]")
        key = (raw[0], raw[1])
        try:
            return self._cache[key]
        except (KeyError, TypeError):  # TypeError: an unhashable item, rejected below
            pass
        self._validate(raw[0], raw[1])
        peer = Peer(raw[0], raw[1])
        self._remember(key, peer)
        return peer

    def _remember(self, key: tuple[str, str], peer: Peer) -> None:
        if len(self._cache) >= self._CACHE_MAX:
            self._cache.clear()
        self._cache[key] = peer

    @staticmethod
    def _validate(peer_id: Any, endpoint: Any) -> None:
        if not limits.is_node_id(peer_id):
            raise _Invalid("bad peer id")
        if (
            type(endpoint) is not str
            or len(endpoint) > MAX_ENDPOINT_LEN
            or not endpoint.isprintable()
        ):
            raise _Invalid("bad endpoint")

    def max_array_len(self) -> int:
        return 2


@dataclass(frozen=True, slots=True)
class SeqField:
    """A tuple of at most ``max_len`` items of one field kind."""

    item: Field
    max_len: int

    def encode(self, value: Any) -> Any:
        if not isinstance(value, tuple | list) or len(value) > self.max_len:
            raise _Invalid(f"expected sequence of at most {self.max_len}")
        return [self.item.encode(v) for v in value]

    def decode(self, raw: Any) -> Any:
        if type(raw) is not list or len(raw) > self.max_len:
            raise _Invalid(f"expected array of at most {self.max_len}")
        item = self.item
        return tuple([item.decode(v) for v in raw])

    def max_array_len(self) -> int:
        return max(self.max_len, self.item.max_array_len())


@dataclass(frozen=True, slots=True)
class OptionalField:
    """``None`` (msgpack nil) or a value of the inner kind."""

    inner: Field

    def encode(self, value: Any) -> Any:
        return None if value is None else self.inner.encode(value)

    def decode(self, raw: Any) -> Any:
        return None if raw is None else self.inner.decode(raw)

    def max_array_len(self) -> int:
        return self.inner.max_array_len()


PEER: Final = PeerField()
INCARNATION: Final = IntField(0, limits.MAX_INCARNATION)
"""Incarnations are start times in microseconds: far below 2**63."""
TTL: Final = IntField(0, limits.MAX_TTL)
BOOL: Final = BoolField()
MAX_SHUFFLE_PEERS: Final = limits.MAX_SHUFFLE_PEERS
"""Most peers in one SHUFFLE or SHUFFLE_REPLY; the paper's sample is 1 + ka + kp = 8."""


class NodeIdField:
    """A bare node id (a routing destination, a message's origin): the same rule as a
    :class:`Peer`'s id, :func:`ray_hyparview.protocol.limits.is_node_id`."""

    __slots__ = ()

    def encode(self, value: Any) -> Any:
        return self.decode(value)

    def decode(self, raw: Any) -> Any:
        if not limits.is_node_id(raw):
            raise _Invalid("bad node id")
        return raw

    def max_array_len(self) -> int:
        return 0


NODE_ID: Final = NodeIdField()


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Entry:
    tag: int
    cls: type[Any]
    names: tuple[str, ...]
    fields: tuple[Field, ...]


class Registry:
    """Message types known to a codec, by tag and by class.

    A tag or class is registered once. The package's messages come from one table
    (:data:`ray_hyparview.wire.table.TABLE`) through :meth:`from_table`, which freezes the
    result; an empty ``Registry()`` is open for a test's own messages.
    """

    def __init__(self) -> None:
        self._by_tag: dict[int, _Entry] = {}
        self._by_cls: dict[type[Any], _Entry] = {}
        self._max_array_len = 1
        self._frozen = False

    @classmethod
    def from_table(cls, table: Iterable[tuple[int, type[Any], Mapping[str, Field]]]) -> Registry:
        """A frozen registry holding every row ``(tag, class, fields)`` of ``table``."""
        registry = cls()
        for tag, message_cls, fields in table:
            registry.register(tag, message_cls, fields)
        registry._frozen = True
        return registry

    def register(self, tag: int, cls: type[Any], fields: Mapping[str, Field]) -> None:
        """Add ``cls`` under ``tag``; ``fields`` maps every dataclass field to its kind, in wire
        order. Raises :class:`RegistryError` if the tag or class is taken or the field names do
        not match the dataclass's init fields exactly."""
        if self._frozen:
            raise RegistryError("this registry was built from a table and is frozen")
        if type(tag) is not int or not 0 <= tag <= 0xFFFF:
            raise RegistryError(f"tag must be an int in 0..65535, got {tag!r}")
        if tag in self._by_tag:
            raise RegistryError(f"tag {tag} already registered to {self._by_tag[tag].cls!r}")
        if cls in self._by_cls:
            raise RegistryError(f"{cls!r} already registered under tag {self._by_cls[cls].tag}")
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            raise RegistryError(f"{cls!r} is not a dataclass")
        init_names = [f.name for f in dataclasses.fields(cls) if f.init]
        if sorted(init_names) != sorted(fields):
            raise RegistryError(
                f"fields of {cls.__name__} are {sorted(init_names)}, spec names {sorted(fields)}"
            )
        entry = _Entry(tag, cls, tuple(fields), tuple(fields.values()))
        self._by_tag[tag] = entry
        self._by_cls[cls] = entry
        self._max_array_len = max(
            self._max_array_len,
            1 + len(entry.fields),
            *(f.max_array_len() for f in entry.fields),
        )

    @property
    def max_array_len(self) -> int:
        """Longest array any registered message contains; bounds msgpack's unpacker."""
        return self._max_array_len

    @property
    def types(self) -> Mapping[int, type[Any]]:
        """Registered classes by tag (a copy)."""
        return {tag: e.cls for tag, e in self._by_tag.items()}

    def tag_of(self, cls: type[Any]) -> int:
        """The tag of a registered class; :class:`KeyError` if unknown."""
        return self._by_cls[cls].tag

    def entry_for_tag(self, tag: int) -> _Entry | None:
        return self._by_tag.get(tag)

    def entry_for_cls(self, cls: type[Any]) -> _Entry | None:
        return self._by_cls.get(cls)


def _reject_map(_pairs: Any) -> Any:
    # No schema uses maps: stop at the first one instead of building a map bomb.
    raise ValueError("maps are not allowed")


class Codec:
    """Encodes registered message values to frames and decodes frames back, with a hard size
    limit. Cheap to create; holds no per-message state."""

    __slots__ = ("_max_size", "_registry")

    def __init__(self, registry: Registry, *, max_size: int = DEFAULT_MAX_SIZE):
        if type(max_size) is not int or max_size < len(HEADER) + 1:
            raise ValueError(f"max_size must be an int > {len(HEADER)}, got {max_size!r}")
        self._registry = registry
        self._max_size = max_size

    @property
    def max_size(self) -> int:
        """Largest frame, header included, that this codec produces or accepts."""
        return self._max_size

    @property
    def registry(self) -> Registry:
        return self._registry

    def encode(self, message: object) -> bytes:
        """Serialise a registered message; raises :class:`EncodeError` for an unregistered type,
        an invalid field value, or a frame larger than ``max_size``."""
        entry = self._registry.entry_for_cls(type(message))
        if entry is None:
            raise EncodeError(f"unregistered message type {type(message).__name__}")
        out: list[Any] = [entry.tag]
        try:
            for name, kind in zip(entry.names, entry.fields, strict=True):
                out.append(kind.encode(getattr(message, name)))
        except _Invalid as exc:
            raise EncodeError(f"{entry.cls.__name__}.{name}: {exc}") from None
        return self._frame(entry, out)

    def _frame(self, entry: _Entry, out: list[Any]) -> bytes:
        frame = HEADER + msgpack.packb(out, use_bin_type=True)
        if len(frame) > self._max_size:
            raise EncodeError(
                f"{entry.cls.__name__} encodes to {len(frame)} bytes, limit {self._max_size}"
            )
        return frame

    # -- raw fields: for a relay that checks the values by its own rules ------------------------

    def prefix(self, cls: type[Any]) -> bytes:
        """The bytes every frame of ``cls`` that :meth:`encode` makes starts with: the header,
        the array's length and the tag. A caller may look a frame's type up by them before
        parsing it; a frame of another encoder that packs these differently is just not
        recognised, and goes to :meth:`decode`. :class:`KeyError` if ``cls`` is unknown."""
        entry = self._entry(cls)
        packed = msgpack.packb([entry.tag, *[None] * len(entry.fields)])
        return HEADER + packed[: len(packed) - len(entry.fields)]  # each None is one byte

    def field_names(self, cls: type[Any]) -> tuple[str, ...]:
        """The names of ``cls``'s fields in the order its frames carry them."""
        return self._entry(cls).names

    def fields(self, data: bytes, cls: type[Any]) -> list[Any] | None:
        """The field values of a frame of ``cls``, in table order, parsed under the limits of
        :meth:`decode` but not checked against the schema; ``None`` if ``data`` is not a
        well-formed frame of ``cls`` (:meth:`decode` then says why).

        For a caller that checks every value by rules of its own at least as strict as the
        schema: a relay passes a routed frame on without building the message
        (:meth:`~ray_hyparview.protocol.routing.Router.pass_on` checks it)."""
        entry = self._entry(cls)
        obj = self._parse(data)
        if isinstance(obj, DecodeError) or obj[0] != entry.tag:
            return None
        if len(obj) != 1 + len(entry.fields):
            return None
        del obj[0]
        return obj

    def encode_fields(self, cls: type[Any], values: Sequence[Any]) -> bytes:
        """Frame ``values`` as a message of ``cls`` without the schema's checks: for values
        that came from :meth:`fields` and that the caller checked. For the field kinds whose
        wire value is the value itself (ids, integers, bytes) the frame is byte for byte
        the one :meth:`encode` makes of the same message. Raises :class:`EncodeError` when
        the count of values is wrong or the frame is larger than ``max_size``."""
        entry = self._entry(cls)
        if len(values) != len(entry.fields):
            raise EncodeError(f"{cls.__name__} has {len(entry.fields)} fields, got {len(values)}")
        return self._frame(entry, [entry.tag, *values])

    def _entry(self, cls: type[Any]) -> _Entry:
        entry = self._registry.entry_for_cls(cls)
        if entry is None:
            raise KeyError(f"unregistered message type {cls.__name__}")
        return entry

    def _parse(self, data: bytes | bytearray | memoryview) -> list[Any] | DecodeError:
        """The limits, the header and msgpack: ``[tag, field, ...]`` or why not."""
        if type(data) is bytes:
            view: bytes | memoryview = data
        else:
            try:
                view = memoryview(data).cast("B")
            except TypeError:
                return DecodeError("malformed", "not a buffer")
        size = len(view)
        if size > self._max_size:
            return DecodeError("too_large", f"{size} bytes")
        if size < len(HEADER) + 1:
            return DecodeError("truncated", f"{size} bytes")
        if view[0] != MAGIC[0] or view[1] != MAGIC[1]:
            return DecodeError("bad_magic")
        if view[2] != VERSION:
            return DecodeError("bad_version", f"version {view[2]}")
        try:
            obj = msgpack.unpackb(
                memoryview(view)[3:],
                raw=False,
                use_list=True,
                strict_map_key=True,
                object_pairs_hook=_reject_map,
                max_str_len=size,
                max_bin_len=size,
                max_array_len=self._registry.max_array_len,
                max_map_len=0,
                max_ext_len=0,
            )
        except Exception as exc:  # msgpack raises many types on garbage; see module doc
            return DecodeError("malformed", type(exc).__name__)
        if type(obj) is not list or not obj or type(obj[0]) is not int:
            return DecodeError("bad_schema", "expected [tag, ...]")
        return obj

    def decode(self, data: bytes | bytearray | memoryview) -> object | DecodeError:
        """Parse one frame. Never raises: returns the message or a :class:`DecodeError`."""
        obj = self._parse(data)
        if isinstance(obj, DecodeError):
            return obj
        entry = self._registry.entry_for_tag(obj[0])
        if entry is None:
            return DecodeError("unknown_type", f"tag {obj[0]}")
        if len(obj) != 1 + len(entry.fields):
            return DecodeError("bad_schema", f"{entry.cls.__name__}: {len(obj) - 1} fields")
        return self._build(entry, obj[1:])

    def decode_fields(self, cls: type[Any], values: Sequence[Any]) -> object | DecodeError:
        """What :meth:`decode` returns for the frame :meth:`fields` read ``values`` from (the
        schema's checks, then the message), without parsing the frame again."""
        return self._build(self._entry(cls), values)

    def _build(self, entry: _Entry, values: Sequence[Any]) -> object | DecodeError:
        kwargs: dict[str, Any] = {}
        try:
            for name, kind, raw in zip(entry.names, entry.fields, values, strict=True):
                kwargs[name] = kind.decode(raw)
            message: object = entry.cls(**kwargs)
        except _Invalid as exc:
            return DecodeError("bad_schema", f"{entry.cls.__name__}.{name}: {exc}")
        except Exception as exc:  # a dataclass's own __post_init__ check, or a count off
            return DecodeError("bad_schema", f"{entry.cls.__name__}: {type(exc).__name__}")
        return message
