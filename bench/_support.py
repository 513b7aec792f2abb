"""What every benchmark needs: a free port, a real process that is ready when its health URL
answers (the sandbox among them, and an account in it), ``wrk`` runs read back as numbers and
kept best of rounds, and the result written as a table plus JSON.

(``bench/run.py`` skips modules whose name starts with ``_``; benchmarks import this one as
``_support``: ``bench/`` is first on ``sys.path`` whether a benchmark runs alone or via run.py.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

WrkNumbers = tuple[int, float, int, float, float]  # requests, seconds, errors, p50 ms, p99 ms


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


def amobridge(*args: str) -> list[str]:
    """The command line of ``amobridge …`` with this interpreter."""
    return [sys.executable, "-m", "amobridge", *args]


def clean_env(**settings: str) -> dict[str, str]:
    """This process's environment without any ``AMOBRIDGE_*`` of its own, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("AMOBRIDGE_")}
    env.update(settings)
    return env


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


# --- the sandbox as a process of its own, and an account in it --------------------------------


@contextlib.contextmanager
def running_sandbox(
    rate: int | None, *, workdir: Path | None = None, **settings: str
) -> Iterator[str]:
    """``amobridge sandbox`` on a free port, its rate limit on at ``rate`` requests per second
    (off for ``None``), its output in ``workdir``/sandbox.log when given; yields its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    limit = {"AMOBRIDGE_SANDBOX__RATE_LIMIT_ENABLED": "false" if rate is None else "true"}
    if rate is not None:
        limit["AMOBRIDGE_SANDBOX__RATE_LIMIT_RPS"] = str(rate)
    env = clean_env(AMOBRIDGE_LOG_LEVEL="WARNING", **limit, **settings)
    with running_process(
        amobridge("sandbox", "--host", "127.0.0.1", "--port", str(port)),
        health_url=f"{url}/_sandbox/health",
        name="the sandbox",
        env=env,
        cwd=workdir,
        log_path=workdir / "sandbox.log" if workdir else None,
    ):
        yield url


@dataclass(frozen=True)
class Account:
    id: int
    host: str
    client_id: str
    token: str


async def create_account(control: httpx.AsyncClient, subdomain: str) -> Account:
    """An empty account, an integration and a long-lived token, through the control API."""
    account = (await control.post("/_sandbox/accounts", json={"subdomain": subdomain})).json()
    integration = (
        await control.post(
            "/_sandbox/integrations",
            json={"name": "bench", "redirect_uri": "https://bench.example/callback"},
        )
    ).json()
    token = (
        await control.post(
            "/_sandbox/long-lived-tokens",
            json={"client_id": integration["client_id"], "account_id": account["id"]},
        )
    ).json()["access_token"]
    return Account(int(account["id"]), str(account["host"]), integration["client_id"], token)


def new_account(sandbox: str, subdomain: str) -> Account:
    """:func:`create_account` at the sandbox at ``sandbox``, from code that runs no event loop."""

    async def made() -> Account:
        async with httpx.AsyncClient(base_url=sandbox, timeout=30) as control:
            return await create_account(control, subdomain)

    return asyncio.run(made())


# --- load: wrk ----------------------------------------------------------------------------------


def lua_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _wrk_done(counters: tuple[str, ...]) -> str:
    """wrk's ``done``: one ``BENCH_JSON {…}`` line, with each counter summed over the threads."""
    sums = "".join(
        f'  local {c} = 0\n  for _, t in ipairs(threads) do {c} = {c} + t:get("{c}") end\n'
        for c in counters
    )
    keys = "".join(f',\\"{c}\\":%d' for c in counters)
    values = "".join(f", {c}" for c in counters)
    return f"""
done = function(summary, latency, requests)
  local e = summary.errors
{sums}  io.write(string.format(
    "BENCH_JSON {{\\"requests\\":%d,\\"duration_us\\":%d,\\"errors\\":%d,"
    .. "\\"p50_us\\":%d,\\"p99_us\\":%d{keys}}}\\n",
    summary.requests, summary.duration,
    e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99){values}))
end
"""


def wrk_run(
    wrk: str,
    url: str,
    script: str,
    *,
    duration: float,
    connections: int,
    counters: tuple[str, ...] = (),
) -> tuple[WrkNumbers, dict[str, int]]:
    """The numbers of one ``wrk -t1`` run of the Lua ``script``, and its ``counters``: globals
    the script counts in its threads (each starting at 0), summed."""
    if counters:
        setup = ["threads = {}", *(f"{c} = 0" for c in counters)]
        setup.append("setup = function(thread) table.insert(threads, thread) end")
        script = "\n".join(setup) + "\n" + script
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.lua"
        path.touch(mode=0o600)  # it may hold a credential
        path.write_text(script + "\n" + _wrk_done(counters))
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
                str(path),
                url,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
    for line in completed.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            data = json.loads(line.removeprefix("BENCH_JSON "))
            numbers = (
                int(data["requests"]),
                data["duration_us"] / 1e6,
                int(data["errors"]),
                data["p50_us"] / 1000,
                data["p99_us"] / 1000,
            )
            return numbers, {c: int(data[c]) for c in counters}
    raise RuntimeError(f"wrk failed ({completed.returncode}): {completed.stderr.strip()[:500]}")


def wrk_load(
    wrk: str, url: str, headers: dict[str, str], *, duration: float, connections: int
) -> WrkNumbers:
    """(requests, seconds, errors, p50 ms, p99 ms) of one ``wrk -t1`` GET run."""
    lines = ['wrk.method = "GET"']
    lines += [f"wrk.headers[{lua_string(k)}] = {lua_string(v)}" for k, v in headers.items()]
    numbers, _ = wrk_run(wrk, url, "\n".join(lines), duration=duration, connections=connections)
    return numbers


@dataclass
class Measurement:
    route: str
    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p99_ms: float
    rounds_rps: list[float] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def public(self) -> dict[str, Any]:
        data = asdict(self)
        data["rps"] = round(self.rps, 1)
        return data

    @staticmethod
    def header(route_width: int) -> str:
        """The first columns of a load table: database, route, req/s, p50, p99, errors."""
        return (
            f"{'database':<10}{'route':<{route_width}}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
            f"{'errors':>8}"
        )

    def row(self, database: str, route_width: int) -> str:
        """This measurement's cells under :meth:`header`."""
        return (
            f"{database:<10}{self.route:<{route_width}}{self.rps:>9,.0f}{self.p50_ms:>9.2f}"
            f"{self.p99_ms:>9.2f}{self.errors:>8}"
        )


def add_load_arguments(parser: argparse.ArgumentParser) -> None:
    """``--duration``, ``--warmup``, ``--rounds``, ``--connections``: what :func:`best_of_rounds`
    and ``wrk`` read."""
    parser.add_argument("--duration", type=float, default=4, help="seconds per route and round")
    parser.add_argument("--warmup", type=float, default=1, help="seconds of warm-up per route")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per route")
    parser.add_argument("--connections", type=int, default=16)


def best_of_rounds(
    load: Callable[[str, float], Measurement], routes: Iterable[str], args: argparse.Namespace
) -> dict[str, Measurement]:
    """Each route ``load``-ed for ``args.warmup`` s, then the routes alternately for
    ``args.rounds`` rounds of ``args.duration`` s; per route the round with the most requests/s,
    with every round's requests/s and the errors of all rounds (a shared machine's CPU comes and
    goes: interleaving gives the routes the same conditions)."""
    names = list(routes)
    for name in names:  # warm-up: imports, pools, caches, the first requests
        load(name, args.warmup)
    rounds: dict[str, list[Measurement]] = {name: [] for name in names}
    for _ in range(args.rounds):
        for name in names:
            rounds[name].append(load(name, args.duration))
    best: dict[str, Measurement] = {}
    for name, runs in rounds.items():
        chosen = max(runs, key=lambda m: m.rps)
        chosen.rounds_rps = [round(m.rps, 1) for m in runs]
        chosen.errors = sum(m.errors for m in runs)
        best[name] = chosen
    return best


# --- the result ---------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """What a result says of the machine and the moment it was measured on."""
    return {
        "load_average_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "measured_at": int(time.time()),
    }


def grid(rows: Sequence[Sequence[str]]) -> list[str]:
    """``rows`` as left-aligned columns, a rule of dashes under the first (the header)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def write_result(path: Path, result: dict[str, Any], table: str) -> int:
    """Print the table, write the JSON; 0 when ``result["passed"]``, else 1."""
    print(table)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}")
    return 0 if result["passed"] else 1
