"""Incarnations grow across restarts, even when the clock steps back (issue 9, finding 8)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ray_hyparview.agent.node import INCARNATION_FILE_ENV, Agent, next_incarnation
from ray_hyparview.config.strategy import Strategy
from ray_hyparview.protocol.peer import Peer


def test_without_a_file_the_clock_decides() -> None:
    assert next_incarnation(1_000) == 1_000


def test_a_clock_stepped_back_still_gives_a_larger_incarnation(tmp_path: Path) -> None:
    state = tmp_path / "incarnation"
    first = next_incarnation(5_000_000, state)
    assert first == 5_000_000
    # Restarted after the clock went back an hour: the new life must still look newer.
    second = next_incarnation(5_000_000 - 3_600_000_000, state)
    assert second == first + 1
    third = next_incarnation(9_000_000, state)
    assert third == 9_000_000
    assert int(state.read_text()) == third


@pytest.mark.parametrize("content", ["garbage", "", "-5", str(2**63 - 1), str(2**70)])
def test_a_bad_or_extreme_file_is_not_trusted(tmp_path: Path, content: str) -> None:
    state = tmp_path / "incarnation"
    state.write_text(content)
    assert next_incarnation(1_000, state) == 1_000
    assert int(state.read_text()) == 1_000


def test_the_agent_takes_its_incarnation_from_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "incarnation"
    state.write_text(str(2**62))
    monkeypatch.setenv(INCARNATION_FILE_ENV, str(state))
    strategy = Strategy(local_peer=Peer("n1", "mem://n1"), transport="memory")
    agent = Agent(strategy)
    assert agent.incarnation == 2**62 + 1


def test_the_incarnation_rule_is_one_function_for_every_driver() -> None:
    """limits.next_incarnation is what the agent's file, the Ray plugin's GCS record and the
    fuzzer's restarts all apply: the clock, but above the last life, within the wire."""
    from ray_hyparview.protocol import limits

    assert limits.next_incarnation(1_000) == 1_000
    assert limits.next_incarnation(1_000, last=5_000) == 5_001  # the clock stepped back
    assert limits.next_incarnation(9_000, last=5_000) == 9_000
    assert limits.next_incarnation(2**70) == limits.MAX_INCARNATION
    assert limits.next_incarnation(1_000, last=2**63) == 1_000  # an untrusted last is ignored
    assert limits.next_incarnation(0) == 1
