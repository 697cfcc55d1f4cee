"""The stand-ins' load: exact shares per target, and every payload in turn for each target, across rounds."""

from __future__ import annotations

from collections import Counter

from modeldeploy_localcluster.standins import Rotation

ROWS = [{"row": 0}, {"row": 1}, {"row": 2}]


def rounds(rotation: Rotation, weights: dict[str, float], count: int, size: int) -> list[tuple[str, int]]:
    """`count` rounds of `size` requests, as WeightedLoad sends them, one round a second."""
    return [
        (name, payload["row"])
        for _ in range(count)
        for name, payload in (rotation.choose(weights) for _ in range(size))
    ]


def test_a_small_share_gets_every_payload_in_turn_across_rounds() -> None:
    sent = rounds(Rotation(ROWS), {"stable": 90, "canary": 10}, count=30, size=10)
    canary = [row for name, row in sent if name == "canary"]
    assert len(canary) == 30
    assert canary == [0, 1, 2] * 10
    assert Counter(row for name, row in sent if name == "stable") == {0: 90, 1: 90, 2: 90}


def test_a_share_that_divides_the_rows_still_sees_them_all() -> None:
    # A third of the traffic: every third request, which a single cycle of three rows would give the
    # canary as the same row every time.
    sent = rounds(Rotation(ROWS), {"stable": 200 / 3, "canary": 100 / 3}, count=9, size=3)
    assert Counter(row for name, row in sent if name == "canary") == {0: 3, 1: 3, 2: 3}


def test_a_target_that_goes_away_takes_its_credit_with_it() -> None:
    rotation = Rotation(ROWS)
    rounds(rotation, {"stable": 50, "canary": 50}, count=1, size=3)
    assert [name for name, _ in rounds(rotation, {"stable": 100}, count=1, size=5)] == ["stable"] * 5
    assert set(rotation.credit) == {"stable"}
