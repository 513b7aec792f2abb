"""``/api/v4/leads/pipelines``: lead pipelines and their statuses, and finding them by name."""

from __future__ import annotations

import builtins
from collections.abc import Sequence

from amobridge.amo.models.pipelines import Pipeline, Status, match_by_name_or_id
from amobridge.amo.resources.base import AmoLookupError, Resource

PATH = "leads/pipelines"


def _listing(items: Sequence[Pipeline | Status]) -> str:
    return ", ".join(f"{item.name!r} (id {item.id})" for item in items) or "none"


def find_pipeline(pipelines: Sequence[Pipeline], name_or_id: int | str | None) -> Pipeline:
    """The pipeline by name (case- and space-insensitive) or id; None means the main pipeline."""
    if name_or_id is None:
        found = next((p for p in pipelines if p.is_main), None)
        if found is None:
            raise AmoLookupError(
                f"the account has no main pipeline; its pipelines: {_listing(pipelines)}",
                wanted="main",
                available=[p.name or "" for p in pipelines],
            )
        return found
    found = match_by_name_or_id(list(pipelines), name_or_id)
    if found is None:
        raise AmoLookupError(
            f"no pipeline {name_or_id!r} in the account; its pipelines: {_listing(pipelines)}. "
            "Use one of these names or ids.",
            wanted=name_or_id,
            available=[p.name or "" for p in pipelines],
        )
    return found


def find_status(pipeline: Pipeline, name_or_id: int | str) -> Status:
    """The status of ``pipeline`` by name (case- and space-insensitive) or id."""
    found = pipeline.status(name_or_id)
    if found is None:
        raise AmoLookupError(
            f"no status {name_or_id!r} in pipeline {pipeline.name!r} (id {pipeline.id}); its "
            f"statuses: {_listing(pipeline.statuses)}. Use one of these names or ids.",
            wanted=name_or_id,
            available=[s.name or "" for s in pipeline.statuses],
        )
    return found


class PipelinesResource(Resource):
    async def list(self) -> builtins.list[Pipeline]:
        """Every lead pipeline with its statuses (amoCRM does not paginate them: ≤ 50)."""
        return await self._list_all(PATH, "pipelines", Pipeline)

    async def get(self, pipeline_id: int) -> Pipeline | None:
        """One pipeline with its statuses; None when it does not exist."""
        return await self._get(f"{PATH}/{int(pipeline_id)}", Pipeline)

    async def statuses(self, pipeline_id: int) -> builtins.list[Status]:
        """The statuses of one pipeline, in amoCRM's order."""
        return await self._list_all(f"{PATH}/{int(pipeline_id)}/statuses", "statuses", Status)

    async def find(self, name_or_id: int | str | None) -> Pipeline:
        """The pipeline named (or numbered) ``name_or_id``; None means the main pipeline.

        Raises :class:`AmoLookupError` listing the account's pipelines when there is none.
        """
        return find_pipeline(await self.list(), name_or_id)

    async def find_status(
        self, pipeline_name_or_id: int | str | None, status_name_or_id: int | str
    ) -> Status:
        """The status ``status_name_or_id`` of pipeline ``pipeline_name_or_id`` (None: the main
        pipeline), both by name (case- and space-insensitive) or id, in one request.

        ``await amo.pipelines.find_status("Воронка", "Переговоры")``. Raises
        :class:`AmoLookupError` listing the available names when either is missing.
        """
        pipeline = find_pipeline(await self.list(), pipeline_name_or_id)
        return find_status(pipeline, status_name_or_id)
