"""(in progress)"""

from __future__ import annotations

from starlette.routing import BaseRoute


def routes() -> list[BaseRoute]:
    return []


def control_routes() -> list[BaseRoute]:
    return []
