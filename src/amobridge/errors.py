"""The root of every exception amobridge raises. Dependency-free on purpose: every layer imports it."""


class AmobridgeError(Exception):
    """Base class of all amobridge errors."""


class ConfigurationError(AmobridgeError):
    """The configuration cannot work; the message says which setting and what to put there."""


class ServiceError(AmobridgeError):
    """An expected failure the caller can act on; the web layer renders ``{"detail": message}``."""

    status_code = 400

    def __init__(self, detail: str, *, status_code: int | None = None, **extra: object) -> None:
        super().__init__(detail)
        self.detail = detail
        if status_code is not None:
            self.status_code = status_code
        self.extra = extra


class NotFound(ServiceError):
    status_code = 404


class Unauthorized(ServiceError):
    status_code = 401


class Forbidden(ServiceError):
    status_code = 403


class Conflict(ServiceError):
    status_code = 409
