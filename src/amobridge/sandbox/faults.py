"""Fault injection: make the sandbox fail the way amoCRM and the network fail.

A rule matches requests by method, path prefix, query parameters (``{"page": "2"}``: each named
parameter has that value), account and client, fires for the next ``count``
matches (or forever) with a ``probability``, and does one thing:

- ``error``: answer ``status`` (500 by default; 502/504 as nginx HTML pages, others as JSON problems);
- ``timeout``: hold the request ``delay`` seconds (30 by default), then answer 504;
- ``slow``: hold the request ``delay`` seconds, then serve it normally;
- ``drop``: close the connection without a complete response;
- ``rate_limit``: answer 429 exactly as the limiter does (counts towards a ban);
- ``revoke``: revoke the caller's grant (its tokens stop working), then answer 401.

``phase: "after"`` applies ``error``, ``timeout`` and ``drop`` after the request was served, so a
create *happened* but the client never learns its id: the ambiguous write.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

FaultKind = Literal["error", "timeout", "slow", "drop", "rate_limit", "revoke"]
Phase = Literal["before", "after"]
KINDS: tuple[str, ...] = ("error", "timeout", "slow", "drop", "rate_limit", "revoke")
_AFTER_KINDS = ("error", "timeout", "drop", "slow")
_FIELDS = {
    "kind",
    "status",
    "delay",
    "method",
    "path_prefix",
    "account_id",
    "client_id",
    "query",
    "count",
    "probability",
    "phase",
}


class FaultSpecError(ValueError):
    """A fault rule that cannot work; the message says which field and why."""


@dataclass
class FaultRule:
    id: int
    kind: FaultKind
    status: int = 500
    delay: float = 30.0
    method: str | None = None
    path_prefix: str | None = None
    account_id: int | None = None
    client_id: str | None = None
    query: dict[str, str] | None = None
    count: int | None = None
    probability: float = 1.0
    phase: Phase = "before"
    fired: int = 0

    def public(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def exhausted(self) -> bool:
        return self.count is not None and self.fired >= self.count


def _number(data: dict[str, Any], name: str, default: float) -> float:
    value = data.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FaultSpecError(f"{name} must be a number")
    return float(value)


class FaultInjector:
    def __init__(self, seed: int | None = None) -> None:
        self._rules: list[FaultRule] = []
        self._ids = itertools.count(1)
        self._random = random.Random(seed)  # noqa: S311 - chaos, not cryptography

    def reset(self) -> None:
        self._rules.clear()

    def rules(self) -> list[FaultRule]:
        return list(self._rules)

    def add(self, spec: Any) -> FaultRule:
        if not isinstance(spec, dict):
            raise FaultSpecError("a fault is a JSON object")
        unknown = set(spec) - _FIELDS
        if unknown:
            raise FaultSpecError(f"unknown fault fields: {', '.join(sorted(unknown))}")
        kind = spec.get("kind")
        if kind not in KINDS:
            raise FaultSpecError(f"kind must be one of {', '.join(KINDS)}")
        status = spec.get("status", 500)
        if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
            raise FaultSpecError("status must be an integer from 400 to 599")
        delay = _number(spec, "delay", 30.0 if kind == "timeout" else 1.0)
        if not 0 <= delay <= 600:
            raise FaultSpecError("delay must be between 0 and 600 seconds")
        probability = _number(spec, "probability", 1.0)
        if not 0 <= probability <= 1:
            raise FaultSpecError("probability must be between 0 and 1")
        count = spec.get("count")
        if count is not None and (
            isinstance(count, bool) or not isinstance(count, int) or count < 1
        ):
            raise FaultSpecError("count must be a positive integer")
        account_id = spec.get("account_id")
        if account_id is not None and (
            isinstance(account_id, bool) or not isinstance(account_id, int)
        ):
            raise FaultSpecError("account_id must be an integer")
        for name in ("method", "path_prefix", "client_id"):
            if spec.get(name) is not None and not isinstance(spec[name], str):
                raise FaultSpecError(f"{name} must be a string")
        query = spec.get("query")
        if query is not None and (
            not isinstance(query, dict)
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in query.items())
        ):
            raise FaultSpecError('query must be an object of strings, e.g. {"page": "2"}')
        phase = spec.get("phase", "before")
        if phase not in ("before", "after"):
            raise FaultSpecError("phase must be 'before' or 'after'")
        if phase == "after" and kind not in _AFTER_KINDS:
            raise FaultSpecError(f"phase 'after' works with {', '.join(_AFTER_KINDS)}")
        method = spec.get("method")
        rule = FaultRule(
            id=next(self._ids),
            kind=kind,
            status=status,
            delay=delay,
            method=method.upper() if isinstance(method, str) else None,
            path_prefix=spec.get("path_prefix"),
            account_id=account_id,
            client_id=spec.get("client_id"),
            query=dict(query) if query else None,
            count=count,
            probability=probability,
            phase=phase,
        )
        self._rules.append(rule)
        return rule

    def remove(self, rule_id: int) -> bool:
        before = len(self._rules)
        self._rules = [r for r in self._rules if r.id != rule_id]
        return len(self._rules) != before

    def match(
        self,
        phase: Phase,
        *,
        method: str,
        path: str,
        account_id: int | None,
        client_id: str | None,
        query: Mapping[str, str] | None = None,
    ) -> FaultRule | None:
        """The first live rule for this request and phase; counts it as fired."""
        if not self._rules:
            return None
        for rule in self._rules:
            if rule.phase != phase or rule.exhausted:
                continue
            if rule.method is not None and rule.method != method:
                continue
            if rule.path_prefix is not None and not path.startswith(rule.path_prefix):
                continue
            if rule.account_id is not None and rule.account_id != account_id:
                continue
            if rule.client_id is not None and rule.client_id != client_id:
                continue
            if rule.query is not None and (
                query is None or any(query.get(k) != v for k, v in rule.query.items())
            ):
                continue
            if rule.probability < 1 and self._random.random() >= rule.probability:
                continue
            rule.fired += 1
            return rule
        return None
