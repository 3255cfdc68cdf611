"""``python -m ray_hyparview.agent``: the standalone agent's command line.

An entry point, not a layer: it sits on top of everything and only hands over to
:func:`ray_hyparview.cli.main`, so the agent package itself never imports the CLI.
"""

from __future__ import annotations

from ray_hyparview.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
