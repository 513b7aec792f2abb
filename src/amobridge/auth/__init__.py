"""Who is calling: host apps with API keys, end users with JWTs. No FastAPI here but in
``dependencies.py``, so the worker, the CLI and ``doctor`` authenticate without a web app."""

from amobridge.auth.principal import KEY_PREFIX, Principal, Role
from amobridge.auth.service import AuthService, hash_key, new_api_key

__all__ = ["KEY_PREFIX", "AuthService", "Principal", "Role", "hash_key", "new_api_key"]
