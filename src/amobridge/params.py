"""What the features' list routes share: the query and path parameters of a paged, filtered
listing (``GET /jobs``, ``/webhooks/deliveries``, ``/event-deliveries``…) and the page they answer.

A leaf below the features (it imports no feature, nor ``web``), so every feature's ``schemas.py``
builds its parameters here instead of writing the same ``Query(...)`` again. Each function gives
the ``Query``/``Path`` of one parameter, worded for the items it lists; a feature names it:

    CursorQuery = Annotated[str | None, cursor_query()]
    LimitQuery = Annotated[int, limit_query("Jobs")]
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from fastapi import Path, Query
from pydantic import BaseModel, Field

MAX_ID = 2**63 - 1
"""The largest id a row may have (a signed 64-bit integer): ids above it are 422, not a 500."""
MAX_PAGE = 200
NEXT_CURSOR = "Pass as `cursor` for the next page; null: done"

Item = TypeVar("Item")


class Page(BaseModel, Generic[Item]):
    """A page of a listing, newest first. Subclass it per item (``class JobPage(Page[JobOut])``)
    so the OpenAPI document names the schema after the subclass."""

    items: list[Item]
    next_cursor: str | None = Field(description=NEXT_CURSOR)


def cursor_query(*, max_length: int = 20) -> Any:
    """``cursor``: the ``next_cursor`` of the previous page, an id's digits (``max_length``: how
    many digits the service accepts)."""
    return Query(
        max_length=max_length,
        pattern=r"^[0-9]+$",
        description="`next_cursor` of the previous page",
        openapi_examples={"cursor": {"summary": "The next page", "value": "1041"}},
    )


def limit_query(items: str) -> Any:
    """``limit``: how many ``items`` (capitalised: "Jobs") a page holds, 1 to ``MAX_PAGE``."""
    return Query(
        ge=1,
        le=MAX_PAGE,
        description=f"{items} per page (newest first)",
        openapi_examples={"limit": {"summary": "Fifty", "value": 50}},
    )


def owner_filter(items: str) -> Any:
    """``owner`` of an operator's listing of ``items``, which an admin key may leave out."""
    return Query(
        max_length=255,
        description=f"The owner whose {items} to see. An app key must name one; a user's token "
        "sees only its own (`sub`); an admin key sees every owner's when it names none.",
        openapi_examples={"owner": {"summary": "An owner", "value": "user-42"}},
    )


def state_filter(items: str) -> Any:
    """``state``: only ``items`` in one state (the annotation's ``Literal`` names them)."""
    return Query(
        description=f"Only {items} in this state",
        openapi_examples={"failed": {"summary": "The failed ones", "value": "failed"}},
    )


def id_path(noun: str) -> Any:
    """``{id}`` of one ``noun`` ("job", "delivery"): 1 to :data:`MAX_ID`."""
    return Path(
        ge=1,
        le=MAX_ID,
        description=f"The {noun}'s id",
        openapi_examples={"id": {"summary": f"A {noun}", "value": 1042}},
    )
