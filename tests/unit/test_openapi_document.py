"""The OpenAPI document is enough to write a client from: one error schema for every error
answer (never FastAPI's ``HTTPValidationError``), the credentials as security schemes, a typed
body for each answer, and an example for every answer and every request body — each example
valid against its own schema."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest

from amobridge.connect.schemas import ERROR_CODES
from amobridge.errors import CODE_FOR_STATUS
from amobridge.settings import Settings
from amobridge.storage.crypto import generate_key
from amobridge.web.app import create_app

SRC = Path(__file__).resolve().parents[2] / "src" / "amobridge"
SNAKE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
CREDENTIALS = [{"apiKey": []}, {"bearerAuth": []}]
# Called by amoCRM, a browser following a link, or a probe: no credentials.
OPEN = {
    ("get", "/amocrm/callback"),
    ("post", "/amocrm/secrets"),
    ("get", "/amocrm/uninstall"),
    ("get", "/amocrm/auth/continue"),
    ("post", "/webhooks/amocrm/{secret}"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/"),
}


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    database = tmp_path_factory.mktemp("openapi") / "unused.db"
    settings = Settings(
        environment="test",
        database={"url": f"sqlite+aiosqlite:///{database}"},
        security={"secret_keys": [generate_key()], "jwt_secret": "x" * 32},
        server={"public_url": "https://connect.example.com", "run_workers": False},
    )
    # Round-tripped through JSON: what /openapi.json serves.
    found: dict[str, Any] = json.loads(json.dumps(create_app(settings).openapi()))
    return found


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            yield method, path, operation


def _examples(media: dict[str, Any]) -> list[Any]:
    if "example" in media:
        return [media["example"]]
    return [example["value"] for example in media.get("examples", {}).values()]


def _validator(document: dict[str, Any], schema: dict[str, Any]) -> Any:
    # The document's components ride along, so "#/components/schemas/…" resolves.
    return jsonschema_rs.validator_for(
        {**schema, "components": document["components"]}, validate_formats=True
    )


def test_no_operation_documents_fastapis_validation_error(document: dict[str, Any]) -> None:
    assert "HTTPValidationError" not in json.dumps(document)
    assert "ValidationError" not in document["components"]["schemas"]


def test_every_json_error_answer_is_the_error_body(document: dict[str, Any]) -> None:
    error_body = document["components"]["schemas"]["ErrorBody"]
    assert set(error_body["required"]) == {"error", "detail"}
    assert error_body["properties"]["detail"]["type"] == "string"
    checked = 0
    for method, path, operation in _operations(document):
        assert "500" in operation["responses"], (method, path)
        # Any route that uses the database may find it unusable; / and /healthz do not use it.
        assert ("503" in operation["responses"]) == (path not in {"/", "/healthz"}), path
        if (method, path) in {("get", "/amocrm/auth"), ("post", "/amocrm/exchange-code")}:
            assert operation["responses"]["422"]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/ErrorBody"
            }
        for status, answer in operation["responses"].items():
            media = answer.get("content", {}).get("application/json")
            if int(status) < 400 or media is None or (path, status) == ("/readyz", "503"):
                continue
            assert media["schema"] == {"$ref": "#/components/schemas/ErrorBody"}, (path, status)
            checked += 1
    assert checked > 40


def test_credentials_are_security_schemes_not_header_parameters(
    document: dict[str, Any],
) -> None:
    schemes = document["components"]["securitySchemes"]
    assert schemes["apiKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": schemes["apiKey"]["description"],
    }
    assert schemes["bearerAuth"]["type"] == "http"
    assert schemes["bearerAuth"]["scheme"] == "bearer"
    for method, path, operation in _operations(document):
        names = {p["name"].lower() for p in operation.get("parameters", []) if p["in"] == "header"}
        assert not names & {"authorization", "x-api-key"}, (method, path)
        if (method, path) in OPEN:
            assert "security" not in operation, (method, path)
        else:
            assert operation["security"] == CREDENTIALS, (method, path)


def _response_schema(document: dict[str, Any], method: str, path: str, status: str) -> Any:
    answer = document["paths"][path][method]["responses"][status]
    return answer["content"]["application/json"]["schema"]


@pytest.mark.parametrize(
    ("method", "path", "status", "model"),
    [
        ("get", "/amocrm/status", "200", "ConnectionStatus"),
        ("post", "/amocrm/exchange-code", "200", "ConnectionStatus"),
        ("post", "/amocrm/tokens", "201", "ConnectionStatus"),
        ("delete", "/amocrm/disconnect", "200", "Disconnected"),
        ("post", "/amocrm/disconnect", "200", "Disconnected"),
        ("get", "/amocrm/uninstall", "200", "Uninstalled"),
        ("post", "/amocrm/secrets", "200", "SecretsAccepted"),
        ("get", "/amocrm/auth", "200", "ConnectLink"),
        ("get", "/healthz", "200", "Health"),
        ("get", "/readyz", "200", "Ready"),
        ("get", "/readyz", "503", "NotReady"),
        ("get", "/", "200", "ServiceIndex"),
    ],
)
def test_answers_are_typed(
    document: dict[str, Any], method: str, path: str, status: str, model: str
) -> None:
    assert _response_schema(document, method, path, status) == {
        "$ref": f"#/components/schemas/{model}"
    }


def test_the_status_schema_keeps_the_keys_clients_read(document: dict[str, Any]) -> None:
    schema = document["components"]["schemas"]["ConnectionStatus"]
    assert set(schema["required"]) == {
        "connected",
        "hasTokens",
        "domain",
        "accountId",
        "expiresAt",
        "lastRefreshAt",
        "lastError",
        "status",
    }
    assert set(schema["properties"]) - set(schema["required"]) == {
        "longLived",
        "connectionId",
        "verified",
        "verifyError",
    }
    assert schema["properties"]["status"]["enum"] == [
        "not_connected",
        "active",
        "reauth_required",
        "disconnected",
    ]


def test_every_answer_and_request_body_has_an_example(document: dict[str, Any]) -> None:
    missing: list[str] = []
    for method, path, operation in _operations(document):
        label = f"{method.upper()} {path}"
        for status, answer in operation["responses"].items():
            for media_type, media in answer.get("content", {}).items():
                if not _examples(media):
                    missing.append(f"{label} -> {status} {media_type}")
        for media_type, media in operation.get("requestBody", {}).get("content", {}).items():
            if not _examples(media):
                missing.append(f"{label} request body {media_type}")
    assert not missing, "\n".join(missing)


def test_the_main_errors_have_examples_of_their_codes(document: dict[str, Any]) -> None:
    def codes(method: str, path: str, status: str) -> set[str]:
        media = document["paths"][path][method]["responses"][status]["content"]
        return {value["error"] for value in _examples(media["application/json"])}

    assert codes("get", "/amocrm/status", "401") >= {"unauthorized", "token_expired"}
    assert codes("get", "/amocrm/status", "400") >= {"owner_required"}
    assert codes("get", "/amocrm/status", "403") == {"owner_mismatch"}
    assert codes("delete", "/amocrm/disconnect", "404") == {"connection_not_found"}
    assert codes("post", "/amocrm/exchange-code", "502") == {"amocrm_unavailable"}
    assert codes("post", "/amocrm/tokens", "413") == {"body_too_large"}
    assert codes("get", "/amocrm/auth", "422") == {"validation_error"}


def test_every_example_matches_its_schema(document: dict[str, Any]) -> None:
    wrong: list[str] = []
    checked = 0
    for method, path, operation in _operations(document):
        label = f"{method.upper()} {path}"
        media_by_place = [
            (f"{status} {media_type}", media)
            for status, answer in operation["responses"].items()
            for media_type, media in answer.get("content", {}).items()
        ] + [
            (f"request {media_type}", media)
            for media_type, media in operation.get("requestBody", {}).get("content", {}).items()
        ]
        for place, media in media_by_place:
            if "schema" not in media:
                continue
            validator = _validator(document, media["schema"])
            for example in _examples(media):
                checked += 1
                for error in validator.iter_errors(example):
                    wrong.append(f"{label} {place}: {error}")
        for parameter in operation.get("parameters", []):
            validator = _validator(document, parameter["schema"])
            for example in parameter.get("examples", {}).values():
                checked += 1
                if not validator.is_valid(example["value"]):
                    wrong.append(f"{label} parameter {parameter['name']}: {example['value']!r}")
    assert not wrong, "\n".join(wrong)
    assert checked > 60


def test_parameters_are_described(document: dict[str, Any]) -> None:
    owner = next(
        p for p in document["paths"]["/amocrm/status"]["get"]["parameters"] if p["name"] == "owner"
    )
    assert owner["examples"]["owner"]["value"] == "user-42"
    assert "255" in owner["description"]
    names = {p["name"] for p in document["paths"]["/amocrm/auth"]["get"]["parameters"]}
    assert {"owner", "return", "redirect", "format", "token"} <= names
    described = [
        p["name"]
        for p in document["paths"]["/amocrm/auth"]["get"]["parameters"]
        if p["name"] in {"owner", "return", "redirect", "format", "token"}
        and not p.get("description")
    ]
    assert not described, described


def _codes_in_source() -> set[str]:
    found: set[str] = set()
    for path in SRC.rglob("*.py"):
        if "sandbox" in path.relative_to(SRC).parts:
            continue
        text = path.read_text(encoding="utf-8")
        found.update(re.findall(r'\bcode="([a-z_]+)"', text))
        found.update(re.findall(r'^    code = "([a-z_]+)"$', text, re.MULTILINE))  # a class's
        # POST /amocrm/exchange-code answers a failed exchange with its ConnectFailure's code.
        found.update(re.findall(r'ConnectFailure\("([a-z_]+)"', text))
    return found


def test_every_error_code_the_service_sends_is_documented() -> None:
    """Each code raised in the source, and each status's own, is in the catalogue the OpenAPI
    document's examples and descriptions come from."""
    sent = _codes_in_source() | set(CODE_FOR_STATUS.values())
    assert "connection_not_found" in sent
    assert sent <= set(ERROR_CODES), sorted(sent - set(ERROR_CODES))
    assert all(SNAKE.match(code) for code in ERROR_CODES)
    for code, (status, detail) in ERROR_CODES.items():
        assert 400 <= status <= 599, code
        assert detail.strip(), code
