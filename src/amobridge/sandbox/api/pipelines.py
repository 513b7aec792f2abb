"""Pipelines and statuses: ``GET /api/v4/leads/pipelines`` (``_total_items``,
``_embedded.pipelines[…, _embedded.statuses]``), ``/pipelines/{id}``, ``/pipelines/{id}/statuses``
and ``/pipelines/{id}/statuses/{status_id}``. Every pipeline holds 142 (won) and 143 (lost).
A missing pipeline or status answers 204."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from amobridge.sandbox.api.common import api
from amobridge.sandbox.api.query import base_url, link
from amobridge.sandbox.api.serialize import pipeline_json, status_json
from amobridge.sandbox.http import ApiContext, hal, no_content

PREFIX = "/api/v4/leads/pipelines"


async def list_pipelines(request: Request, ctx: ApiContext) -> Response:
    base = base_url(request)
    pipelines = sorted(ctx.account.pipelines.values(), key=lambda p: (p.sort, p.id))
    return hal(
        {
            "_total_items": len(pipelines),
            "_links": link(f"{base}{PREFIX}"),
            "_embedded": {"pipelines": [pipeline_json(ctx.account, p, base) for p in pipelines]},
        }
    )


async def get_pipeline(request: Request, ctx: ApiContext) -> Response:
    pipeline = ctx.account.pipelines.get(request.path_params["pipeline_id"])
    if pipeline is None:
        return no_content()
    return hal(pipeline_json(ctx.account, pipeline, base_url(request)))


async def list_statuses(request: Request, ctx: ApiContext) -> Response:
    pipeline = ctx.account.pipelines.get(request.path_params["pipeline_id"])
    if pipeline is None:
        return no_content()
    base = base_url(request)
    return hal(
        {
            "_total_items": len(pipeline.statuses),
            "_links": link(f"{base}{PREFIX}/{pipeline.id}/statuses"),
            "_embedded": {
                "statuses": [status_json(ctx.account, s, base) for s in pipeline.statuses]
            },
        }
    )


async def get_status(request: Request, ctx: ApiContext) -> Response:
    pipeline = ctx.account.pipelines.get(request.path_params["pipeline_id"])
    status = pipeline.status(request.path_params["status_id"]) if pipeline else None
    if status is None:
        return no_content()
    return hal(status_json(ctx.account, status, base_url(request)))


def routes() -> list[BaseRoute]:
    return [
        Route(PREFIX, api(list_pipelines), methods=["GET"]),
        Route(f"{PREFIX}/{{pipeline_id:int}}", api(get_pipeline), methods=["GET"]),
        Route(f"{PREFIX}/{{pipeline_id:int}}/statuses", api(list_statuses), methods=["GET"]),
        Route(
            f"{PREFIX}/{{pipeline_id:int}}/statuses/{{status_id:int}}",
            api(get_status),
            methods=["GET"],
        ),
    ]
