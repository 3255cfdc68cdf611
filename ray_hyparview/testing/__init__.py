"""Harnesses that the tests and the benchmarks share: agents in child processes
(:mod:`~ray_hyparview.testing.agent_host`), wired pure cores
(:mod:`~ray_hyparview.testing.wiring`) and waiting on conditions with deadlines
(:mod:`~ray_hyparview.testing.conditions`). Not part of the public API."""
