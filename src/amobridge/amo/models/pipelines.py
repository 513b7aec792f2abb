"""Lead pipelines and their statuses (stages).

Every pipeline has the statuses **142** (won) and **143** (lost), with the same ids in every
pipeline: a status id alone is ambiguous, ``pipeline_id`` says which one.
"""

from __future__ import annotations

from typing import Annotated, TypeVar

from pydantic import Field

from amobridge.amo.models.base import AmoModel, NullableDict, NullableList, NullableObject

WON_STATUS_ID = 142
LOST_STATUS_ID = 143
UNSORTED_STATUS_TYPE = 1


class Status(AmoModel):
    id: int
    name: str | None = None
    sort: int | None = None
    pipeline_id: int | None = None
    type: int | None = None  # 1 = unsorted ("Неразобранное"), 0 = any other
    color: str | None = None
    is_editable: bool | None = None
    account_id: int | None = None
    links: NullableDict = Field(default_factory=dict, alias="_links")

    @property
    def is_won(self) -> bool:
        return self.id == WON_STATUS_ID

    @property
    def is_lost(self) -> bool:
        return self.id == LOST_STATUS_ID

    @property
    def is_closed(self) -> bool:
        return self.id in (WON_STATUS_ID, LOST_STATUS_ID)

    @property
    def is_unsorted(self) -> bool:
        return self.type == UNSORTED_STATUS_TYPE


class PipelineEmbedded(AmoModel):
    statuses: NullableList[Status] = Field(default_factory=list)


class Pipeline(AmoModel):
    id: int
    name: str | None = None
    sort: int | None = None
    is_main: bool | None = None
    is_unsorted_on: bool | None = None
    is_archive: bool | None = None
    account_id: int | None = None
    embedded: Annotated[PipelineEmbedded, NullableObject] = Field(
        default_factory=PipelineEmbedded, alias="_embedded"
    )
    links: NullableDict = Field(default_factory=dict, alias="_links")

    @property
    def statuses(self) -> list[Status]:
        return self.embedded.statuses

    def status(self, name_or_id: int | str) -> Status | None:
        """The status named ``name_or_id`` (case-, space- and ё/е-insensitive) or with that id."""
        return match_by_name_or_id(self.statuses, name_or_id)


def normalise_name(name: str) -> str:
    """How names are compared: case-insensitive, with runs of whitespace collapsed, and Russian
    «ё» read as «е» (people type "ПРОШЕЛ" for a stage named "Прошёл", and the other way round)."""
    return " ".join(name.split()).casefold().replace("ё", "е")


N = TypeVar("N", Status, Pipeline)


def match_by_name_or_id(items: list[N], name_or_id: int | str) -> N | None:
    """The item with that id (an int, or a string of digits no name matches), else that name."""
    if isinstance(name_or_id, int) and not isinstance(name_or_id, bool):
        return next((item for item in items if item.id == name_or_id), None)
    wanted = normalise_name(str(name_or_id))
    for item in items:
        if item.name is not None and normalise_name(item.name) == wanted:
            return item
    if wanted.isdigit():
        return next((item for item in items if item.id == int(wanted)), None)
    return None
