"""What every endpoint resource shares: bracket-form query params, pages, and chunked writes.

- :func:`encode_params` turns nested values into amoCRM's bracket form
  (``filter[statuses][0][pipeline_id]``, ``order[updated_at]=desc``).
- :meth:`Resource._page` reads one page (``_page``, ``_links.next``; 204 = empty) and
  :meth:`Resource._iterate` walks pages until there is no ``next`` link.
- :meth:`Resource._create` and :meth:`Resource._update` split a batch into requests of at most
  ``chunk_size`` (default 50, never above amoCRM's 250), send them in order and return one result
  per input, in input order. Creates always carry a ``request_id`` (the caller's, or one generated
  here) and replies are matched back by it, so the order amoCRM answers in does not matter, and an
  ambiguous outcome (``AmoAmbiguousWrite``) names the ids to reconcile.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from datetime import datetime
from enum import Enum
from typing import Any, Literal, TypedDict, TypeVar

from pydantic import BaseModel, ValidationError

from amobridge.amo._requester import Requester, RetryMode
from amobridge.amo.errors import AmoAmbiguousWrite, AmoError, AmoServerError
from amobridge.amo.models.base import AmoInput, CreatedEntity, Page, UpdatedEntity

DEFAULT_CHUNK_SIZE = 50
"""Entities per write request unless told otherwise: amoCRM's recommendation."""
MAX_CHUNK_SIZE = 250
"""amoCRM's hard limit per add/update request; above it answers 422 "Limit 250 per page"."""
COMPLEX_MAX_CHUNK_SIZE = 50
"""``POST /leads/complex`` takes at most 50 leads per request."""
MAX_PAGE_LIMIT = 250
"""The largest ``limit`` amoCRM serves per page."""
DEFAULT_PAGE_LIMIT = 250
"""Pages as large as amoCRM allows: a full scan costs fewer requests (amoCRM bans heavy scanners)."""

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")

OrderField = Literal["created_at", "updated_at", "id"]
OrderDirection = Literal["asc", "desc"]


class EntityFilters(TypedDict, total=False):
    """Filters of ``GET /leads``, ``/contacts`` and ``/companies``.

    ``updated_from``/``updated_to`` (and ``created_…``) are inclusive bounds: unix seconds or
    timezone-aware datetimes. ``order`` is ``("updated_at", "desc")``. ``with_`` asks for extra parts
    (``with=…``).
    """

    query: str | int
    ids: Sequence[int]
    responsible_user_id: int | Sequence[int]
    created_from: int | datetime
    created_to: int | datetime
    updated_from: int | datetime
    updated_to: int | datetime
    order: tuple[OrderField, OrderDirection]
    with_: Sequence[str]


class LeadFilters(EntityFilters, total=False):
    """Lead filters: also by pipeline, by ``(pipeline_id, status_id)`` pairs, and ``with_contacts``
    (embed each lead's ``_embedded.contacts``)."""

    pipeline_id: int | Sequence[int]
    statuses: Sequence[tuple[int, int]]
    with_contacts: bool


_ENTITY_FILTER_KEYS = frozenset(EntityFilters.__optional_keys__)
_LEAD_FILTER_KEYS = frozenset(LeadFilters.__optional_keys__)


# --- query parameters ----------------------------------------------------------------------------


def encode_params(params: Mapping[str, Any]) -> dict[str, str]:
    """Flatten nested params into amoCRM's bracket form, keeping their order.

    ``{"filter": {"updated_at": {"from": 1}}, "order": {"id": "desc"}}`` →
    ``{"filter[updated_at][from]": "1", "order[id]": "desc"}``; lists get indices
    (``filter[id][0]``); ``None`` leaves a key out; datetimes become unix seconds.
    """
    flat: dict[str, str] = {}
    for key, value in params.items():
        _flatten(flat, str(key), value)
    return flat


def _flatten(flat: dict[str, str], key: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, Mapping):
        for sub, item in value.items():
            _flatten(flat, f"{key}[{sub}]", item)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _flatten(flat, f"{key}[{index}]", item)
    else:
        flat[key] = _scalar(key, value)


def _scalar(key: str, value: Any) -> str:
    if isinstance(value, bool):
        raise TypeError(f"{key}: amoCRM has no boolean query values; pass a string")
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, datetime):
        return str(timestamp(value))
    if isinstance(value, int | float | str):
        return str(value)
    raise TypeError(f"{key}: cannot send a {type(value).__name__} as a query value")


def timestamp(value: int | datetime) -> int:
    """Unix seconds from an int or a timezone-aware datetime (a naive one is ambiguous: refused)."""
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("pass a timezone-aware datetime (or unix seconds), not a naive one")
        return int(value.timestamp())
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("a time must be unix seconds (int) or a timezone-aware datetime")
    return value


def with_param(parts: Sequence[str]) -> str | None:
    """``with=a,b``, without duplicates; None when nothing is asked for."""
    if isinstance(parts, str):
        parts = [parts]
    seen = list(dict.fromkeys(part.strip() for part in parts if part.strip()))
    return ",".join(seen) if seen else None


def _ids(name: str, value: int | Sequence[int]) -> list[int]:
    values = [value] if isinstance(value, int) else list(value)
    for item in values:
        if isinstance(item, bool) or not isinstance(item, int):
            raise TypeError(f"{name} must be ids (ints), got {item!r}")
    return values


def entity_filter_params(
    filters: Mapping[str, Any], *, allowed: frozenset[str] = _ENTITY_FILTER_KEYS
) -> dict[str, Any]:
    """Nested params (for :func:`encode_params`) from :class:`EntityFilters` / :class:`LeadFilters`."""
    unknown = set(filters) - allowed
    if unknown:
        raise TypeError(f"unknown filter(s): {', '.join(sorted(unknown))}")
    flt: dict[str, Any] = {}
    params: dict[str, Any] = {}
    query = filters.get("query")
    if query is not None and str(query).strip():
        params["query"] = str(query).strip()
    if filters.get("ids") is not None:
        flt["id"] = _ids("ids", filters["ids"])
    if filters.get("responsible_user_id") is not None:
        flt["responsible_user_id"] = _ids("responsible_user_id", filters["responsible_user_id"])
    for name in ("created", "updated"):
        low, high = filters.get(f"{name}_from"), filters.get(f"{name}_to")
        if low is not None or high is not None:
            bounds: dict[str, int] = {}
            if low is not None:
                bounds["from"] = timestamp(low)
            if high is not None:
                bounds["to"] = timestamp(high)
            flt[f"{name}_at"] = bounds
    if filters.get("pipeline_id") is not None:
        flt["pipeline_id"] = _ids("pipeline_id", filters["pipeline_id"])
    statuses = filters.get("statuses")
    if statuses is not None:
        pairs = []
        for pair in statuses:
            pipeline_id, status_id = pair
            _ids("statuses", [pipeline_id, status_id])
            pairs.append({"pipeline_id": pipeline_id, "status_id": status_id})
        flt["statuses"] = pairs
    if flt:
        params["filter"] = flt
    order = filters.get("order")
    if order is not None:
        field, direction = order
        if field not in ("created_at", "updated_at", "id"):
            raise ValueError("order by created_at, updated_at or id")
        if direction not in ("asc", "desc"):
            raise ValueError('order direction is "asc" or "desc"')
        params["order"] = {field: direction}
    parts = list(filters.get("with_") or ())
    if filters.get("with_contacts"):
        parts.append("contacts")
    with_ = with_param(parts)
    if with_:
        params["with"] = with_
    return params


def lead_filter_params(filters: Mapping[str, Any]) -> dict[str, Any]:
    return entity_filter_params(filters, allowed=_LEAD_FILTER_KEYS)


def check_page(page: int, limit: int) -> None:
    if isinstance(page, bool) or not isinstance(page, int) or page < 1:
        raise ValueError("page starts at 1")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE_LIMIT} (amoCRM's maximum)")


# --- chunks --------------------------------------------------------------------------------------


def check_chunk_size(size: int, maximum: int = MAX_CHUNK_SIZE) -> int:
    """``size`` if 1 ≤ size ≤ ``maximum``; amoCRM refuses larger batches outright."""
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= maximum:
        raise ValueError(f"chunk_size must be between 1 and {maximum} (amoCRM's limit)")
    return size


def chunked(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """``items`` in consecutive slices of at most ``size``, in order."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def new_request_ids(count: int) -> list[str]:
    """``count`` request ids unique within a batch (a random prefix, then the index)."""
    prefix = secrets.token_hex(6)
    return [f"{prefix}-{index}" for index in range(count)]


# --- replies -------------------------------------------------------------------------------------


def unexpected_reply(method: str, path: str, what: str) -> AmoServerError:
    return AmoServerError(
        f"amoCRM's reply to {method} {path} is not what its API documents ({what}). This is on "
        "amoCRM's side or an API change; the request may have been applied.",
        status=200,
        method=method,
        url=path,
    )


def embedded_items(reply: Any, key: str, *, method: str, path: str) -> list[Any]:
    """``reply["_embedded"][key]``; None (a 204) is an empty list."""
    if reply is None:
        return []
    embedded = reply.get("_embedded") if isinstance(reply, dict) else None
    if isinstance(embedded, list) and not embedded:
        return []  # PHP's empty object
    items = embedded.get(key) if isinstance(embedded, dict) else None
    if items is None and isinstance(embedded, dict):
        return []
    if not isinstance(items, list):
        raise unexpected_reply(method, path, f"no _embedded.{key} list")
    return items


def parse_model(model: type[M], data: Any, *, method: str, path: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise unexpected_reply(
            method, path, f"not a {model.__name__}: {exc.error_count()} error(s)"
        ) from exc


def parse_page(reply: Any, key: str, model: type[M], page: int, *, path: str = "") -> Page[M]:
    """One page from a list reply (None = amoCRM's 204 for an empty page)."""
    items = [
        parse_model(model, item, method="GET", path=path)
        for item in embedded_items(reply, key, method="GET", path=path)
    ]
    if not isinstance(reply, dict):
        return Page(items=items, page=page, has_next=False)
    links = reply.get("_links")
    has_next = isinstance(links, dict) and bool(links.get("next"))
    number = reply.get("_page")
    return Page(
        items=items,
        page=number if isinstance(number, int) and not isinstance(number, bool) else page,
        has_next=has_next and bool(items),
    )


class AmoLookupError(AmoError, LookupError):
    """A pipeline or status named in configuration does not exist; ``available`` lists the names
    that do (the message shows them with their ids)."""

    def __init__(self, message: str, *, wanted: int | str, available: Sequence[str]) -> None:
        super().__init__(message)
        self.wanted = wanted
        self.available = list(available)


ENTITY_TYPES = ("leads", "contacts", "companies", "customers")


def check_entity_type(entity_type: str) -> str:
    if entity_type not in ENTITY_TYPES:
        raise ValueError(f"entity_type must be one of {', '.join(ENTITY_TYPES)}")
    return entity_type


# --- the base class ------------------------------------------------------------------------------


class Resource:
    """One group of endpoints; it talks to amoCRM only through its :class:`Requester`."""

    def __init__(self, requester: Requester) -> None:
        self._requester = requester

    async def _page(
        self,
        path: str,
        key: str,
        model: type[M],
        *,
        page: int,
        limit: int,
        params: Mapping[str, Any] | None = None,
    ) -> Page[M]:
        check_page(page, limit)
        query = encode_params({**(params or {}), "page": page, "limit": limit})
        reply = await self._requester.request_json("GET", path, params=query)
        return parse_page(reply, key, model, page, path=path)

    @staticmethod
    async def _iterate(
        fetch: Callable[[int], Awaitable[Page[M]]], start: int = 1
    ) -> AsyncIterator[M]:
        """Every item of every page from ``start``, until a page has no ``next`` link."""
        number = start
        while True:
            page = await fetch(number)
            for item in page.items:
                yield item
            if not page.has_next:
                return
            number += 1

    async def _get(
        self, path: str, model: type[M], params: Mapping[str, Any] | None = None
    ) -> M | None:
        """One entity; None when amoCRM answers 204 (missing)."""
        query = encode_params(params or {})
        reply = await self._requester.request_json("GET", path, params=query or None)
        if reply is None:
            return None
        return parse_model(model, reply, method="GET", path=path)

    async def _list_all(self, path: str, key: str, model: type[M]) -> list[M]:
        """An unpaginated list (pipelines, webhooks); 204 = empty."""
        reply = await self._requester.request_json("GET", path)
        return [
            parse_model(model, item, method="GET", path=path)
            for item in embedded_items(reply, key, method="GET", path=path)
        ]

    async def _create(
        self,
        path: str,
        key: str,
        bodies: Sequence[dict[str, Any]],
        *,
        chunk_size: int,
        maximum: int = MAX_CHUNK_SIZE,
    ) -> list[CreatedEntity]:
        """POST ``bodies`` in chunks; one :class:`CreatedEntity` per body, in input order."""
        replies = await self._send_creates(
            path, bodies, chunk_size=chunk_size, maximum=maximum, reply_key=key
        )
        return [parse_model(CreatedEntity, r, method="POST", path=path) for r in replies]

    async def _send_creates(
        self,
        path: str,
        bodies: Sequence[dict[str, Any]],
        *,
        chunk_size: int,
        maximum: int,
        reply_key: str | None,
    ) -> list[dict[str, Any]]:
        check_chunk_size(chunk_size, maximum)
        bodies = with_request_ids(bodies)
        results: list[dict[str, Any]] = []
        for chunk in chunked(bodies, chunk_size):
            with _ProgressNote(results, len(bodies), "created"):
                reply = await self._requester.request_json(
                    "POST", path, json=list(chunk), retry="create"
                )
                items = (
                    embedded_items(reply, reply_key, method="POST", path=path)
                    if reply_key is not None
                    else reply
                )
                results.extend(match_by_request_id(chunk, items, path=path))
        return results

    async def _update_one(self, path: str, entity_id: int, body: dict[str, Any]) -> UpdatedEntity:
        """PATCH one entity at ``{path}/{entity_id}``."""
        if isinstance(entity_id, bool) or not isinstance(entity_id, int):
            raise TypeError("the entity id must be an int")
        given = body.pop("id", entity_id)
        if given != entity_id:
            raise ValueError(f"the changes carry id {given}, but entity {entity_id} was named")
        one = f"{path}/{entity_id}"
        reply = await self._requester.request_json("PATCH", one, json=body, retry="safe")
        if not isinstance(reply, dict):
            raise unexpected_reply("PATCH", one, "no entity in the reply")
        return parse_model(UpdatedEntity, reply, method="PATCH", path=one)

    async def _update(
        self,
        path: str,
        key: str,
        bodies: Sequence[dict[str, Any]],
        *,
        chunk_size: int,
        retry: RetryMode = "safe",
    ) -> list[UpdatedEntity]:
        """PATCH ``bodies`` (each with its ``id``) in chunks; one result per body, in order."""
        check_chunk_size(chunk_size)
        for body in bodies:
            entity_id = body.get("id")
            if isinstance(entity_id, bool) or not isinstance(entity_id, int):
                raise ValueError("every update needs the id of the entity to change")
        results: list[UpdatedEntity] = []
        for chunk in chunked(bodies, chunk_size):
            with _ProgressNote(results, len(bodies), "updated"):
                reply = await self._requester.request_json(
                    "PATCH", path, json=list(chunk), retry=retry
                )
                items = embedded_items(reply, key, method="PATCH", path=path)
                by_id: dict[int, Any] = {}
                for item in items:
                    if isinstance(item, dict) and isinstance(item.get("id"), int):
                        by_id.setdefault(item["id"], item)
                for body in chunk:
                    found = by_id.get(body["id"])
                    if found is None:
                        raise unexpected_reply("PATCH", path, f"id {body['id']} missing")
                    results.append(parse_model(UpdatedEntity, found, method="PATCH", path=path))
        return results


def input_bodies(model: type[AmoInput], items: Sequence[AmoInput]) -> list[dict[str, Any]]:
    """The request bodies of ``items``, which must all be ``model`` instances."""
    if isinstance(items, AmoInput | Mapping | str):
        raise TypeError(f"pass a list of {model.__name__}")
    bodies = []
    for item in items:
        if not isinstance(item, model):
            raise TypeError(
                f"expected {model.__name__}, got {type(item).__name__} "
                f"({model.__name__}.model_validate(data) builds one from a dict)"
            )
        bodies.append(item.to_api())
    return bodies


def with_request_ids(bodies: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copies of ``bodies``, each with a ``request_id`` unique in the batch (kept if given)."""
    generated = iter(new_request_ids(len(bodies)))
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for body in bodies:
        given = body.get("request_id")
        if given is not None and not isinstance(given, str):
            raise TypeError("request_id must be a string")
        request_id = given if given else next(generated)
        if request_id in seen:
            raise ValueError(f"request_id {request_id!r} is used twice in one batch")
        seen.add(request_id)
        out.append({**body, "request_id": request_id})
    return out


def match_by_request_id(
    chunk: Sequence[dict[str, Any]], items: Any, *, path: str
) -> list[dict[str, Any]]:
    """The reply item for each body of ``chunk``, in ``chunk``'s order, by ``request_id``.

    ``request_id`` in a reply is a string, or (``/leads/complex``) a list of them. An item missing
    from the reply leaves the outcome of the whole chunk unknown: ``AmoAmbiguousWrite``.
    """
    sent = [str(body["request_id"]) for body in chunk]
    if not isinstance(items, list):
        raise AmoAmbiguousWrite(
            method="POST", path=path, request_ids=sent, reason="the reply listed no entities"
        )
    by_request_id: dict[str, dict[str, Any]] = {}
    for item in items:
        if not isinstance(item, dict):
            continue
        raw = item.get("request_id")
        for request_id in raw if isinstance(raw, list) else [raw]:
            if request_id is not None:
                by_request_id.setdefault(str(request_id), item)
    missing = [request_id for request_id in sent if request_id not in by_request_id]
    if missing:
        raise AmoAmbiguousWrite(
            method="POST",
            path=path,
            request_ids=sent,
            reason=f"the reply did not list {len(missing)} of the {len(sent)} request_ids sent",
        )
    return [by_request_id[request_id] for request_id in sent]


class _ProgressNote:
    """On failure, note on the exception how many earlier items were already written."""

    def __init__(self, done: Sequence[Any], total: int, verb: str) -> None:
        self._done = done
        self._total = total
        self._verb = verb

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> Literal[False]:
        if exc is not None and self._done:
            ids = [getattr(item, "id", None) or item.get("id") for item in self._done]
            exc.add_note(
                f"{len(self._done)} of {self._total} items were {self._verb} by earlier requests "
                f"of this batch (ids: {ids[:20]}{' …' if len(ids) > 20 else ''}); the rest were not "
                "sent."
            )
        return False
