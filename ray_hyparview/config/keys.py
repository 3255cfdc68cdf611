"""CURVE key pairs: generate, write, load, check.

Theory of operation
-------------------
ZeroMQ's CURVE mechanism (RFC 26/CURVEZMQ) authenticates each end of a connection by a
Curve25519 key pair. libzmq prints keys as Z85 text (RFC 32/Z85): 32 bytes become 40
printable characters. A node's *public* key is shared with every other node (it goes into
the ``[nodes]`` table of the strategy); its *secret* key never leaves the node.

Key files use the certificate format of czmq's ``zcert`` that pyzmq writes in
``zmq.auth.create_certificates`` and reads in ``zmq.auth.load_certificate``: a ZPL text file
with a ``curve`` section holding ``public-key`` (and ``secret-key`` in the secret file).
``<name>.key`` holds the public key only and may be world-readable; ``<name>.key_secret``
holds both and is created with mode 0600 from the start (``os.open`` with the mode, so the
secret is never readable by others, not even for an instant). Keeping the same format means
the ZAP tooling (``zmq.auth.load_certificates`` over a directory of ``*.key`` files) accepts
our files as they are.

Existing files are never overwritten unless asked: a key pair that silently changes locks a
node out of every peer that pinned its old public key.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import zmq
import zmq.auth

from ray_hyparview.protocol.errors import ConfigError

__all__ = [
    "KeyFileError",
    "KeyPairFiles",
    "Z85_ALPHABET",
    "cmd_keygen",
    "generate_keypair",
    "is_z85_key",
    "load_keypair",
    "public_key_of",
    "secret_file_too_open",
    "write_keypair",
]

Z85_ALPHABET = frozenset(
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"
)
"""The 85 characters of Z85 (ZeroMQ RFC 32)."""

Z85_KEY_LENGTH = 40
"""A 32-byte Curve25519 key in Z85 text."""

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

_PUBLIC_BANNER = """#   ****  Generated on {now} by ray_hyparview  ****
#   ZeroMQ CURVE Public Certificate
#   Exchange securely, or use a secure mechanism to verify the contents
#   of this file after exchange.

"""

_SECRET_BANNER = """#   ****  Generated on {now} by ray_hyparview  ****
#   ZeroMQ CURVE **Secret** Certificate
#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.

"""


class KeyFileError(ConfigError):
    """A key file is missing, unreadable, malformed, or would be overwritten."""


@dataclass(frozen=True, slots=True)
class KeyPairFiles:
    """What :func:`write_keypair` wrote."""

    public_file: Path
    """``<name>.key``: the public key only, mode 0644."""

    secret_file: Path
    """``<name>.key_secret``: public and secret key, mode 0600."""

    public_key: str
    """The public key in Z85 text, to paste into the ``[nodes]`` table of other nodes."""


def is_z85_key(text: object) -> bool:
    """True if ``text`` is a string of 40 Z85 characters (a CURVE key)."""
    return (
        isinstance(text, str)
        and len(text) == Z85_KEY_LENGTH
        and all(ch in Z85_ALPHABET for ch in text)
    )


def public_key_of(secret_key: str) -> str:
    """The public key that belongs to a Z85 secret key (libzmq's ``zmq_curve_public``)."""
    return zmq.curve_public(secret_key.encode("ascii")).decode("ascii")


def generate_keypair() -> tuple[str, str]:
    """A fresh CURVE key pair ``(public, secret)`` in Z85 text (libzmq's ``zmq_curve_keypair``)."""
    public, secret = zmq.curve_keypair()
    return public.decode("ascii"), secret.decode("ascii")


def _certificate(banner: str, public: str, secret: str | None, name: str) -> str:
    """Certificate text laid out exactly as pyzmq's ``zmq.auth.certs._write_key_file``."""
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    lines = [banner.format(now=now), "metadata\n", f"    name = {name}\n", "curve\n"]
    lines.append(f'    public-key = "{public}"\n')
    if secret is not None:
        lines.append(f'    secret-key = "{secret}"\n')
    return "".join(lines)


def _write_file(path: Path, text: str, mode: int, *, overwrite: bool) -> None:
    """Write ``text`` to ``path`` with ``mode`` set at creation time.

    Without ``overwrite`` the file must not exist (``O_EXCL``). With it, the text goes to a
    fresh temporary file in the same directory that then replaces ``path`` atomically, so a
    reader never sees a half-written key and a secret never sits in a file with a wider mode.
    """
    target = path
    if overwrite:
        target = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(target, flags, mode)
    except FileExistsError:
        raise KeyFileError(
            f"{path} already exists; refusing to overwrite a key file (use --force to replace it)"
        ) from None
    except OSError as exc:
        raise KeyFileError(f"cannot create {path}: {exc.strerror}") from None
    try:
        os.fchmod(fd, mode)  # the umask may have narrowed the public file's mode
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(text)
        if overwrite:
            os.replace(target, path)
    except BaseException:
        if overwrite:
            target.unlink(missing_ok=True)
        raise


def write_keypair(
    dir_or_prefix: str | os.PathLike[str],
    name: str | None = None,
    *,
    keypair: tuple[str, str] | None = None,
    overwrite: bool = False,
) -> KeyPairFiles:
    """Write ``<name>.key`` (0644) and ``<name>.key_secret`` (0600), return their paths.

    ``dir_or_prefix`` is a directory when ``name`` is given (created if missing), otherwise a
    path prefix such as ``keys/n1`` whose last component is the name. ``keypair`` defaults to a
    fresh :func:`generate_keypair`. The secret file is written first, so a failure never leaves
    a public key without its secret.
    """
    base = Path(dir_or_prefix)
    if name is None:
        directory, name = base.parent, base.name
    else:
        directory = base
    if not _NAME_RE.match(name):
        raise KeyFileError(
            f"key name {name!r} must be 1-128 characters of letters, digits, '.', '_' or '-',"
            " starting with a letter or digit"
        )
    public, secret = keypair if keypair is not None else generate_keypair()
    if not is_z85_key(public) or not is_z85_key(secret):
        raise KeyFileError("keypair must be two Z85 keys of 40 characters")
    if public_key_of(secret) != public:
        raise KeyFileError("keypair's public key does not belong to its secret key")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KeyFileError(f"cannot create directory {directory}: {exc.strerror}") from None
    public_file = directory / f"{name}.key"
    secret_file = directory / f"{name}.key_secret"
    if not overwrite:
        for existing in (public_file, secret_file):
            if existing.exists():
                raise KeyFileError(
                    f"{existing} already exists; refusing to overwrite a key file"
                    " (use --force to replace it)"
                )
    _write_file(
        secret_file, _certificate(_SECRET_BANNER, public, secret, name), 0o600, overwrite=overwrite
    )
    _write_file(
        public_file, _certificate(_PUBLIC_BANNER, public, None, name), 0o644, overwrite=overwrite
    )
    return KeyPairFiles(public_file=public_file, secret_file=secret_file, public_key=public)


def load_keypair(path: str | os.PathLike[str]) -> tuple[str, str | None]:
    """Read ``(public, secret)`` from a certificate file; ``secret`` is None for a ``.key`` file.

    ``path`` may also be the prefix ``keys/n1``: then ``keys/n1.key_secret`` is read if it
    exists, else ``keys/n1.key``. Parsing is pyzmq's own ``zmq.auth.load_certificate``; this
    function adds the checks it lacks (Z85 shape, and that the secret matches the public key).
    """
    file = Path(path)
    if not file.name:
        raise KeyFileError(f"key file path {str(path)!r} names no file")
    if not file.is_file():
        for suffix in (".key_secret", ".key"):
            candidate = file.with_name(file.name + suffix)
            if candidate.is_file():
                file = candidate
                break
        else:
            raise KeyFileError(f"key file {path} does not exist")
    try:
        public_raw, secret_raw = zmq.auth.load_certificate(file)
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot read key file {file}: {exc}") from None
    try:
        public = public_raw.decode("ascii")
        secret = None if secret_raw is None else secret_raw.decode("ascii")
    except UnicodeDecodeError:
        raise KeyFileError(f"key file {file} holds non-ASCII keys") from None
    if not is_z85_key(public):
        raise KeyFileError(f"key file {file}: public-key is not a 40-character Z85 key")
    if secret is not None:
        if not is_z85_key(secret):
            raise KeyFileError(f"key file {file}: secret-key is not a 40-character Z85 key")
        if public_key_of(secret) != public:
            raise KeyFileError(f"key file {file}: public-key does not belong to secret-key")
    return public, secret


def secret_file_too_open(path: str | os.PathLike[str]) -> bool:
    """True if group or others may read or write ``path`` (ssh refuses such keys; we warn)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return bool(stat.S_IMODE(mode) & 0o077)


def cmd_keygen(
    out: str | os.PathLike[str],
    name: str,
    *,
    overwrite: bool = False,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """``python -m ray_hyparview.agent keygen``: write a key pair into directory ``out``.

    Prints the files written and the strategy snippets that use them. Returns the process exit
    status: 0 on success, 1 if the files could not be written (or exist, without ``overwrite``).
    """
    stdout = stdout if stdout is not None else sys.stdout
    stderr = stderr if stderr is not None else sys.stderr
    try:
        files = write_keypair(out, name, overwrite=overwrite)
    except KeyFileError as exc:
        print(f"keygen: {exc}", file=stderr)
        return 1
    secret_path = files.secret_file.resolve()
    print(f"wrote public key  {files.public_file} (mode 0644)", file=stdout)
    print(f"wrote secret key  {files.secret_file} (mode 0600, keep it on this node)", file=stdout)
    print(f"public key: {files.public_key}", file=stdout)
    print("", file=stdout)
    print("# in this node's strategy file:", file=stdout)
    print("[security]", file=stdout)
    print(f"secret_key_file = {json.dumps(str(secret_path))}", file=stdout)  # a TOML string
    print("", file=stdout)
    print("# in the [nodes] table every node shares:", file=stdout)
    print(
        f'{name} = {{ endpoint = "tcp://HOST:7946", public_key = "{files.public_key}" }}',
        file=stdout,
    )
    return 0
