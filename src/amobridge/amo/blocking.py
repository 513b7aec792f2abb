"""``SyncAmoClient``: the async client, usable from blocking code, with no endpoint written twice.

The facade runs an :class:`~amobridge.amo.client.AmoClient` on a private event loop in a background
thread and wraps whatever it reaches generically: a coroutine method becomes a blocking call, an
async iterator (pages of leads …) a plain iterator, and an object with async methods (a resource
such as ``client.leads``) another facade. Plain values (models, lists, dicts) come back as they are.

::

    with SyncAmoClient("acme", token_provider=StaticTokenProvider(token)) as amo:
        account = amo.account.get()
        for lead in amo.leads.iterate():
            ...

Each call blocks the calling thread until the loop thread has done the work; several threads may
share one facade (the calls run concurrently on its loop). Do not call it from inside its own loop
(e.g. from a callback the SDK invokes): that would deadlock, and raises RuntimeError instead.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Mapping
from typing import Any, TypeVar

from amobridge.amo._requester import RetryMode
from amobridge.amo.auth import TokenProvider, TokenStore
from amobridge.amo.client import AmoClient
from amobridge.amo.domains import AccountDomain

T = TypeVar("T")


class _LoopThread:
    """An event loop running forever in a daemon thread; ``run()`` submits a coroutine and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.closed = False
        self._ready = threading.Event()
        self.thread = threading.Thread(
            target=self._main, name="amobridge-blocking-loop", daemon=True
        )
        self.thread.start()
        self._ready.wait()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError("SyncAmoClient cannot be called from its own event loop thread")
        if self.closed:
            coro.close()
            raise RuntimeError("this SyncAmoClient is closed")
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # e.g. KeyboardInterrupt while waiting: stop the work too
            raise

    def close(self) -> None:
        if self.closed:
            return
        try:
            asyncio.run_coroutine_threadsafe(self.loop.shutdown_asyncgens(), self.loop).result()
        finally:
            self.closed = True
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join()
            self.loop.close()


_ASYNC_API_CACHE: dict[type, bool] = {}
_PLAIN = (str, bytes, int, float, bool, type(None), list, tuple, dict, set, frozenset)


def _has_async_api(value: Any) -> bool:
    """Whether ``value``'s class has public coroutine or async-generator methods (a resource)."""
    if isinstance(value, _PLAIN) or inspect.isclass(value):
        return False
    cls = type(value)
    known = _ASYNC_API_CACHE.get(cls)
    if known is None:
        known = False
        for name in dir(cls):
            if name.startswith("_"):
                continue
            attr = inspect.getattr_static(cls, name, None)
            if isinstance(attr, staticmethod | classmethod):
                attr = attr.__func__
            if inspect.iscoroutinefunction(attr) or inspect.isasyncgenfunction(attr):
                known = True
                break
        _ASYNC_API_CACHE[cls] = known
    return known


def _wrap(value: Any, runner: _LoopThread) -> Any:
    """The blocking face of whatever the async client returned or exposes."""
    if isinstance(value, _PLAIN) or inspect.isclass(value):
        return value
    if hasattr(value, "__aiter__") and not hasattr(value, "__iter__"):
        return SyncIterator(value, runner)
    if inspect.ismethod(value) or inspect.isfunction(value) or inspect.isbuiltin(value):
        return _SyncCallable(value, runner)
    if _has_async_api(value):
        return SyncProxy(value, runner)
    return value


async def _invoke(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    result = fn(*args, **kwargs)
    if inspect.isawaitable(result):
        result = await result
    return result


class _SyncCallable:
    def __init__(self, fn: Callable[..., Any], runner: _LoopThread) -> None:
        self._fn = fn
        self._runner = runner
        self.__doc__ = getattr(fn, "__doc__", None)
        self.__name__ = getattr(fn, "__name__", "call")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _wrap(self._runner.run(_invoke(self._fn, args, kwargs)), self._runner)

    def __repr__(self) -> str:
        return f"<blocking {self._fn!r}>"


class SyncProxy:
    """The blocking face of an object with async methods (a resource such as ``leads``)."""

    def __init__(self, target: Any, runner: _LoopThread) -> None:
        self._target = target
        self._runner = runner

    def __getattr__(self, name: str) -> Any:
        return _wrap(getattr(self._target, name), self._runner)

    def __dir__(self) -> list[str]:
        return dir(self._target)

    def __repr__(self) -> str:
        return f"<blocking {self._target!r}>"


async def _aiter(iterable: Any) -> AsyncIterator[Any]:
    iterator: AsyncIterator[Any] = iterable.__aiter__()
    return iterator


async def _anext(iterator: AsyncIterator[Any]) -> tuple[bool, Any]:
    try:
        return True, await iterator.__anext__()
    except StopAsyncIteration:
        return False, None


async def _aclose(iterator: Any) -> None:
    closer = getattr(iterator, "aclose", None)
    if closer is not None:
        result = closer()
        if isinstance(result, Awaitable):
            await result


class SyncIterator(Iterator[Any]):
    """A plain iterator over an async one; each ``next()`` runs one ``__anext__`` on the loop.
    Leaving a ``for`` loop early? Call ``close()`` (or use ``with``) to finish the async iterator."""

    def __init__(self, iterable: Any, runner: _LoopThread) -> None:
        self._runner = runner
        self._iterator = runner.run(_aiter(iterable))
        self._done = False

    def __iter__(self) -> SyncIterator:
        return self

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        more, item = self._runner.run(_anext(self._iterator))
        if not more:
            self._done = True
            raise StopIteration
        return _wrap(item, self._runner)

    def close(self) -> None:
        if not self._done:
            self._done = True
            if not self._runner.closed:
                self._runner.run(_aclose(self._iterator))

    def __enter__(self) -> SyncIterator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class SyncAmoClient:
    """A blocking :class:`~amobridge.amo.client.AmoClient` (same arguments, same resources).

    Use it as a context manager or call :meth:`close`; resources are reached as attributes
    (``amo.leads.get(1)``) and behave like their async versions, blocking.
    """

    def __init__(
        self,
        domain: str | AccountDomain,
        *,
        token_provider: TokenProvider,
        **options: Any,
    ) -> None:
        self._runner = _LoopThread()

        async def build() -> AmoClient:
            return AmoClient(domain, token_provider=token_provider, **options)

        try:
            self._client = self._runner.run(build())
        except BaseException:
            self._runner.close()
            raise

    @classmethod
    def oauth(
        cls,
        domain: str | AccountDomain,
        *,
        client_id: str,
        client_secret: str,
        redirect_uri: str,
        store: TokenStore,
        key: str | None = None,
        **options: Any,
    ) -> SyncAmoClient:
        """A blocking client with its own OAuth token provider (see ``AmoClient.oauth``)."""
        self = cls.__new__(cls)
        self._runner = _LoopThread()

        async def build() -> AmoClient:
            return AmoClient.oauth(
                domain,
                client_id=client_id,
                client_secret=client_secret,
                redirect_uri=redirect_uri,
                store=store,
                key=key,
                **options,
            )

        try:
            self._client = self._runner.run(build())
        except BaseException:
            self._runner.close()
            raise
        return self

    @property
    def async_client(self) -> AmoClient:
        """The wrapped async client (use it only on the facade's loop)."""
        return self._client

    @property
    def domain(self) -> AccountDomain:
        return self._client.domain

    def request_json(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        retry: RetryMode = "safe",
    ) -> Any:
        """Blocking :meth:`AmoClient.request_json`."""
        return self._runner.run(
            self._client.request_json(method, path, params=params, json=json, retry=retry)
        )

    def reset_ban(self) -> None:
        self._client.reset_ban()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return _wrap(getattr(self._client, name), self._runner)

    def __repr__(self) -> str:
        return f"Sync{self._client!r}"

    def close(self) -> None:
        """Close the async client and stop the loop thread (idempotent)."""
        if self._runner.closed:
            return
        try:
            self._runner.run(self._client.aclose())
        finally:
            self._runner.close()

    def __enter__(self) -> SyncAmoClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
