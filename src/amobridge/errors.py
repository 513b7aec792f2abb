"""The root of every exception amobridge raises. Dependency-free on purpose: every layer imports it."""


class AmobridgeError(Exception):
    """Base class of all amobridge errors."""


class ConfigurationError(AmobridgeError):
    """The configuration cannot work; the message says which setting and what to put there."""
