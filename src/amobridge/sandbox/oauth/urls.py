"""URL checks shared by the consent page and the website button: integrators' URLs are untrusted."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode, urlsplit


def is_http_url(value: str, *, https_only: bool = False) -> bool:
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    schemes = ("https",) if https_only else ("http", "https")
    return parts.scheme in schemes and bool(parts.hostname)


def origin_of(url: str) -> str | None:
    """``scheme://host[:port]`` of an http(s) URL, or None."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}"


def with_query(uri: str, params: dict[str, Any]) -> str:
    """``uri`` with ``params`` appended (its own query kept); None values are left out."""
    clean = {k: v for k, v in params.items() if v is not None}
    return uri + ("&" if "?" in uri else "?") + urlencode(clean)
