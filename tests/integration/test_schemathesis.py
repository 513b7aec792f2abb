"""Every route against the service's own OpenAPI document: schemathesis generates requests from
it (with the host app's key and without any), and each answer must be no 5xx, carry a status the
operation declares, and match the declared schema and media type.

Cases are generated first (hypothesis, no shrinking) and sent afterwards through ``stack.http``
in the test's own event loop: the database engine belongs to that loop, so schemathesis' own
synchronous ASGI client (another loop in another thread) is not used."""

from __future__ import annotations

from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

SERVICE_URL = "http://service.test"  # the stack fixture's base URL

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
MAX_EXAMPLES = 15
MIN_EXAMPLES = 5
REQUEST_BUDGET = 600
"""Requests the whole run may send: as routes are added, each gets fewer generated cases (never
fewer than MIN_EXAMPLES), so the suite's time stays bounded instead of growing with the API."""


def _examples_per_operation(operations: int) -> int:
    return max(MIN_EXAMPLES, min(MAX_EXAMPLES, REQUEST_BUDGET // (2 * operations)))


def _generate(operation: Any, examples: int) -> list[Any]:
    cases: list[Any] = []

    @given(case=operation.as_strategy())
    @hypothesis.settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,  # the same requests on every run
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def collect(case: Any) -> None:
        cases.append(case)

    collect()
    return cases


def _request(kwargs: dict[str, Any]) -> dict[str, Any]:
    """schemathesis serialises for ``requests``; httpx wants raw bytes as ``content``."""
    out = {k: v for k, v in kwargs.items() if k in {"method", "url", "headers", "params", "json"}}
    data = kwargs.get("data")
    if isinstance(data, bytes | str):
        out["content"] = data
    elif data is not None:
        out["data"] = data
    if kwargs.get("files"):
        out["files"] = kwargs["files"]
    return out


async def test_every_operation_conforms_with_and_without_credentials(stack: Any) -> None:
    schema = schemathesis.openapi.from_dict(stack.app.openapi())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 5
    examples = _examples_per_operation(len(operations))
    failures: list[str] = []
    sent = 0
    for operation in operations:
        for headers in ({}, stack.app_headers()):
            for case in _generate(operation, examples):
                kwargs = case.as_transport_kwargs(base_url=SERVICE_URL, headers=headers)
                response = await stack.http.request(**_request(kwargs))
                sent += 1
                try:
                    case.validate_response(response, checks=CHECKS, headers=headers)
                except FailureGroup as error:
                    label = f"{operation.label} ({'key' if headers else 'anonymous'})"
                    failures.append(f"{label} -> {response.status_code}: {error.exceptions[0]}")
    assert not failures, "\n".join(sorted(set(failures)))
    assert sent > 100


pytestmark = pytest.mark.slow
