"""Request bodies in, amoCRM's ``validation-errors`` out.

amoCRM validates with Symfony's validator and reports each violation as ``{"code", "path",
"detail"}`` under the ``request_id`` of the item it belongs to. Payload shapes are pydantic
models (``extra="forbid"``, strict types); their errors map to amoCRM's codes:

========================  ==================  ===============================================
pydantic error            amoCRM code         detail
========================  ==================  ===============================================
``*_type`` (wrong type)   InvalidType         ``This value should be of type int.`` (string,
                                              bool, array, object, number)
``missing``               FieldMissing        ``This field is missing.``
``extra_forbidden``       ExtraFields         ``This field was not expected.``
``greater_than_equal``,   OutOfRange          ``This value should be between 0 and N.``
``less_than_equal``
``too_long``,             OutOfRange          ``This collection should contain N elements or
``string_too_long``                           less.`` / ``This value is too long. …``
(reference checks)        NotSupportedChoice  ``The value you selected is not a valid choice.``
========================  ==================  ===============================================

InvalidType and NotSupportedChoice (with their details) are what amoCRM sends (captured
replies); FieldMissing, ExtraFields and OutOfRange are the sandbox's names for Symfony's
missing-field, extra-field and range violations. Paths are dotted, as amoCRM's are:
``custom_fields_values.0.field_id``, ``_embedded.contacts.0.responsible_user_id``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError
from starlette.requests import Request

from amobridge.sandbox.http import ApiProblem, read_json

INVALID_TYPE = "InvalidType"
NOT_SUPPORTED_CHOICE = "NotSupportedChoice"
FIELD_MISSING = "FieldMissing"
EXTRA_FIELDS = "ExtraFields"
OUT_OF_RANGE = "OutOfRange"

CHOICE_DETAIL = "The value you selected is not a valid choice."
MISSING_DETAIL = "This field is missing."

# amoCRM ids, dates and prices are integers; the sandbox keeps them within JSON's safe range.
MAX_INT = 2**53 - 1
UInt = Annotated[int, Field(ge=0, le=MAX_INT)]

_TYPE_NAMES = {
    "int_type": "int",
    "int_parsing": "int",
    "string_type": "string",
    "bool_type": "bool",
    "float_type": "float",
    "list_type": "array",
    "dict_type": "object",
    "model_type": "object",
    "model_attributes_type": "object",
}


class Payload(BaseModel):
    """A request body item: unknown fields and loose types are validation errors."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ValidationFailed(Exception):
    """Raised by the shared create/update code; the API renders it as amoCRM's 400, the control
    API as a 422."""

    def __init__(self, groups: list[dict[str, Any]]) -> None:
        super().__init__("Request validation failed")
        self.groups = groups


class Problems:
    """Violations collected over a whole request, grouped by ``request_id`` as amoCRM reports
    them. Nothing is written unless the whole request is valid."""

    def __init__(self) -> None:
        self._groups: dict[str, list[dict[str, str]]] = {}

    def add(self, request_id: str, code: str, path: str, detail: str) -> None:
        self._groups.setdefault(request_id, []).append(
            {"code": code, "path": path, "detail": detail}
        )

    def item(self, request_id: str, prefix: str = "") -> Checker:
        return Checker(self, request_id, prefix)

    def __bool__(self) -> bool:
        return bool(self._groups)

    def raise_if_any(self) -> None:
        if self._groups:
            raise ValidationFailed(
                [{"request_id": rid, "errors": errors} for rid, errors in self._groups.items()]
            )


class Checker:
    """Reports violations of one item, or of a nested part of it (under ``prefix``); an item
    with any violation, nested or not, is ``failed``."""

    def __init__(
        self, problems: Problems, request_id: str, prefix: str = "", root: Checker | None = None
    ) -> None:
        self.problems = problems
        self.request_id = request_id
        self.prefix = prefix
        self._root = root or self
        self._failed = False

    @property
    def failed(self) -> bool:
        return self._root._failed

    def path(self, path: str) -> str:
        if not self.prefix:
            return path
        return f"{self.prefix}.{path}" if path else self.prefix

    def error(self, code: str, path: str, detail: str) -> None:
        self._root._failed = True
        self.problems.add(self.request_id, code, self.path(path), detail)

    def choice(self, path: str) -> None:
        """A reference to something that does not exist (a field, user, status, enum, entity)."""
        self.error(NOT_SUPPORTED_CHOICE, path, CHOICE_DETAIL)

    def missing(self, path: str) -> None:
        self.error(FIELD_MISSING, path, MISSING_DETAIL)

    def invalid_type(self, path: str, type_name: str) -> None:
        self.error(INVALID_TYPE, path, f"This value should be of type {type_name}.")

    def out_of_range(self, path: str, detail: str) -> None:
        self.error(OUT_OF_RANGE, path, detail)

    def nested(self, prefix: str) -> Checker:
        return Checker(self.problems, self.request_id, self.path(prefix), self._root)


M = TypeVar("M", bound=BaseModel)


def parse_item(model: type[M], item: Any, check: Checker) -> M | None:
    """Validate one body item against ``model``; report violations through ``check``.

    Like amoCRM, which reports type errors and reference errors together, a malformed item still
    yields a model of its well-formed fields (top-level fields with errors are left out), so the
    caller can check references too; ``check.failed`` is then set and nothing may be written.
    None when the item is not an object at all.
    """
    try:
        return model.model_validate(item)
    except ValidationError as exc:
        bad: set[str] = set()
        for error in exc.errors(include_url=False, include_input=False):
            code, detail = _amo_error(error)
            loc = error["loc"]
            check.error(code, ".".join(str(part) for part in loc), detail)
            if loc and isinstance(loc[0], str):
                bad.add(loc[0])
    if not isinstance(item, dict) or not bad:
        return None
    try:
        return model.model_validate({k: v for k, v in item.items() if k not in bad})
    except ValidationError:
        return None  # a required field was the malformed one


def reported(item: Any, name: str, check: Checker) -> bool:
    """Whether ``name`` was sent but already reported as malformed (so it is not "missing")."""
    return check.failed and isinstance(item, dict) and item.get(name) is not None


def _amo_error(error: Any) -> tuple[str, str]:
    kind: str = error["type"]
    ctx: dict[str, Any] = error.get("ctx") or {}
    if kind == "missing":
        return FIELD_MISSING, MISSING_DETAIL
    if kind == "extra_forbidden":
        return EXTRA_FIELDS, "This field was not expected."
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        return OUT_OF_RANGE, f"This value should be between 0 and {MAX_INT}."
    if kind == "too_long":
        return OUT_OF_RANGE, (
            f"This collection should contain {ctx.get('max_length')} elements or less."
        )
    if kind == "string_too_long":
        return OUT_OF_RANGE, (
            f"This value is too long. It should have {ctx.get('max_length')} characters or less."
        )
    if kind == "too_short":
        return OUT_OF_RANGE, (
            f"This collection should contain {ctx.get('min_length')} elements or more."
        )
    type_name = _TYPE_NAMES.get(kind)
    if type_name is not None:
        return INVALID_TYPE, f"This value should be of type {type_name}."
    return INVALID_TYPE, "This value is not valid."


def request_id_of(item: Any, index: int) -> str:
    """What amoCRM echoes as ``request_id``: the value sent (as a string), else the index."""
    if isinstance(item, dict):
        sent = item.get("request_id")
        if isinstance(sent, str):
            return sent
        if isinstance(sent, int) and not isinstance(sent, bool):
            return str(sent)
    return str(index)


def _request_id(value: Any) -> Any:
    if value is None or (isinstance(value, str | int) and not isinstance(value, bool)):
        return value
    raise PydanticCustomError("string_type", "Input should be a valid string")


RequestId = Annotated[Any, AfterValidator(_request_id)]
"""``request_id``: a string (an integer is accepted and echoed back as a string)."""


# --- bodies ------------------------------------------------------------------------------------


async def read_body(request: Request) -> Any:
    """The JSON body as amoCRM's PHP would decode it: empty → 400 ``Request data can not be
    empty``; malformed JSON, ``NaN``/``Infinity``, lone UTF-16 surrogates or nesting too deep to
    decode → 400 (PHP's ``json_decode`` refuses all of them)."""
    try:
        data = await read_json(request)
    except RecursionError:
        raise ApiProblem.of(400, "Request body is not valid JSON") from None
    if not _decodable(data):
        raise ApiProblem.of(400, "Request body is not valid JSON")
    return data


def _decodable(data: Any) -> bool:
    for value in _walk(data):
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if isinstance(value, str) and not _encodable(value):
            return False
    return True


def _walk(data: Any) -> Iterator[Any]:
    stack = [data]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        else:
            yield value


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def body_array(data: Any, limit: int) -> list[Any]:
    """A batch body: a non-empty JSON array of at most ``limit`` items (amoCRM: 250)."""
    if isinstance(data, dict) and not data:
        raise ApiProblem.of(400, "Request data can not be empty")
    if not isinstance(data, list):
        raise ApiProblem.validation(
            [
                {
                    "request_id": "0",
                    "errors": [
                        {
                            "code": INVALID_TYPE,
                            "path": "",
                            "detail": "This value should be of type array.",
                        }
                    ],
                }
            ]
        )
    if not data:
        raise ApiProblem.of(400, "Request data can not be empty")
    if len(data) > limit:
        raise ApiProblem.of(422, f"Limit {limit} per page", title="Unprocessable Entity")
    return data


def single_object(data: Any) -> dict[str, Any]:
    """A single-entity body (``PATCH /leads/{id}``): a JSON object."""
    if not isinstance(data, dict):
        raise ApiProblem.validation(
            [
                {
                    "request_id": "0",
                    "errors": [
                        {
                            "code": INVALID_TYPE,
                            "path": "",
                            "detail": "This value should be of type object.",
                        }
                    ],
                }
            ]
        )
    if not data:
        raise ApiProblem.of(400, "Request data can not be empty")
    return data
