"""The part of ``roundtrip.py`` that runs in this process: the host app's event receiver (uvicorn
in a thread of its own) that stamps and verifies every event (the sandbox and ``amobridge serve``
are ``_support.running_sandbox`` and ``service.running_service``). (A leading ``_``:
``bench/run.py`` does not run it as a benchmark.)"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from standardwebhooks import Webhook

from _support import free_port

WAIT_S = 15.0  # what is not seen by then is a failure, not a hang


@dataclass
class Arrival:
    type: str
    data: dict[str, Any]
    arrived_at: float
    timestamp: float  # the event's own: when the change it announces committed


@dataclass
class HostApp:
    """The host app's event URL: every POST is stamped on arrival, verified with the
    subscription's secret (``standardwebhooks``), and kept; a bad signature is counted."""

    url: str = ""
    secret: str | None = None
    arrivals: list[Arrival] = field(default_factory=list)
    bad_signatures: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        arrived_at = time.time()
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        status = 204
        try:
            event = Webhook(self.secret or "").verify(body, headers)
        except Exception:  # a wrong or missing signature, or no secret yet
            with self._lock:
                self.bad_signatures += 1
            status = 400
        else:
            with self._lock:
                stamp = datetime.fromisoformat(event["timestamp"]).timestamp()
                self.arrivals.append(Arrival(event["type"], event["data"], arrived_at, stamp))
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    def find(self, kind: str, match: Callable[[dict[str, Any]], bool], start: int = 0) -> Any:
        with self._lock:
            seen = self.arrivals[start:]
        return next((a for a in seen if a.type == kind and match(a.data)), None)


@contextlib.contextmanager
def running_host() -> Iterator[HostApp]:
    """The receiver on a free port, served by uvicorn in a thread with its own event loop (so
    its arrival stamps do not wait for this thread's polling)."""
    import uvicorn

    host = HostApp()
    port = free_port()
    host.url = f"http://127.0.0.1:{port}"
    server = uvicorn.Server(
        uvicorn.Config(host, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, name="host-app", daemon=True)
    thread.start()
    try:
        until(lambda: server.started, "the host app's receiver", 10.0)
        yield host
    finally:
        server.should_exit = True
        thread.join(10)


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile (p99 of 50 values is the 50th: the max)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, -(-len(ordered) * share // 1))
    return ordered[int(rank) - 1]


def until(check: Any, what: str, deadline: float = WAIT_S, every: float = 0.01) -> Any:
    end = time.monotonic() + deadline
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > end:
            raise RuntimeError(f"{what}: not seen within {deadline:g} s")
        time.sleep(every)  # polling a remote state: nothing to wait on
