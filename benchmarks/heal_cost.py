"""What healing a partition costs: evictions, FORWARD_JOIN walks and merge links per heal.

    PYTHONPATH=. python benchmarks/heal_cost.py         # 40 nodes, 60 s split, seeds 0-2
    python benchmarks/heal_cost.py --split 900 --lost-retention 20   # longer than retention

Builds the overlay in the simulator (the paper's parameters, keepalives off), cuts it in two
halves for ``--split`` seconds, heals, and counts over the ``--after`` seconds that follow:
evictions (``peer_down.evicted``), FORWARD_JOINs sent, merge links, the most merge evictions
of any one node, and when the overlay was one component again. Issue 9, finding 7.
"""

from __future__ import annotations

import argparse

from ray_hyparview.protocol.config import HyParViewConfig
from ray_hyparview.protocol.hyparview import HyParView
from ray_hyparview.sim import metrics
from ray_hyparview.sim.scenario import Experiment, live_adjacency, prepare


def heal_cost(seed: int, nodes: int, split: float, after: float, retention: float) -> str:
    config = HyParViewConfig(keepalive_interval=None, lost_retention=retention)
    sim, _ = prepare(Experiment(nodes=nodes, seed=seed, cycles=3, config=config))
    ids = sim.alive_ids
    links = sum(len(peers) for peers in live_adjacency(sim).values()) // 2
    sim.partition([ids[: nodes // 2]])
    sim.run_for(split)

    def merge_evictions() -> dict[str, int]:
        cores = {i: sim.node(i) for i in ids}
        return {
            i: c.counters["merge.evicted"] for i, c in cores.items() if isinstance(c, HyParView)
        }

    before, before_each = sim.core_counters(), merge_evictions()
    sim.heal()
    merged_after = None
    for second in range(1, int(after) + 1):
        sim.run_for(1.0)
        if merged_after is None and metrics.largest_component_fraction(live_adjacency(sim)) == 1:
            merged_after = second
    cost = sim.core_counters() - before
    most = max(n - before_each.get(i, 0) for i, n in merge_evictions().items())
    return (
        f"seed {seed}: {links} links; evictions {cost['peer_down.evicted']},"
        f" FORWARD_JOINs {cost['sent.ForwardJoin']}, merge links {cost['merge.linked']},"
        f" most merge evictions of one node {most}, one component after {merged_after} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=40)
    parser.add_argument("--split", type=float, default=60.0, help="seconds apart")
    parser.add_argument("--after", type=float, default=120.0, help="seconds counted after heal")
    parser.add_argument("--lost-retention", type=float, default=600.0)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    for seed in range(args.seeds):
        print(heal_cost(seed, args.nodes, args.split, args.after, args.lost_retention))


if __name__ == "__main__":
    main()
