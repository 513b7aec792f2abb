"""What a connection's amoCRM account offers — pipelines with their stages, lead and contact
custom fields — cached per connection, and how a request's names are resolved against it.

A lead request names pipelines, stages and fields by id or by name; names are compared
case-insensitively, with runs of spaces collapsed and ё read as е (the SDK's ``normalise_name``),
so "ПРОШЕЛ ВТОРОЙ УРОК" finds "Прошёл второй урок". An unknown name is a 422 that lists what the
account has. The cache (table ``amo_catalogue``) is read from amoCRM when missing or older than
``AMOBRIDGE_SYNC__CATALOGUE_TTL_SECONDS``, and once more before a name is refused (a stage added
a minute ago is found). While the connection cannot call amoCRM (``reauth_required``,
``disconnected``, amoCRM down) a stale cache is used as it is; with none at all the lead is
accepted with its names unresolved and the push resolves them.

The push's marker field (``AMOBRIDGE_REF``, see ``tasks.py``) lives here too: created in the
account the first time a create is pushed.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

from amobridge.amo.client import AmoClient
from amobridge.amo.errors import AmoAmbiguousWrite, AmoError, AmoValidationError
from amobridge.amo.models.custom_fields import CustomField
from amobridge.amo.models.pipelines import Pipeline, Status, normalise_name
from amobridge.connect.clients import ConnectionClients, ConnectionDisconnected
from amobridge.errors import ServiceError
from amobridge.storage.db import Database
from amobridge.storage.tables import Connection
from amobridge.sync.repository import CatalogueRepository

log = logging.getLogger("amobridge.sync")

KINDS = ("pipelines", "lead_fields", "contact_fields")
MARKER_CODE = "AMOBRIDGE_REF"
MARKER_NAME = "amobridge ref"
FETCH_TIMEOUT = 15.0  # seconds a request waits for amoCRM's catalogue before going without
REFRESH_BEFORE_REFUSING = timedelta(seconds=10)
ENUM_TYPES = frozenset({"select", "multiselect", "radiobutton", "category"})
MULTI_TYPES = frozenset({"multiselect", "multitext", "category"})
NUMBER_TYPES = frozenset({"numeric", "price", "monetary"})
DATE_TYPES = frozenset({"date", "date_time", "birthday"})


class UnknownReference(ServiceError):
    """A pipeline, stage, field or option the account does not have; ``available`` lists what
    it has (``{"id", "name"}``), the detail says it in words."""

    status_code = 422

    def __init__(self, detail: str, *, code: str, available: list[dict[str, Any]]) -> None:
        super().__init__(detail, code=code, available=available)


def _listing(items: list[dict[str, Any]]) -> str:
    return ", ".join(f"{item['name']!r} (id {item['id']})" for item in items) or "none"


def _ref_id(ref: int | str) -> int | None:
    if isinstance(ref, int) and not isinstance(ref, bool):
        return ref
    text = str(ref).strip()
    return int(text) if text.isdigit() else None


@dataclass(frozen=True)
class Catalogue:
    pipelines: list[Pipeline]
    lead_fields: list[CustomField]
    contact_fields: list[CustomField]
    fetched_at: datetime
    complete: bool = True  # every kind was read (an older cache may miss one)

    # --- pipelines and stages -----------------------------------------------------------------
    def main_pipeline(self) -> Pipeline | None:
        return next(
            (p for p in self.pipelines if p.is_main), self.pipelines[0] if self.pipelines else None
        )

    def pipeline_by_id(self, pipeline_id: int | None) -> Pipeline | None:
        return next((p for p in self.pipelines if p.id == pipeline_id), None)

    def pipeline(self, ref: int | str | None) -> Pipeline:
        found = self.main_pipeline() if ref is None else _match(self.pipelines, ref)
        if found is None:
            available = [{"id": p.id, "name": p.name} for p in self.pipelines]
            raise UnknownReference(
                f"no pipeline {ref!r} in the account; its pipelines: {_listing(available)}",
                code="unknown_pipeline",
                available=available,
            )
        return found

    def stage(self, pipeline: Pipeline, ref: int | str) -> Status:
        found: Status | None = _match(pipeline.statuses, ref)
        if found is None:
            available = [{"id": s.id, "name": s.name} for s in pipeline.statuses]
            raise UnknownReference(
                f"no stage {ref!r} in pipeline {pipeline.name!r} (id {pipeline.id}); its stages: "
                f"{_listing(available)}",
                code="unknown_stage",
                available=available,
            )
        return found

    def stage_anywhere(self, ref: int | str) -> tuple[Pipeline, Status]:
        """A stage named without its pipeline: the main pipeline's, else the one pipeline that
        has it (a name several other pipelines share is refused as ambiguous)."""
        main = self.main_pipeline()
        if main is None:
            raise UnknownReference(
                "the account has no pipelines", code="unknown_pipeline", available=[]
            )
        found = _match(main.statuses, ref)
        if found is not None:
            return main, found
        hits = [
            (p, s) for p in self.pipelines if p is not main for s in [_match(p.statuses, ref)] if s
        ]
        if len(hits) == 1:
            return hits[0]
        available = [
            {"id": s.id, "name": s.name, "pipeline": p.name}
            for p in self.pipelines
            for s in p.statuses
        ]
        if hits:
            names = ", ".join(f"{p.name!r} (id {p.id})" for p, _ in hits)
            raise UnknownReference(
                f"stage {ref!r} is in several pipelines ({names}): name the pipeline too",
                code="unknown_stage",
                available=available,
            )
        raise UnknownReference(
            f"no stage {ref!r} in the main pipeline {main.name!r} or any other; the stages: "
            + "; ".join(
                f"{p.name!r}: {_listing([{'id': s.id, 'name': s.name} for s in p.statuses])}"
                for p in self.pipelines
            ),
            code="unknown_stage",
            available=available,
        )

    def first_open_stage(self, pipeline: Pipeline) -> Status | None:
        """Where amoCRM puts a lead created without a stage: the first one after "unsorted"."""
        for status in sorted(pipeline.statuses, key=lambda s: (s.sort or 0, s.id)):
            if not status.is_unsorted and not status.is_closed:
                return status
        return pipeline.statuses[0] if pipeline.statuses else None

    def stage_pairs(
        self, pipeline_ref: str | None, stage_ref: str | None
    ) -> tuple[list[int] | None, list[tuple[int, int]] | None]:
        """The list filters of ``GET /leads?pipeline=&stage=``: pipeline ids, (pipeline, stage)
        pairs; a stage named without a pipeline matches that name in every pipeline."""
        pipelines = [self.pipeline(pipeline_ref)] if pipeline_ref is not None else None
        if stage_ref is None:
            return ([p.id for p in pipelines] if pipelines else None), None
        if pipelines is not None:
            return None, [(pipelines[0].id, self.stage(pipelines[0], stage_ref).id)]
        pairs = [(p.id, s.id) for p in self.pipelines for s in [_match(p.statuses, stage_ref)] if s]
        if not pairs:
            self.stage_anywhere(stage_ref)  # raises, listing the stages
        return None, pairs

    def lead_refs(
        self,
        *,
        pipeline: int | str | None,
        stage: int | str | None,
        current_pipeline_id: int | None,
        creating: bool,
    ) -> tuple[int | None, int | None]:
        """The (pipeline id, stage id) a lead's ``pipeline`` and ``stage`` name. A new lead
        without them: the main pipeline's first stage; a stage alone: of the lead's own
        pipeline (a new lead's: the main one, else the one pipeline that has it); a pipeline
        alone: its first stage when it is not the lead's. ``None`` for what stays as it is."""
        if pipeline is None and stage is None and not creating:
            return None, None
        if pipeline is None and stage is not None:
            chosen = self.pipeline_by_id(current_pipeline_id)
            if chosen is not None:
                return chosen.id, self.stage(chosen, stage).id
            found_pipeline, status = self.stage_anywhere(stage)
            return found_pipeline.id, status.id
        chosen = self.pipeline(pipeline)
        if stage is not None:
            return chosen.id, self.stage(chosen, stage).id
        if creating or chosen.id != current_pipeline_id:
            first = self.first_open_stage(chosen)
            return chosen.id, first.id if first is not None else None
        return chosen.id, None

    # --- custom fields ------------------------------------------------------------------------
    def fields(self, entity: str) -> list[CustomField]:
        return self.lead_fields if entity == "leads" else self.contact_fields

    def custom_field(self, entity: str, ref: str) -> CustomField:
        fields = self.fields(entity)
        wanted_id = _ref_id(ref)
        wanted = normalise_name(ref)
        found = (
            next((f for f in fields if f.code and normalise_name(f.code) == wanted), None)
            or next((f for f in fields if f.name and normalise_name(f.name) == wanted), None)
            or (next((f for f in fields if f.id == wanted_id), None) if wanted_id else None)
        )
        if found is None or found.code == MARKER_CODE:
            available = [
                {"id": f.id, "name": f.name, "code": f.code, "type": f.type}
                for f in fields
                if f.code != MARKER_CODE
            ]
            raise UnknownReference(
                f"no custom field {ref!r} on {entity}; its fields: "
                + (", ".join(f"{f['name']!r} (id {f['id']})" for f in available) or "none"),
                code="unknown_custom_field",
                available=available,
            )
        return found

    def marker_field(self, entity: str) -> CustomField | None:
        return next((f for f in self.fields(entity) if f.code == MARKER_CODE), None)

    def field_values(self, entity: str, given: dict[str, Any]) -> list[dict[str, Any]]:
        """amoCRM's ``custom_fields_values`` for ``{field: value}`` (``null`` clears a field),
        each with the field's name for the answer."""
        out: list[dict[str, Any]] = []
        for ref, value in given.items():
            cf = self.custom_field(entity, ref)
            values = None if value is None else _values(cf, value)
            out.append({"field_id": cf.id, "field_name": cf.name, "values": values})
        return out


def _match(items: list[Any], ref: int | str) -> Any:
    """By id (an int, or digits no name matches), else by name as :func:`normalise_name` folds."""
    if isinstance(ref, int) and not isinstance(ref, bool):
        return next((item for item in items if item.id == ref), None)
    wanted = normalise_name(str(ref))
    for item in items:
        if item.name is not None and normalise_name(item.name) == wanted:
            return item
    wanted_id = _ref_id(ref)
    return next((item for item in items if item.id == wanted_id), None) if wanted_id else None


def _bad_value(
    cf: CustomField, why: str, options: list[dict[str, Any]] | None = None
) -> ServiceError:
    return UnknownReference(
        f"custom field {cf.name!r} (id {cf.id}, {cf.type}): {why}",
        code="invalid_custom_field_value",
        available=options or [],
    )


def _values(cf: CustomField, value: Any) -> list[dict[str, Any]]:
    items = value if isinstance(value, list) else [value]
    kind = str(cf.type or "text")
    if not items:
        return []
    if len(items) > 1 and kind not in MULTI_TYPES:
        raise _bad_value(cf, "takes one value, not a list")
    out: list[dict[str, Any]] = []
    for item in items:
        if kind in ENUM_TYPES:
            options = [{"id": e.id, "name": e.value} for e in cf.enums]
            option = None
            if isinstance(item, int) and not isinstance(item, bool):
                option = next((e for e in cf.enums if e.id == item), None)
            elif isinstance(item, str):
                wanted = normalise_name(item)
                option = next(
                    (e for e in cf.enums if e.value and normalise_name(e.value) == wanted), None
                )
            if option is None:
                raise _bad_value(
                    cf, f"no option {item!r}; its options: {_listing(options)}", options
                )
            out.append({"enum_id": option.id, "value": option.value})
        elif kind == "checkbox":
            if not isinstance(item, bool):
                raise _bad_value(cf, "takes true or false")
            out.append({"value": item})
        elif kind in NUMBER_TYPES:
            if isinstance(item, bool) or not isinstance(item, int | float | str):
                raise _bad_value(cf, "takes a number")
            try:
                float(str(item).replace(",", "."))
            except ValueError:
                raise _bad_value(cf, f"{item!r} is not a number") from None
            out.append({"value": item})
        elif kind in DATE_TYPES:
            out.append({"value": _unix_time(cf, item)})
        else:
            if isinstance(item, bool):
                raise _bad_value(cf, "takes text")
            out.append({"value": str(item)})
    return out


def _unix_time(cf: CustomField, item: Any) -> int:
    if isinstance(item, int) and not isinstance(item, bool) and item >= 0:
        return item
    if isinstance(item, str):
        try:
            parsed = datetime.fromisoformat(item)
        except ValueError:
            try:
                day = date.fromisoformat(item)
            except ValueError:
                raise _bad_value(cf, f"{item!r} is not unix seconds or an ISO date") from None
            parsed = datetime(day.year, day.month, day.day, tzinfo=UTC)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return int(parsed.timestamp())
    raise _bad_value(cf, "takes unix seconds or an ISO date")


def _dump(items: list[Any]) -> list[Any]:
    return [item.model_dump(mode="json", by_alias=True) for item in items]


@dataclass
class CatalogueService:
    db: Database
    clients: ConnectionClients
    ttl: timedelta
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    async def cached(self, connection_id: str) -> Catalogue | None:
        async with self.db.read() as session:
            rows = await CatalogueRepository(session).load(connection_id)
        if "pipelines" not in rows:
            return None
        fetched = min(row.fetched_at for row in rows.values())
        return Catalogue(
            pipelines=[Pipeline.model_validate(p) for p in rows["pipelines"].data],
            lead_fields=[
                CustomField.model_validate(f) for f in rows.get("lead_fields", _EMPTY).data
            ],
            contact_fields=[
                CustomField.model_validate(f) for f in rows.get("contact_fields", _EMPTY).data
            ],
            fetched_at=fetched,
            complete=all(kind in rows for kind in KINDS),
        )

    async def get(
        self, connection: Connection, *, max_age: timedelta | None = None
    ) -> Catalogue | None:
        """The connection's catalogue, read from amoCRM when the cache is missing or older than
        ``max_age`` (the TTL by default); the stale cache (or None) when amoCRM cannot be asked."""
        max_age = self.ttl if max_age is None else max_age
        cached = await self.cached(connection.id)
        now = datetime.now(UTC)
        if cached is not None and cached.complete and now - cached.fetched_at <= max_age:
            return cached
        if connection.status != "active":
            return cached
        lock = self._locks.setdefault(connection.id, asyncio.Lock())
        async with lock:  # one read per connection in this process; the others take its result
            again = await self.cached(connection.id)
            if again is not None and again.complete and again.fetched_at > now - max_age:
                return again
            try:
                client = await self.clients.client(connection)
                return await asyncio.wait_for(self.fetch(connection.id, client), FETCH_TIMEOUT)
            except (AmoError, ConnectionDisconnected, TimeoutError) as exc:
                log.warning(
                    "connection %s: amoCRM's pipelines and fields could not be read (%s); %s",
                    connection.id,
                    type(exc).__name__,
                    "using the cached ones" if cached is not None else "none cached",
                )
                return cached

    async def fetch(self, connection_id: str, client: AmoClient) -> Catalogue:
        """Read everything from amoCRM and store it (raises what the client raises)."""
        pipelines = await client.pipelines.list()
        lead_fields = await client.custom_fields.all("leads")
        contact_fields = await client.custom_fields.all("contacts")
        now = datetime.now(UTC)
        async with self.db.transaction() as session:
            catalogue = CatalogueRepository(session)
            await catalogue.save(connection_id, "pipelines", _dump(pipelines), now)
            await catalogue.save(connection_id, "lead_fields", _dump(lead_fields), now)
            await catalogue.save(connection_id, "contact_fields", _dump(contact_fields), now)
        return Catalogue(pipelines, lead_fields, contact_fields, now)

    async def resolve(
        self, connection: Connection, catalogue: Catalogue | None, attempt: Any
    ) -> tuple[Catalogue | None, Any]:
        """``attempt(catalogue)``; if it refuses a name and the catalogue is more than a few
        seconds old, read the catalogue again and try once more."""
        try:
            return catalogue, attempt(catalogue)
        except UnknownReference:
            if (
                catalogue is None
                or connection.status != "active"
                or datetime.now(UTC) - catalogue.fetched_at < REFRESH_BEFORE_REFUSING
            ):
                raise
        fresh = await self.get(connection, max_age=timedelta(0))
        return fresh, attempt(fresh)

    async def ensure_marker(
        self, connection_id: str, client: AmoClient, entity: Literal["leads", "contacts"]
    ) -> CustomField:
        """The marker field of ``entity`` (``leads`` or ``contacts``), created in the account
        when it has none yet (one fields read, and one write the first time)."""
        cached = await self.cached(connection_id)
        found = cached.marker_field(entity) if cached is not None else None
        if found is not None:
            return found
        kind = "lead_fields" if entity == "leads" else "contact_fields"
        fields = await client.custom_fields.all(entity)
        found = next((f for f in fields if f.code == MARKER_CODE), None)
        if found is None:
            body = [{"name": MARKER_NAME, "type": "text", "code": MARKER_CODE, "sort": 10_000}]
            try:
                reply = await client.request_json(
                    "POST", f"{entity}/custom_fields", json=body, retry="create"
                )
                made = (reply or {}).get("_embedded", {}).get("custom_fields") or []
                found = CustomField.model_validate(made[0]) if made else None
            except (AmoValidationError, AmoAmbiguousWrite) as exc:
                # The code is taken (another worker created it meanwhile), or the outcome is
                # unknown: either way the field list says.
                log.info("creating the marker field of %s: %s; reading the fields", entity, exc)
            if found is None:
                fields = await client.custom_fields.all(entity)
                found = next((f for f in fields if f.code == MARKER_CODE), None)
            else:
                fields = [*fields, found]
        if found is None:
            raise ServiceError(
                f"amoCRM did not create the {MARKER_NAME!r} field on {entity}: the connected user "
                "needs the right to add fields",
                status_code=502,
            )
        async with self.db.transaction() as session:
            await CatalogueRepository(session).save(
                connection_id, kind, _dump(fields), datetime.now(UTC)
            )
        return found


class _Empty:
    data: list[Any] = []  # noqa: RUF012 - read-only stand-in for a missing cache row


_EMPTY = _Empty()
