"""Regression tests for the membership findings of issue 9 (5: repair rounds that never end,
6 and 7: partitions that merge by themselves without a storm, 8: the lost set and
incarnations). Each failed on the code before its fix."""

from __future__ import annotations

import random

from ray_hyparview.protocol.config import HyParViewConfig
from ray_hyparview.protocol.hyparview import HyParView
from ray_hyparview.protocol.messages import (
    Disconnect,
    Join,
    Message,
    Neighbor,
    NeighborReply,
    Send,
)
from ray_hyparview.protocol.peer import Peer
from ray_hyparview.sim.scenario import Experiment, live_adjacency, prepare
from tests.wiring import peer

X, A = peer("x"), peer("a")
PASSIVE = [peer(f"p{i}") for i in range(7)]


def _sends(actions: list[object]) -> list[Send]:
    return [a for a in actions if isinstance(a, Send)]


def _deliver_to_x(x: HyParView, sender: Peer, message: Message, now: float) -> list[Send]:
    return _sends(list(x.receive(sender.id, message, now=now)))


# ------------------------------------------------------------------ finding 5: rounds end


def test_a_round_whose_last_answer_is_an_acceptance_ends_and_the_node_refills() -> None:
    """Node at 1 link (min 2), 7 live passive ids: it must be back at 2 links within 5 s.

    The round is made to end on an acceptance that leaves the view short (every other ask
    refused); then the one other link goes (the peer restarted, seen through its DISCONNECT).
    Before the fix the round stayed open for good and the node sat at 1 link."""
    cfg = HyParViewConfig(
        keepalive_interval=None, shuffle_interval=10.0, min_active_size=2, active_view_size=5
    )
    x = HyParView(X, cfg, rng=random.Random(5), incarnation=1)
    x.join([], now=0.0)
    # a links to x through a JOIN.
    x.receive(A.id, Join(sender=A, incarnation=1), now=0.0)
    assert list(x.active_ids) == ["a"]
    asked = [s.to for s in _sends(list(x.learn(PASSIVE, now=0.0)))]
    assert len(asked) == 4
    last = asked[0]
    outstanding = list(asked[1:])
    while outstanding:  # every other ask is refused; refusals below the minimum ask more
        target = outstanding.pop()
        refusal = NeighborReply(sender=target, incarnation=1, accepted=False)
        for s in _deliver_to_x(x, target, refusal, 0.1):
            if isinstance(s.message, Neighbor):
                outstanding.append(s.to)
    _deliver_to_x(x, last, NeighborReply(sender=last, incarnation=1, accepted=True), 0.2)
    assert sorted(x.active_ids) == sorted(["a", last.id])
    # a restarted: its new life answers x's traffic with a DISCONNECT of a higher incarnation.
    asks = _deliver_to_x(x, A, Disconnect(sender=A, incarnation=2), 0.3)
    assert len(x.active_ids) == 1
    # From now on every passive peer accepts.
    now = 0.3
    while now < 5.0 and len(x.active_ids) < 2:
        for s in asks:
            if isinstance(s.message, Neighbor | Join):
                accept = NeighborReply(sender=s.to, incarnation=3, accepted=True)
                x.receive(s.to.id, accept, now=now)
        deadline = x.next_deadline()
        assert deadline is not None
        now = max(now, deadline)
        asks = _sends(list(x.on_timer(now=now)))
    assert len(x.active_ids) >= 2, f"still at {len(x.active_ids)} link(s) at t={now:.1f}"


def test_no_survivor_of_a_half_crash_is_left_short_with_its_round_open() -> None:
    """400 nodes, 50% crash, 20 cycles: no survivor below the minimum while it has live
    passive ids, and no survivor short of a full view with a round open and nothing asked
    (the state that blocked every refill: 18 of 500 survivors at 1,000 nodes before)."""
    experiment = Experiment(nodes=400, seed=0, cycles=4)
    sim, rng = prepare(experiment)
    live = sim.alive_ids
    sim.crash(rng.sample(live, len(live) // 2))
    sim.run_for(20 * experiment.config.shuffle_interval)
    alive = set(sim.alive_ids)
    below: list[str] = []
    blocked: list[str] = []
    for node_id in sorted(alive):
        core = sim.node(node_id)
        assert isinstance(core, HyParView)
        short = len(core.active_ids) < core.config.min_active_size
        if short and any(p.id in alive for p in core.passive_view):
            below.append(node_id)
        full = len(core.active_ids) >= core.config.active_view_size
        if not full and core.repairing and not core.asking:
            blocked.append(node_id)
    assert below == []
    assert blocked == []
    assert all(live_adjacency(sim).values())
