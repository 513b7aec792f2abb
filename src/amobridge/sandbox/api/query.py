"""List queries: ``page``/``limit``, ``filter[…]``, ``order[…]``, ``with``, ``query``, and amoCRM's
page envelope.

- ``limit`` above ``page_limit_max`` (250) is capped to it, as amoCRM does for reads; a missing,
  non-numeric or non-positive ``limit`` or ``page`` falls back to the default (limit 50, page 1).
- A page is ``{"_page", "_links": {self, next?, first?, prev?}, "_embedded": {name: [...]}}``: no
  total count, no ``next`` on the last page, ``first``/``prev`` from page 2 on. An empty page is a
  204 with no body. Links repeat the request's own scheme, host, path and query with ``page`` and
  ``limit`` set.
- Filter values that must be integers and are not answer 400.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlencode

from starlette.requests import Request

from amobridge.sandbox.config import SandboxConfig
from amobridge.sandbox.http import ApiProblem

_BRACKETS = re.compile(r"\[([^\[\]]*)\]")

T = TypeVar("T")


def base_url(request: Request) -> str:
    """``scheme://host[:port]`` of the request: the root of every ``_links`` href."""
    url = request.url
    return f"{url.scheme}://{url.netloc}"


def link(href: str) -> dict[str, dict[str, str]]:
    return {"self": {"href": href}}


def split_key(key: str) -> tuple[str, tuple[str, ...]]:
    """``filter[statuses][0][status_id]`` → ``("filter", ("statuses", "0", "status_id"))``."""
    head, bracket, _ = key.partition("[")
    if not bracket:
        return key, ()
    return head, tuple(_BRACKETS.findall(key[len(head) :]))


@dataclass
class Filters:
    """``filter[…]`` parameters, keyed by their bracket path (``("id", "")`` for ``filter[id][]``)."""

    items: list[tuple[tuple[str, ...], str]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.items)

    def values(self, name: str) -> list[str]:
        """Every value of ``filter[name]``, ``filter[name][]`` and ``filter[name][N]``; a plain
        value may also list several, comma-separated."""
        found: list[str] = []
        for path, value in self.items:
            if path[0] != name or len(path) > 2:
                continue
            if len(path) == 2 and not (path[1] == "" or path[1].isdigit()):
                continue
            found.extend(v.strip() for v in value.split(",") if v.strip())
        return found

    def ints(self, name: str) -> set[int] | None:
        """``filter[name]`` as a set of integers, or None when absent; non-integers → 400."""
        raw = self.values(name)
        if not raw:
            return None
        try:
            return {int(v) for v in raw}
        except ValueError:
            raise ApiProblem.of(400, f"filter[{name}] must be integers") from None

    def strings(self, name: str) -> set[str] | None:
        raw = [value for path, value in self.items if path[0] == name and len(path) <= 2]
        return set(raw) if raw else None

    def range(self, name: str) -> tuple[int | None, int | None] | None:
        """``filter[name][from]`` / ``filter[name][to]`` (inclusive), or ``filter[name]=ts``."""
        low: int | None = None
        high: int | None = None
        seen = False
        for path, value in self.items:
            if path[0] != name:
                continue
            bound = path[1] if len(path) > 1 else ""
            if bound not in ("from", "to", ""):
                continue
            try:
                number = int(value)
            except ValueError:
                raise ApiProblem.of(400, f"filter[{name}] must be unix timestamps") from None
            seen = True
            if bound in ("from", ""):
                low = number
            if bound in ("to", ""):
                high = number
        return (low, high) if seen else None

    def groups(self, name: str) -> list[dict[str, int]]:
        """``filter[statuses][0][pipeline_id]=…&filter[statuses][0][status_id]=…`` →
        ``[{"pipeline_id": …, "status_id": …}]``."""
        grouped: dict[str, dict[str, int]] = {}
        for path, value in self.items:
            if path[0] != name or len(path) != 3:
                continue
            try:
                grouped.setdefault(path[1], {})[path[2]] = int(value)
            except ValueError:
                raise ApiProblem.of(400, f"filter[{name}] must be integers") from None
        return list(grouped.values())


@dataclass
class ListQuery:
    page: int
    limit: int
    filters: Filters
    order: tuple[str, bool] | None  # (field, descending)
    with_: frozenset[str]
    search: str | None

    @classmethod
    def parse(
        cls, request: Request, config: SandboxConfig, orderable: Iterable[str] = ()
    ) -> ListQuery:
        params = request.query_params
        filters = Filters()
        order: tuple[str, bool] | None = None
        allowed_order = set(orderable)
        for key, value in params.multi_items():
            head, path = split_key(key)
            if head == "filter" and path:
                filters.items.append((path, value))
            elif head == "order" and len(path) == 1 and order is None:
                direction = value.strip().lower()
                if path[0] in allowed_order and direction in ("asc", "desc"):
                    order = (path[0], direction == "desc")
        with_ = frozenset(w.strip() for w in params.get("with", "").split(",") if w.strip())
        search = params.get("query")
        return cls(
            page=_positive(params.get("page"), 1),
            limit=min(
                _positive(params.get("limit"), config.page_limit_default), config.page_limit_max
            ),
            filters=filters,
            order=order,
            with_=with_,
            search=search.strip().lower() if search and search.strip() else None,
        )

    def sort(self, rows: list[T], keys: dict[str, Callable[[T], Any]], default: str) -> None:
        """Order ``rows`` in place by ``order[…]`` (ties broken by id), else by ``default`` asc."""
        name, descending = self.order or (default, False)
        key = keys[name]
        rows.sort(key=key, reverse=descending)

    def window(self, rows: Sequence[T]) -> tuple[Sequence[T], bool]:
        """This page's rows, and whether a next page exists."""
        start = (self.page - 1) * self.limit
        return rows[start : start + self.limit], len(rows) > start + self.limit


def _positive(raw: str | None, default: int) -> int:
    if raw is None:
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        return default
    return value if value >= 1 else default


def page_links(request: Request, query: ListQuery, has_next: bool) -> dict[str, dict[str, str]]:
    """``self``, ``next`` (not on the last page), ``first`` and ``prev`` (from page 2)."""
    root = f"{base_url(request)}{request.url.path}"
    kept = [(k, v) for k, v in request.query_params.multi_items() if k not in ("page", "limit")]

    def href(page: int) -> str:
        return root + "?" + urlencode([*kept, ("page", str(page)), ("limit", str(query.limit))])

    links = {"self": {"href": href(query.page)}}
    if has_next:
        links["next"] = {"href": href(query.page + 1)}
    if query.page > 1:
        links["first"] = {"href": href(1)}
        links["prev"] = {"href": href(query.page - 1)}
    return links


def page_body(
    request: Request, query: ListQuery, name: str, items: list[Any], has_next: bool
) -> dict[str, Any]:
    return {
        "_page": query.page,
        "_links": page_links(request, query, has_next),
        "_embedded": {name: items},
    }


def in_range(value: int | None, bounds: tuple[int | None, int | None]) -> bool:
    low, high = bounds
    if value is None:
        return False
    return (low is None or value >= low) and (high is None or value <= high)


Predicate = Callable[[Any], bool]
"""One filter over entities: keeps the rows it is true for."""


def one_of(attribute: str, wanted: set[int]) -> Predicate:
    return lambda entity: getattr(entity, attribute) in wanted


def within(attribute: str, bounds: tuple[int | None, int | None]) -> Predicate:
    return lambda entity: in_range(getattr(entity, attribute), bounds)
