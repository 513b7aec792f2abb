"""The sandbox's three counting rules for "N requests per second" (``rate_rule``), on the limiter
itself with an injected frozen clock: what each admits and refuses, and why ``sliding`` is the
default (whatever it admits, the other two admit too)."""

from __future__ import annotations

import random
from typing import get_args

import pytest

from amobridge.sandbox import Clock, SandboxConfig
from amobridge.sandbox.config import RateRule
from amobridge.sandbox.ratelimit import RateLimiter

N = 7
START = 1_700_000_000.0
"""A whole second of sandbox time, so fixed windows start exactly at it."""
RULES: tuple[RateRule, ...] = get_args(RateRule)


class Limited:
    """One limiter on a frozen clock, asked as one integration in one account."""

    def __init__(self, rule: RateRule, *, account_rps_cap: int | None = None) -> None:
        self.clock = Clock(start=START, frozen=True)
        self.limiter = RateLimiter(self.clock)
        self.config = SandboxConfig(
            rate_rule=rule,
            rate_limit_rps=N,
            account_rps_cap=account_rps_cap,
            ban_after_violations=10**6,  # these tests are about admission, not bans
        )

    def at(self, offset: float) -> Limited:
        """Move the clock to ``START + offset`` (forward only)."""
        self.clock.advance(START + offset - self.clock.now())
        return self

    def ask(self, count: int = 1, *, client: str = "c1") -> list[bool]:
        return [
            self.limiter.check(
                self.config, account_id=1, client_id=client, client_ip="127.0.0.1"
            ).allowed
            for _ in range(count)
        ]

    def admitted(self, count: int, *, client: str = "c1") -> int:
        return sum(self.ask(count, client=client))


def test_sliding_is_the_default() -> None:
    assert SandboxConfig().rate_rule == "sliding"


def test_sliding_never_admits_more_than_n_in_one_second_across_a_boundary() -> None:
    limited = Limited("sliding").at(0.9)
    assert limited.admitted(N + 1) == N
    assert limited.at(1.1).admitted(N) == 0  # a new whole second, but the same last second
    assert limited.at(1.85).admitted(N) == 0
    assert limited.at(1.95).admitted(N + 1) == N  # the first N are more than 1 s old


def test_fixed_admits_2n_across_a_boundary_then_waits_for_the_next_second() -> None:
    limited = Limited("fixed").at(0.9)
    assert limited.admitted(N + 1) == N
    assert limited.at(1.1).admitted(N + 1) == N  # 2N within 0.2 s
    assert limited.at(1.95).admitted(1) == 0  # still second 1
    assert limited.at(2.05).admitted(N + 1) == N


def test_token_bucket_admits_a_burst_of_n_then_one_per_1_over_n_seconds() -> None:
    limited = Limited("token_bucket")
    assert limited.admitted(N + 1) == N
    for step in range(1, 2 * N + 1):
        assert limited.at(step / N).ask(2) == [True, False], f"step {step}"


def test_token_bucket_holds_at_most_n_tokens() -> None:
    limited = Limited("token_bucket")
    limited.ask(N)
    assert limited.at(60).admitted(3 * N) == N


def test_token_bucket_refills_partly() -> None:
    limited = Limited("token_bucket")
    limited.ask(N)
    assert limited.at(0.5).admitted(N) == 3  # 3.5 tokens: three whole ones


@pytest.mark.parametrize("rule", RULES)
def test_refused_requests_take_nothing(rule: RateRule) -> None:
    """A refused request is answered without work: a flood of 429s does not push the next
    admission further away under any rule."""
    hammered, quiet = Limited(rule), Limited(rule)
    for limited in (hammered, quiet):
        limited.ask(N)
    assert hammered.at(0.1).admitted(100) == 0
    for limited in (hammered, quiet):
        limited.at(1.05)
    assert hammered.admitted(N) == quiet.admitted(N) > 0


@pytest.mark.parametrize("rule", RULES)
def test_each_integration_counts_alone(rule: RateRule) -> None:
    limited = Limited(rule)
    assert limited.admitted(N + 1, client="c1") == N
    assert limited.admitted(N + 1, client="c2") == N


@pytest.mark.parametrize(("rule", "expected"), [("sliding", 0), ("fixed", 10), ("token_bucket", 2)])
def test_account_cap_counts_by_the_same_rule(rule: RateRule, expected: int) -> None:
    """The account-wide cap (10 here) over two integrations: 10 at 0.9 s, then at 1.1 s the
    fixed window admits 10 more, the bucket has refilled 2 tokens, the sliding window none."""
    limited = Limited(rule, account_rps_cap=10)
    limited.at(0.9)
    assert limited.admitted(5, client="c1") + limited.admitted(5, client="c2") == 10
    limited.at(1.1)
    assert limited.admitted(5, client="c1") + limited.admitted(5, client="c2") == expected


def test_a_rule_changed_on_a_running_sandbox_starts_afresh() -> None:
    limited = Limited("sliding")
    limited.ask(N)
    limited.config = limited.config.updated({"rate_rule": "fixed"})
    assert limited.admitted(N + 1) == N


@pytest.mark.parametrize("seed", range(5))
def test_what_sliding_admits_every_rule_admits(seed: int) -> None:
    """Why ``sliding`` is the default: a client paced so the strict sliding window never refuses
    it is never refused by a fixed window or a token bucket either."""
    rng = random.Random(seed)
    offsets, now = [], 0.0
    for _ in range(400):
        now += rng.choice((0.0, 0.0, rng.uniform(0, 0.05), rng.uniform(0, 0.4)))
        offsets.append(now)
    sliding = Limited("sliding")
    paced = [t for t in offsets if sliding.at(t).ask() == [True]]
    assert N * 10 < len(paced) < len(offsets)  # the sequence did hit the limit
    for rule in ("fixed", "token_bucket"):
        other = Limited(rule)
        refused = [t for t in paced if other.at(t).ask() != [True]]
        assert not refused, f"{rule} refused what sliding admitted: {refused[:3]}"
