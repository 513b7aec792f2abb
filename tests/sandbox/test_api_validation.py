"""Conformance: malformed requests get amoCRM's 4xx bodies, never a 500
(https://www.amocrm.ru/developers/content/crm_platform/error-codes)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amobridge.sandbox import Clock, Sandbox, SandboxConfig, create_sandbox_app
from sandbox_support import Connected

VALIDATION_ENVELOPE = {
    "title": "Bad Request",
    "type": "https://httpstatus.es/400",
    "status": 400,
    "detail": "Request validation failed",
}


def errors(reply: httpx.Response) -> list[dict[str, Any]]:
    assert reply.status_code == 400, reply.text
    assert reply.headers["content-type"].startswith("application/problem+json")
    body = reply.json()
    assert {k: body[k] for k in VALIDATION_ENVELOPE} == VALIDATION_ENVELOPE
    found: list[dict[str, Any]] = body["validation-errors"]
    return found


async def test_unknown_custom_field_id(acme: Connected) -> None:
    """An unknown ``field_id`` → ``NotSupportedChoice`` at ``custom_fields_values.0.field_id``
    inside amoCRM's validation envelope (captured reply)."""
    reply = await acme.api.post(
        "/api/v4/leads",
        json=[
            {
                "name": "some lead",
                "custom_fields_values": [{"field_id": 123, "values": [{"value": "Текст"}]}],
                "request_id": "0",
            }
        ],
    )
    assert errors(reply) == [
        {
            "request_id": "0",
            "errors": [
                {
                    "code": "NotSupportedChoice",
                    "path": "custom_fields_values.0.field_id",
                    "detail": "The value you selected is not a valid choice.",
                }
            ],
        }
    ]


async def test_unknown_select_option(acme: Connected) -> None:
    """As captured from amoCRM: a select value that is not an option → NotSupportedChoice at
    ``custom_fields_values.N.values.0.value``."""
    field = (
        await acme.api.post(
            "/api/v4/leads/custom_fields",
            json=[{"name": "Город", "type": "select", "enums": [{"value": "Москва"}]}],
        )
    ).json()["_embedded"]["custom_fields"][0]
    reply = await acme.api.post(
        "/api/v4/leads",
        json=[{"custom_fields_values": [{"field_id": field["id"], "values": [{"value": "Тула"}]}]}],
    )
    [group] = errors(reply)
    assert group["errors"][0]["path"] == "custom_fields_values.0.values.0.value"
    assert group["errors"][0]["code"] == "NotSupportedChoice"


async def test_wrong_types_and_unknown_fields(acme: Connected) -> None:
    """Wrong JSON types → ``InvalidType`` (``This value should be of type int.``, captured);
    unknown fields → ``ExtraFields``; each under its item's ``request_id``."""
    reply = await acme.api.post(
        "/api/v4/leads",
        json=[
            {"name": "ok"},
            {"price": "100", "request_id": "second"},
            {"name": 5, "colour": "red", "_embedded": []},
        ],
    )
    assert errors(reply) == [
        {
            "request_id": "second",
            "errors": [
                {
                    "code": "InvalidType",
                    "path": "price",
                    "detail": "This value should be of type int.",
                }
            ],
        },
        {
            "request_id": "2",
            "errors": [
                {
                    "code": "InvalidType",
                    "path": "name",
                    "detail": "This value should be of type string.",
                },
                {
                    "code": "InvalidType",
                    "path": "_embedded",
                    "detail": "This value should be of type object.",
                },
                {
                    "code": "ExtraFields",
                    "path": "colour",
                    "detail": "This field was not expected.",
                },
            ],
        },
    ]
    # Nothing was written: the valid first item is not created either.
    assert (await acme.api.get("/api/v4/leads")).status_code == 204


async def test_unknown_user_and_negative_price(acme: Connected) -> None:
    """References to unknown users → NotSupportedChoice; out-of-range numbers → OutOfRange."""
    reply = await acme.api.post("/api/v4/leads", json=[{"responsible_user_id": 1, "price": -1}])
    [group] = errors(reply)
    assert {(e["code"], e["path"]) for e in group["errors"]} == {
        ("OutOfRange", "price"),
        ("NotSupportedChoice", "responsible_user_id"),
    }


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"", "Request data can not be empty"),
        (b"   ", "Request data can not be empty"),
        (b"[]", "Request data can not be empty"),
        (b"{}", "Request data can not be empty"),
        (b'[{"name": "a"', "Request body is not valid JSON"),
        (b"[NaN]", "Request body is not valid JSON"),
        (b'[{"name": "\\ud800"}]', "Request body is not valid JSON"),
        (b"\xff\xfe", "Request body is not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "Request body is not valid JSON"),
    ],
)
async def test_empty_and_malformed_bodies(acme: Connected, body: bytes, detail: str) -> None:
    """An empty body is 400 ``Request data can not be empty``; malformed JSON (also what PHP's
    json_decode refuses: NaN, lone surrogates, absurd nesting) is a 400 problem."""
    reply = await acme.api.post(
        "/api/v4/leads", content=body, headers={"content-type": "application/json"}
    )
    assert reply.status_code == 400
    assert reply.json() == {
        "title": "Bad Request",
        "type": "https://httpstatus.es/400",
        "status": 400,
        "detail": detail,
    }


async def test_array_required(acme: Connected) -> None:
    """``POST /leads`` takes a JSON array; an object is a validation error."""
    [group] = errors(await acme.api.post("/api/v4/leads", json={"name": "x"}))
    assert group["errors"][0]["code"] == "InvalidType"
    assert group["errors"][0]["detail"] == "This value should be of type array."
    [group] = errors(await acme.api.post("/api/v4/leads", json=["not an object"]))
    assert group["errors"][0]["detail"] == "This value should be of type object."


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v4/unknown"),
        ("POST", "/api/v4/deals"),
        ("DELETE", "/api/v4/leads"),
        ("GET", "/api/v4/leads/abc"),
    ],
)
async def test_unknown_route_is_404_cannot(acme: Connected, method: str, path: str) -> None:
    """An unknown route is a 404 ``Cannot {METHOD} {path}``."""
    reply = await acme.api.request(method, path)
    assert reply.status_code == 404
    assert reply.json()["detail"] == f"Cannot {method} {path}"


async def test_name_length_limit_by_setting(acme: Connected, control: httpx.AsyncClient) -> None:
    """amoCRM documents no name limit; a name past ``name_max_length`` (if set) → OutOfRange."""
    await control.patch("/_sandbox/config", json={"name_max_length": 5})
    [group] = errors(await acme.api.post("/api/v4/contacts", json=[{"name": "Константин"}]))
    assert group["errors"][0]["code"] == "OutOfRange"
    assert group["errors"][0]["path"] == "name"
    ok = await acme.api.post("/api/v4/contacts", json=[{"name": "Костя"}])
    assert ok.status_code == 200


# --- property: no 5xx --------------------------------------------------------------------------

KEYS = [
    "id",
    "name",
    "price",
    "status_id",
    "pipeline_id",
    "responsible_user_id",
    "created_by",
    "created_at",
    "updated_at",
    "first_name",
    "last_name",
    "request_id",
    "custom_fields_values",
    "tags_to_add",
    "tags_to_delete",
    "_embedded",
    "field_id",
    "field_code",
    "values",
    "value",
    "enum_id",
    "enum_code",
    "contacts",
    "companies",
    "tags",
    "is_main",
]


@dataclass(frozen=True)
class World:
    """Ids that exist in the fuzzed account, so generated references sometimes hit."""

    lead_id: int
    contact_id: int
    users: list[int]
    pipelines: list[int]
    statuses: list[int]
    fields: list[int]
    enums: list[int]

    @property
    def refs(self) -> list[int]:
        return [
            self.lead_id,
            self.contact_id,
            *self.users,
            *self.pipelines,
            *self.statuses,
            *self.fields,
            *self.enums,
        ]


def json_values(world: World) -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**64), max_value=2**64),
        st.sampled_from([*world.refs, 0, 142, 143, 2**53, -1]),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=20),
        st.sampled_from(["PHONE", "EMAIL", "WORK", "MOB", "+79001234567", "a@b.c", ""]),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3),
            st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=5),
        ),
        max_leaves=8,
    )


def plausible_items(
    world: World, entity: str, update: bool, noisy: bool
) -> st.SearchStrategy[dict[str, Any]]:
    """Items shaped like real leads or contacts. ``noisy``: references may point anywhere and
    each field is now and then replaced by random JSON; otherwise references exist, so most
    items reach the writes."""
    noise = json_values(world) if noisy else st.nothing()
    anything = st.sampled_from([*world.refs, 1, 142, 143]) if noisy else st.nothing()

    def mostly(valid: list[int]) -> st.SearchStrategy[int]:
        return st.one_of(st.sampled_from(valid), anything)

    text = st.text(max_size=12)
    values_list = st.lists(
        st.fixed_dictionaries(
            {},
            optional={
                "value": st.one_of(
                    *[st.text(min_size=1, max_size=12)] * 4, st.integers(-5, 5), st.booleans()
                ),
                "enum_code": st.sampled_from(["WORK", "MOB", "WORK", "MOB", "PRIV", "NOPE"]),
            },
        ),
        max_size=2,
    )
    field_values = st.lists(
        st.fixed_dictionaries(
            {
                "field_id": mostly(world.fields),
                "values": st.one_of(st.none(), values_list),
            },
        ),
        max_size=2,
    )
    contacts = st.lists(
        st.fixed_dictionaries(
            {"id": mostly([world.contact_id])}, optional={"is_main": st.booleans()}
        ),
        max_size=2,
    )
    tags = st.lists(
        st.one_of(
            *[st.fixed_dictionaries({"name": st.text(min_size=1, max_size=8)})] * 4,
            st.fixed_dictionaries({"id": anything}),  # no tag exists: always a wrong reference
        ),
        max_size=2,
    )
    good: dict[str, st.SearchStrategy[Any]] = {
        "name": text,
        "responsible_user_id": mostly(world.users),
        "created_at": st.integers(0, 2**31),
        "request_id": st.one_of(text, st.integers(0, 9)),
        "custom_fields_values": field_values,
        "tags_to_add": tags,
        "tags_to_delete": tags,
    }
    if entity == "leads":
        good["price"] = st.integers(0, 10**6)
        good["status_id"] = mostly(world.statuses)
        good["pipeline_id"] = mostly(world.pipelines)
        good["_embedded"] = st.fixed_dictionaries({}, optional={"contacts": contacts, "tags": tags})
    else:
        good["first_name"] = text
        good["last_name"] = text
        good["_embedded"] = st.fixed_dictionaries({}, optional={"tags": tags})
    optional = {key: st.one_of(*[strategy] * 7, noise) for key, strategy in good.items()}
    own_id = world.lead_id if entity == "leads" else world.contact_id
    required = {"id": st.one_of(*[st.just(own_id)] * 7, noise)} if update else {}
    return st.fixed_dictionaries(required, optional=optional)


@dataclass(frozen=True)
class Target:
    method: str
    path: str
    entity: str
    update: bool
    single: bool = False


def requests(world: World, noisy: bool) -> st.SearchStrategy[tuple[Target, bytes]]:
    """(endpoint, body). ``noisy``: plausible items with random JSON mixed in, random JSON and
    non-JSON bytes; otherwise well-formed items with existing references only, so that most
    writes succeed and the write paths themselves are exercised."""
    noise = json_values(world)
    raw = st.one_of(
        st.binary(max_size=100),
        st.sampled_from([b"[NaN]", b'["\\udfff"]', b"[1e999]", b"[{", b"null"]),
        noise.map(lambda v: json.dumps(v).encode()),
    )
    targets = [
        Target("POST", "/api/v4/leads", "leads", False),
        Target("PATCH", "/api/v4/leads", "leads", True),
        Target("PATCH", f"/api/v4/leads/{world.lead_id}", "leads", False, single=True),
        Target("POST", "/api/v4/leads/complex", "leads", False),
        Target("POST", "/api/v4/contacts", "contacts", False),
        Target("PATCH", "/api/v4/contacts", "contacts", True),
        Target("PATCH", f"/api/v4/contacts/{world.contact_id}", "contacts", False, single=True),
    ]
    per_target = []
    for target in targets:
        item = plausible_items(world, target.entity, target.update, noisy)
        body: st.SearchStrategy[Any] = (
            item if target.single else st.lists(item, min_size=1, max_size=3)
        )
        encoded = body.map(lambda v: json.dumps(v).encode())
        per_target.append(st.tuples(st.just(target), st.one_of(encoded, raw) if noisy else encoded))
    return st.one_of(per_target)


@pytest.mark.parametrize("noisy", [True, False], ids=["random", "plausible"])
def test_random_bodies_never_answer_5xx(signing_key: rsa.RSAPrivateKey, noisy: bool) -> None:
    """Whatever is POSTed or PATCHed to leads and contacts (random JSON, non-JSON, or
    well-formed items with wrong references), the answer is a 2xx or an amoCRM-shaped 4xx —
    never a 5xx."""
    sandbox = Sandbox(
        SandboxConfig(rate_limit_enabled=False), clock=Clock(), signing_key=signing_key
    )
    app = create_sandbox_app(sandbox=sandbox)
    account = sandbox.state.create_account("acme")
    integration = sandbox.state.create_integration("fuzz", "https://app.example/cb")
    token = sandbox.tokens.issue_long_lived(integration, account, 86400).token
    statuses: Counter[int] = Counter()

    with asyncio.Runner() as runner:
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="https://acme.amocrm.ru",
            headers={"Authorization": f"Bearer {token}"},
        )

        async def seed() -> World:
            lead = await client.post("/api/v4/leads", json=[{"name": "seed"}])
            contact = await client.post("/api/v4/contacts", json=[{"name": "seed"}])
            lead_id = lead.json()["_embedded"]["leads"][0]["id"]
            contact_id = contact.json()["_embedded"]["contacts"][0]["id"]
            fields = list(account.custom_fields["contacts"].values())
            return World(
                lead_id,
                contact_id,
                users=[account.admin_user_id],
                pipelines=[account.main_pipeline().id],
                statuses=[s.id for s in account.main_pipeline().statuses],
                fields=[f.id for f in fields],
                enums=[e.id for f in fields for e in f.enums or ()],
            )

        world = runner.run(seed())

        @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(request=requests(world, noisy))
        def send(request: tuple[Target, bytes]) -> None:
            target, body = request
            reply = runner.run(
                client.request(
                    target.method,
                    target.path,
                    content=body,
                    headers={"content-type": "application/json"},
                )
            )
            statuses[reply.status_code] += 1
            assert 200 <= reply.status_code < 500, (reply.status_code, reply.text)
            if reply.status_code >= 400:
                problem = reply.json()
                assert problem["status"] == reply.status_code
                assert problem["type"] == f"https://httpstatus.es/{reply.status_code}"

        try:
            send()
        finally:
            runner.run(client.aclose())
    # The property is only worth something if writes happened too, not just rejections.
    assert statuses[200] >= (1 if noisy else 50), statuses
