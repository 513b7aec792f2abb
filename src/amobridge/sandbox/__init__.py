"""A faithful local amoCRM: OAuth, API v4 subset, webhooks out, rate limits and faults.

``create_sandbox_app()`` builds the ASGI app; ``docs/sandbox.md`` documents it and its control API.
The sandbox imports nothing from the SDK (``amobridge.amo``), so a wrong JSON shape in one is
caught by the other's tests.
"""

from amobridge.sandbox.app import Sandbox, create_sandbox_app
from amobridge.sandbox.clock import Clock
from amobridge.sandbox.config import SandboxConfig

__all__ = ["Clock", "Sandbox", "SandboxConfig", "create_sandbox_app"]
