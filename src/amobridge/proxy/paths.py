"""Which amoCRM path a proxy request names, checked before anything is sent.

The host is never the caller's: every proxied call goes to the connection's own account host (the
SDK builds ``https://{host}/api/v4/{path}``). What remains to refuse is a path that means more
than it says: ``.`` and ``..`` segments (plain or percent-encoded), an encoded slash or backslash
(``%2F``, ``%5C``) that one server would read as a separator and another not, an encoded ``?``
or ``#``, empty segments (``//host`` is how an absolute URL begins), control characters. The
path is read from the raw request target, and must agree with what the router matched, so a
trick that the router's decoding hid (an owner segment holding ``%2F``) is refused too.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

from amobridge.errors import NotFound, ServiceError

PREFIX = "/api/v4/"
MAX_PATH_LENGTH = 2048
# RFC 3986 pchar and "/": unreserved, sub-delims, ":", "@" and percent escapes.
_RAW = re.compile(r"^[A-Za-z0-9\-._~!$&'()*+,;=:@%/]*$")
_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_SEGMENT_SAFE = "!$&'()*+,;=:@-._~"
_FORBIDDEN_DECODED = ("/", "\\", "?", "#")


def invalid(why: str) -> ServiceError:
    return ServiceError(
        f"not a path the proxy forwards: {why}. Name an amoCRM API v4 path, e.g. "
        "/proxy/{owner}/api/v4/leads/123",
        code="invalid_proxy_path",
    )


def not_an_api_path() -> NotFound:
    return NotFound(
        "the proxy forwards amoCRM API v4 calls only: /proxy/{owner}/api/v4/<path>, e.g. "
        "/proxy/user-42/api/v4/account",
        code="not_an_api_path",
    )


def _raw_parts(raw_path: str, root_path: str) -> tuple[str, str] | None:
    """(the raw owner segment, the raw path after ``/api/v4/``) of ``raw_path``, or None."""
    if root_path and raw_path.startswith(root_path + "/"):
        raw_path = raw_path[len(root_path) :]
    parts = raw_path.split("/", 5)
    if len(parts) < 6 or parts[:2] != ["", "proxy"] or parts[3:5] != ["api", "v4"]:
        return None
    return parts[2], parts[5]


def api_path(*, owner: str, path: str, raw_path: bytes | None, root_path: str = "") -> str:
    """The checked path relative to ``/api/v4/`` (``leads/123``), percent-encoded segment by
    segment, for ``owner`` and ``path`` as the router matched them. Raises ``ServiceError``
    ``invalid_proxy_path`` (400) or ``not_an_api_path`` (404)."""
    if raw_path is None:  # a server that does not pass the raw target: rebuild it
        raw_owner, raw = quote(owner, safe=""), "/".join(quote(s, safe="") for s in path.split("/"))
    else:
        found = _raw_parts(raw_path.decode("latin-1"), root_path.rstrip("/"))
        if found is None:
            raise invalid("the path is encoded differently from what it names")
        raw_owner, raw = found
        if unquote(raw_owner) != owner or unquote(raw) != path:
            raise invalid("an encoded slash in the owner or the path")
    if not raw:
        raise not_an_api_path()
    if len(raw) > MAX_PATH_LENGTH:
        raise invalid(f"longer than {MAX_PATH_LENGTH} characters")
    if not _RAW.match(raw) or _ESCAPE.search(raw):
        raise invalid("characters a URL path may not hold")
    segments = raw.split("/")
    checked: list[str] = []
    for index, segment in enumerate(segments):
        if not segment:
            if index == len(segments) - 1 and index > 0:
                checked.append("")  # a trailing slash is amoCRM's to judge
                continue
            raise invalid("an empty segment (//)")
        try:
            decoded = unquote(segment, errors="strict")
        except UnicodeDecodeError:
            raise invalid("a percent escape that is not UTF-8") from None
        if decoded in (".", ".."):
            raise invalid("a . or .. segment")
        if any(char in decoded for char in _FORBIDDEN_DECODED):
            raise invalid("an encoded /, \\, ? or #")
        if any(ord(char) < 0x20 or ord(char) == 0x7F for char in decoded):
            raise invalid("a control character")
        checked.append(quote(decoded, safe=_SEGMENT_SAFE))
    return "/".join(checked)
