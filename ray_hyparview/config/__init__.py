"""What an operator writes (a TOML file, ``RAY_HYPARVIEW_*`` variables, flags), checked and
turned into the agent's values: :mod:`~ray_hyparview.config.strategy` and CURVE key files
(:mod:`~ray_hyparview.config.keys`)."""

from __future__ import annotations

from ray_hyparview.config.strategy import Security, Strategy, StrategyError, apply_env

__all__ = ["Security", "Strategy", "StrategyError", "apply_env"]
