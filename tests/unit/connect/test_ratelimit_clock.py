"""The cross-process limiter maps the database's clock to its own monotonic clock and back; every
mapping must err on the safe side: a time others must respect only moves later, a deadline we must
stop before only moves earlier (``connect/ratelimit_leases.py``)."""

from __future__ import annotations

import pytest

from amobridge.connect.ratelimit_leases import DRIFT, ClockMap, Reading

# The database's clock runs 1000 s ahead of the local monotonic clock. A statement sent at local
# 10.0 and answered at 10.004 read the database at some local moment in between.
OFFSET = 1000.0


def reading(sent: float, width: float, ran_at: float) -> Reading:
    return Reading(db=ran_at + OFFSET, sent=sent, received=sent + width)


@pytest.mark.parametrize("ran_at", [10.0, 10.001, 10.004])
def test_mappings_are_safe_wherever_the_statement_ran(ran_at: float) -> None:
    clock = ClockMap()
    clock.observe(reading(10.0, 0.004, ran_at))
    now = 10.004
    # a slot that ended at local 9.5 is handed on no earlier than it really ended
    assert clock.db_latest(9.5, now) >= 9.5 + OFFSET
    # a database time is taken to come no earlier than it really comes
    assert clock.local_latest(2000.0, now) >= 2000.0 - OFFSET
    # and neither is off by more than the round trip
    assert clock.db_latest(9.5, now) - (9.5 + OFFSET) <= 0.004 + 1e-9
    assert clock.local_latest(2000.0, now) - (2000.0 - OFFSET) <= 0.004 + 1e-9


def test_the_narrowest_reading_wins_and_ages_with_the_drift() -> None:
    clock = ClockMap()
    clock.observe(reading(10.0, 0.050, 10.049))  # a slow round trip
    clock.observe(reading(11.0, 0.001, 11.0))  # a fast one replaces it
    assert clock.db_latest(11.0, 11.001) == pytest.approx(11.0 + OFFSET, abs=0.0011)
    clock.observe(reading(12.0, 0.020, 12.0))  # slower, and the fast one is still precise
    assert clock.db_latest(12.0, 12.02) == pytest.approx(12.0 + OFFSET, abs=0.0011 + 1.1 * DRIFT)
    # a minute later the old reading's possible drift exceeds a fresh 5 ms round trip
    clock.observe(reading(71.0, 0.005, 71.0))
    assert clock.db_latest(71.0, 71.005) == pytest.approx(71.0 + OFFSET, abs=0.0051)
    # the bias covers the drift allowance since the reading
    assert clock.db_latest(81.0, 81.0) >= 81.0 + OFFSET + (81.0 - 71.005) * DRIFT - 1e-9


def test_no_reading_no_mapping() -> None:
    clock = ClockMap()
    assert not clock.ready
    with pytest.raises(AssertionError):
        clock.db_latest(1.0, 1.0)
