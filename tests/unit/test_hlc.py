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


def test_a_million_versions_in_one_millisecond_all_parse_and_grow() -> None:
    # a seventh counter digit would make a version that no clock can read any more
    t = FakeTime(1000.0)
    clock = hlc.HybridClock("master", t)
    clock.observe(hlc.encode(1_000_000, 999_990, "site-a"))
    before = clock.last
    versions = [clock.tick() for _ in range(20)]
    assert all(hlc.parse(v)[2] == "master" for v in versions)
    assert versions == sorted(versions) and len(set(versions)) == 20
    assert versions[0] > before
    # the counter carried into the time: one millisecond later, counting from 0 again
    assert hlc.parse(versions[-1])[:2] == (1_000_001, 10)
    ticks = hlc.HybridClock("site-b", FakeTime(2000.0))
    last = ""
    for _ in range(1_000_001):
        version = ticks.tick()
        assert version > last
        last = version
    assert hlc.parse(last)[:2] == (2_000_001, 0)


def test_rebase_goes_back_to_the_wall_clock_but_not_below_a_floor() -> None:
    t = FakeTime(1000.0)
    clock = hlc.HybridClock("site-a", t)
    clock.observe(hlc.encode(1000_000 + 3_600_000, 7, "site-a"))  # an hour ahead
    clock.rebase()
    assert hlc.parse(clock.tick())[0] == 1_000_000
    clock.rebase(hlc.encode(1_000_500, 3, "master"))
    assert hlc.parse(clock.tick())[:2] == (1_000_500, 4)
