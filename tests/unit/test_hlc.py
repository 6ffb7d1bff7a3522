"""The hybrid logical clock that versions a site's changes (docs/federation.md)."""

from __future__ import annotations

import pytest

from iceprod_server.federation import hlc


class FakeTime:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_versions_grow_even_when_the_wall_clock_stands_still_or_goes_back() -> None:
    t = FakeTime(1000.0)
    clock = hlc.HybridClock("site-a", t)
    first = clock.tick()
    second = clock.tick()
    t.now = 900.0  # the clock was set back
    third = clock.tick()
    assert first < second < third
    assert hlc.parse(third)[2] == "site-a"


def test_after_seeing_a_version_from_a_clock_ahead_every_new_version_is_newer() -> None:
    ahead = hlc.HybridClock("site-a", FakeTime(1000.0 + 3600))
    behind = hlc.HybridClock("master", FakeTime(1000.0))
    seen = ahead.tick()
    behind.observe(seen)
    assert behind.tick() > seen
    # and the clock ahead, seeing that, still moves forward
    ahead.observe(behind.last)
    assert ahead.tick() > behind.last


def test_versions_compare_as_strings_in_time_order() -> None:
    assert hlc.encode(999, 5, "b") < hlc.encode(1000, 0, "a")
    assert hlc.encode(1000, 9, "a") < hlc.encode(1000, 10, "a")
    assert hlc.wall_seconds(hlc.encode(1500, 0, "x")) == 1.5


@pytest.mark.parametrize("bad", ["", "yesterday", "1.2.3", "0000000001000.000000.",
                                 "000000000100x.000000.a", 12, None, "9" * 70])
def test_anything_else_is_not_a_version(bad: object) -> None:
    with pytest.raises(ValueError):
        hlc.parse(bad)  # type: ignore[arg-type]
