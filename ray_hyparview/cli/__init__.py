"""The command line: one argparse tree for ``run``, ``status``, ``check``, ``keygen`` and the
rest (see :mod:`ray_hyparview.cli.main`)."""

from __future__ import annotations

from ray_hyparview.cli.main import main

__all__ = ["main"]
