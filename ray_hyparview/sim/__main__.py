"""``python -m ray_hyparview.sim``: see :mod:`ray_hyparview.sim.cli`."""

from ray_hyparview.sim.cli import main

raise SystemExit(main())
