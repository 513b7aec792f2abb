"""Route lookup by literal path prefix, so a request is matched against a handful of routes.

Starlette's router tries every route in order, one regex each. The sandbox has over a hundred
routes, so ``GET /_sandbox/health`` paid ~90 regex matches and ``GET /api/v4/leads/{id}`` ~15
before their own. :class:`RouteIndex` wraps the whole list as one route: it files each route under
the literal segments its path starts with (``/api/v4/leads`` for ``/api/v4/leads/{id:int}``) and,
for a request, tries only the routes filed under a prefix of the request's path — still in their
original order, so the first full match wins and ``405``/``404`` behave exactly as before.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import Any

from starlette.routing import BaseRoute, Match
from starlette.types import Receive, Scope, Send

DEPTH = 4
"""Literal segments used as the key: enough to separate every sandbox route family."""


def _route_key(path: str) -> str | None:
    """``/api/v4/leads/{id:int}`` → ``/api/v4/leads``; None when the first segment is a parameter."""
    literal: list[str] = []
    for segment in path.split("/")[1:]:
        if "{" in segment or len(literal) == DEPTH:
            break
        literal.append(segment)
    return "/" + "/".join(literal) if literal else None


def _request_keys(path: str) -> list[str]:
    segments = path.split("/")[1:]
    return ["/" + "/".join(segments[:depth]) for depth in range(1, min(DEPTH, len(segments)) + 1)]


class RouteIndex(BaseRoute):
    """Many routes behaving as Starlette's router would try them, looked up by path prefix."""

    def __init__(self, routes: Sequence[BaseRoute]) -> None:
        self.routes = list(routes)
        self._filed: dict[str, list[tuple[int, BaseRoute]]] = {}
        self._anywhere: list[tuple[int, BaseRoute]] = []  # routes starting with a parameter
        for index, route in enumerate(self.routes):
            path = getattr(route, "path", None)
            key = _route_key(path) if isinstance(path, str) else None
            if key is None:
                self._anywhere.append((index, route))
            else:
                self._filed.setdefault(key, []).append((index, route))
        self._merged: dict[tuple[str, ...], list[BaseRoute]] = {}

    def candidates(self, path: str) -> list[BaseRoute]:
        """The routes that can match ``path``, in their original order."""
        keys = tuple(key for key in _request_keys(path) if key in self._filed)
        merged = self._merged.get(keys)
        if merged is None:
            lists = [self._filed[key] for key in keys] + [self._anywhere]
            merged = [route for _, route in heapq.merge(*lists, key=lambda item: item[0])]
            self._merged[keys] = merged  # bounded: keys are route keys, not request paths
        return merged

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] not in ("http", "websocket"):
            return Match.NONE, {}
        root_path = scope.get("root_path", "")
        path: str = scope["path"]
        if root_path and path.startswith(root_path):
            path = path[len(root_path) :]
        partial: tuple[BaseRoute, Scope] | None = None
        for route in self.candidates(path):
            match, child_scope = route.matches(scope)
            if match is Match.FULL:
                return Match.FULL, {**child_scope, "route": route}
            if match is Match.PARTIAL and partial is None:
                partial = (route, child_scope)
        if partial is not None:
            return Match.PARTIAL, {**partial[1], "route": partial[0]}
        return Match.NONE, {}

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The router put the matched inner route in scope["route"] (from our child scope).
        route: BaseRoute = scope["route"]
        await route.handle(scope, receive, send)

    def url_path_for(self, name: str, /, **path_params: Any) -> Any:
        from starlette.routing import NoMatchFound

        for route in self.routes:
            try:
                return route.url_path_for(name, **path_params)
            except NoMatchFound:
                pass
        raise NoMatchFound(name, path_params)
