"""What every benchmark needs: a free port, a real process that is ready when its health URL
answers, one wrk run read back as numbers, and the result written as a table plus JSON.

(``bench/run.py`` skips modules whose name starts with ``_``; benchmarks import this one as
``_support``: ``bench/`` is first on ``sys.path`` whether a benchmark runs alone or via run.py.)
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

_WRK_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_JSON {\\"requests\\":%d,\\"duration_us\\":%d,\\"errors\\":%d,"
    .. "\\"p50_us\\":%d,\\"p99_us\\":%d}\\n",
    summary.requests, summary.duration,
    e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def most_in_one_second(times: list[float]) -> int:
    """The most arrival times that fall in any one-second window (what amoCRM's limit counts)."""
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while times[start] <= t - 1.0:
            start += 1
        best = max(best, end - start + 1)
    return best


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def running_process(
    argv: list[str],
    *,
    health_url: str,
    name: str,
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
    log_path: Path | None = None,
    deadline: float = 30.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``argv``, wait until ``health_url`` answers 200, stop it (terminate, then kill)."""
    with contextlib.ExitStack() as stack:
        log = stack.enter_context(log_path.open("ab")) if log_path else subprocess.DEVNULL
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and programs
            argv, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        until = time.monotonic() + deadline
        with httpx.Client(timeout=2.0) as http:
            while True:
                if process.poll() is not None:
                    tail = log_path.read_text(errors="replace")[-2000:] if log_path else ""
                    raise RuntimeError(f"{name} exited with {process.returncode}:\n{tail}")
                with contextlib.suppress(httpx.TransportError):
                    if http.get(health_url).status_code == 200:
                        break
                if time.monotonic() > until:
                    raise RuntimeError(f"{name} did not answer within {deadline:g} s")
                time.sleep(0.05)  # polling while the port opens: no event to wait on
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _lua_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def wrk_load(
    wrk: str, url: str, headers: dict[str, str], *, duration: float, connections: int
) -> tuple[int, float, int, float, float]:
    """(requests, seconds, errors, p50 ms, p99 ms) of one ``wrk -t1`` GET run."""
    lines = ['wrk.method = "GET"']
    lines += [f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}" for k, v in headers.items()]
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "bench.lua"
        script.touch(mode=0o600)  # it may hold a credential
        script.write_text("\n".join(lines) + "\n" + _WRK_DONE)
        completed = subprocess.run(  # noqa: S603 - wrk from PATH, our arguments
            [
                wrk,
                "-t1",
                f"-c{connections}",
                f"-d{duration:g}s",
                "--latency",
                "--timeout",
                "5s",
                "-s",
                str(script),
                url,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
    for line in completed.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            data = json.loads(line.removeprefix("BENCH_JSON "))
            return (
                int(data["requests"]),
                data["duration_us"] / 1e6,
                int(data["errors"]),
                data["p50_us"] / 1000,
                data["p99_us"] / 1000,
            )
    raise RuntimeError(f"wrk failed ({completed.returncode}): {completed.stderr.strip()[:500]}")


def write_result(path: Path, result: dict[str, Any], table: str) -> int:
    """Print the table, write the JSON; 0 when ``result["passed"]``, else 1."""
    print(table)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}")
    return 0 if result["passed"] else 1
