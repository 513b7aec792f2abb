"""The root of every exception amobridge raises. Dependency-free on purpose: every layer imports it."""


class AmobridgeError(Exception):
    """Base class of all amobridge errors."""


class ConfigurationError(AmobridgeError):
    """The configuration cannot work; the message says which setting and what to put there."""


# The ``error`` code of an answer that names none of its own, by HTTP status.
CODE_FOR_STATUS: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "body_too_large",
    422: "validation_error",
    500: "internal_error",
    502: "amocrm_unavailable",
    503: "unavailable",
}


class ServiceError(AmobridgeError):
    """An expected failure the caller can act on; the web layer renders
    ``{"error": code, "detail": message, **extra}``.

    ``code`` is a stable snake_case name a client may branch on (``detail`` is for people and
    may be reworded): the class's own unless one is given; a ``status_code`` given without a code
    takes that status's (:data:`CODE_FOR_STATUS`)."""

    status_code = 400
    code = "bad_request"
    headers: dict[str, str] | None = None
    """Response headers the answer carries (e.g. ``Retry-After``); set after construction."""

    def __init__(
        self,
        detail: str,
        *,
        status_code: int | None = None,
        code: str | None = None,
        **extra: object,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if status_code is not None:
            self.status_code = status_code
            if code is None:
                code = CODE_FOR_STATUS.get(status_code)
        if code is not None:
            self.code = code
        self.extra = extra


class NotFound(ServiceError):
    status_code = 404
    code = "not_found"


class Unauthorized(ServiceError):
    status_code = 401
    code = "unauthorized"


class Forbidden(ServiceError):
    status_code = 403
    code = "forbidden"


class Conflict(ServiceError):
    status_code = 409
    code = "conflict"
