"""amobridge: connect business backends to amoCRM / Kommo (API v4) and keep them connected.

Packages, by role:

- ``amobridge.amo``: the SDK (client, tokens, rate limit, retries, models, webhook parser).
- ``amobridge.sandbox``: a faithful local amoCRM for tests, the demo and offline work.
- ``amobridge.settings``: the service's one Settings class (the SDK never reads it).
- ``amobridge.cli``: the ``amobridge`` command.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("amobridge")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = ["__version__"]
