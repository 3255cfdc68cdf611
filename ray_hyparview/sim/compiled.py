"""Run the simulator on a copy of the protocol core and event loop compiled with mypyc.

Theory of operation
-------------------
The code is typed to ``mypy --strict``, so mypyc (the compiler that ships with mypy, used to
build mypy and black) can turn the core (``protocol/hyparview.py`` and the messages, peers and
config it touches) and the event loop (``sim/engine.py``) into C extensions from the very same
source: no second implementation, and the same seed gives the same run event for event (a slow
test compares the two). At 10,000 nodes the whole run takes a half to three quarters of the
time (benchmarks/README.md).

mypyc compiles only the methods a source file spells out: what ``dataclass`` generates at import
(``__init__`` above all) stays interpreted, and a call through a ``Protocol`` or a table of
functions is a generic Python call. That is why the messages write their ``__init__`` out and
``HyParView.receive`` dispatches with ``match``.

:func:`build` copies the package source to a cache directory named after a hash of every
``.py`` file, the Python version and the mypy version, and compiles there once (about three
minutes on two cores; needs ``pip install 'ray-hyparview[fast]'`` and a C compiler). A stale
build is never used: any change to the source makes a new directory. :func:`run` starts
``python -m ray_hyparview.sim`` in a child process that imports the package from that copy.

Only single runs are compiled. A sweep copies the simulation with :mod:`pickle`, which mypyc's
native classes do not support as they stand.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = [
    "COMPILED_MODULES",
    "CompileError",
    "build",
    "cache_root",
    "run",
    "running_compiled",
    "source_hash",
]

COMPILED_MODULES = (
    "ray_hyparview/protocol/hyparview.py",
    "ray_hyparview/protocol/merge.py",
    "ray_hyparview/protocol/messages.py",
    "ray_hyparview/protocol/peer.py",
    "ray_hyparview/protocol/config.py",
    "ray_hyparview/sim/engine.py",
)
"""What mypyc compiles: the core's state machine and what it touches on every event (its
messages, peers and config) and the event loop. Compiling ``sim/metrics.py`` and
``sim/scenario.py`` as well measured no faster."""

_MARKER = "HYPARVIEW_SIM_COMPILED"


class CompileError(RuntimeError):
    """mypyc is missing or failed; the message says which and where its log is."""


def cache_root() -> Path:
    """``$HYPARVIEW_SIM_CACHE``, else ``$XDG_CACHE_HOME/ray_hyparview``, else
    ``~/.cache/ray_hyparview``."""
    explicit = os.environ.get("HYPARVIEW_SIM_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ray_hyparview"


def _package_dir() -> Path:
    return Path(__file__).resolve().parents[1]


def _mypy_version() -> str:
    try:
        from mypy.version import __version__
    except ImportError as exc:
        raise CompileError(
            "--compiled needs mypy, which ships mypyc: pip install 'ray-hyparview[fast]'"
        ) from exc
    return __version__


def source_hash() -> str:
    """Hash of every ``.py`` file of the package, the Python version and the mypy version."""
    digest = hashlib.sha256()
    digest.update(sys.version.encode())
    digest.update(_mypy_version().encode())
    package = _package_dir()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def build(say: Callable[[str], None] = print) -> Path:
    """Return a directory whose ``ray_hyparview`` has the core compiled; compile if needed."""
    target = cache_root() / f"mypyc-{source_hash()}"
    if (target / "ok").exists():
        return target
    say(f"compiling {', '.join(COMPILED_MODULES)} with mypyc into {target}")
    say("(once per version of the source; about three minutes on two cores) ...")
    work = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(
        _package_dir(),
        work / "ray_hyparview",
        ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyd"),
    )
    log = work / "mypyc.log"
    with log.open("w") as out:
        done = subprocess.run(
            [sys.executable, "-m", "mypyc", *COMPILED_MODULES],
            cwd=work,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise CompileError(f"mypyc failed (exit {done.returncode}); log: {log}\n{tail}")
    shutil.rmtree(work / "build", ignore_errors=True)
    (work / "ok").write_text("compiled\n")
    if target.exists():  # another process finished first: keep its copy
        shutil.rmtree(work, ignore_errors=True)
    else:
        work.rename(target)
    return target


def run(argv: Sequence[str], say: Callable[[str], None] = print) -> int:
    """Run ``python -m ray_hyparview.sim ARGV`` on the compiled core; return its exit code."""
    root = build(say)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env[_MARKER] = "1"
    # -P: do not put the working directory first on sys.path, or a source checkout there would
    # shadow the compiled copy.
    cmd = [sys.executable, "-P", "-m", "ray_hyparview.sim", *argv]
    return subprocess.run(cmd, env=env, check=False).returncode


def running_compiled() -> bool:
    """True in a child started by :func:`run` whose core really is the compiled one."""
    from ray_hyparview.protocol import hyparview

    return os.environ.get(_MARKER) == "1" and not hyparview.__file__.endswith(".py")
