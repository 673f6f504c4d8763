"""httpx integration: an ``httpx.AsyncBaseTransport`` that puts a breaker in front of each host.

Install with the ``httpx`` extra (``pip install "distributed-opossum[httpx]"``).
:class:`BreakerTransport` wraps another transport; every request goes through
the breaker of its key (by default its host, with the port when it is not the
scheme's default), made on first use. The response is judged on its status
line, so a 500 is recorded as a failure and still handed to the caller, and a
streamed body is read after the breaker has decided.

Example::

    import httpx
    from distributed_opossum.httpx import BreakerTransport

    transport = BreakerTransport(breaker_options={"timeout": 5.0, "reset_timeout": 30.0})
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.get("https://api.example.com/orders")

Only the public API of :mod:`distributed_opossum` is used here: each request is
an ``async with breaker:`` block.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, TypeAlias

import httpx

from distributed_opossum import (
    BreakerOptions,
    CircuitBreaker,
    CircuitTimeoutError,
    DistributedOptions,
    OpenCircuitError,
)

__all__ = ["BreakerTransport", "default_is_failure", "host_key"]

Breaker: TypeAlias = CircuitBreaker[..., Any]
"""A breaker as the transport uses it: only as ``async with breaker:``."""

KeyFunction: TypeAlias = Callable[[httpx.Request], str]
FailurePredicate: TypeAlias = Callable[[httpx.Request, httpx.Response | Exception], bool]
BreakerLookup: TypeAlias = Mapping[str, Breaker] | Callable[[str], Breaker]

_OPTION_NAMES = frozenset(f.name for f in dataclasses.fields(BreakerOptions))


def host_key(request: httpx.Request) -> str:
    """The default breaker key: the request's host, with the port unless it is the default.

    Hosts are lowercased and IDNA-encoded, IPv6 addresses bracketed, as httpx
    normalises them.

    Example::

        host_key(httpx.Request("GET", "https://api.example.com/v1"))  # "api.example.com"
        host_key(httpx.Request("GET", "http://127.0.0.1:8080/"))      # "127.0.0.1:8080"
    """
    return request.url.netloc.decode("ascii")


def default_is_failure(request: httpx.Request, outcome: httpx.Response | Exception) -> bool:
    """The default judgement: transport errors and 5xx responses are failures.

    ``httpx.TransportError`` covers connection errors, read/write errors,
    timeouts and protocol errors. A 4xx is the caller's problem, not the
    server's, and counts as a success; so does any other exception (it still
    propagates unchanged).

    Example (count 429 as a failure too)::

        def is_failure(request, outcome):
            if isinstance(outcome, httpx.Response) and outcome.status_code == 429:
                return True
            return default_is_failure(request, outcome)
    """
    if isinstance(outcome, httpx.Response):
        return outcome.status_code >= 500
    return isinstance(outcome, httpx.TransportError)


class _FailedResponse(httpx.HTTPStatusError):
    """Carries a response judged a failure out of the breaker's block.

    Raising it records the failure through the breaker's public ``async with``;
    the transport catches it and returns the response, so callers never see
    it. Breaker event handlers (``failure``) and ``error_filter`` do: as an
    ``httpx.HTTPStatusError`` with ``.request`` and ``.response``.
    """

    def __init__(self, request: httpx.Request, response: httpx.Response) -> None:
        # The message is built only when read: most failures are never printed.
        super().__init__("", request=request, response=response)

    def __str__(self) -> str:
        response = self.response
        return (
            f"{response.status_code} {response.reason_phrase} "
            f"from {self.request.method} {self.request.url}"
        )


class BreakerTransport(httpx.AsyncBaseTransport):
    """An httpx transport that sends each request through the breaker of its key.

    Args:
        transport: the transport that does the I/O (default
            ``httpx.AsyncHTTPTransport()``); closed by :meth:`aclose`.
        key: ``key(request) -> str`` chooses the breaker (default
            :func:`host_key`: one breaker per host and port).
        breaker_options: options of the breakers the transport makes, one per
            key on first use, named ``name_prefix + key``; ``name`` is not
            accepted. ``distributed`` passes through, so the breakers of every
            replica that use the same Redis act as one per host.
        breakers: instead of ``breaker_options``, breakers you made yourself: a
            mapping of key to breaker, or a callable ``breakers(key)``; asked
            once per key, on its first request. They are not shut down by
            :meth:`aclose`.
        name_prefix: the start of the name of every breaker the transport makes.
        is_failure: ``is_failure(request, response_or_exception) -> bool``
            (default :func:`default_is_failure`). A response judged a failure is
            recorded as one and still returned; an exception judged not a
            failure counts as a success and still propagates. The breaker's own
            ``timeout`` always counts as a failure (``CircuitTimeoutError``).
        open_response: when true, a request refused by an open breaker gets a
            synthetic ``503`` response (a ``Retry-After`` header in whole seconds,
            rounded up, unless the breaker is forced open; a JSON body naming the
            breaker) instead of an ``OpenCircuitError``.

    Raises:
        TypeError: both or wrong kinds of ``breaker_options``/``breakers``, an
            unknown option, ``name`` among the options, or a non-callable
            ``key``/``is_failure``.

    Example::

        transport = BreakerTransport(
            breaker_options={"error_threshold_percentage": 50, "reset_timeout": 10.0},
            open_response=True,
        )
        async with httpx.AsyncClient(transport=transport) as client:
            response = await client.get("http://127.0.0.1:8080/health")
            transport.breakers["127.0.0.1:8080"].stats.failures
    """

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        key: KeyFunction | None = None,
        breaker_options: Mapping[str, Any] | None = None,
        breakers: BreakerLookup | None = None,
        name_prefix: str = "http:",
        is_failure: FailurePredicate | None = None,
        open_response: bool = False,
    ) -> None:
        if transport is not None and not isinstance(transport, httpx.AsyncBaseTransport):
            raise TypeError(f"transport must be an httpx.AsyncBaseTransport, got {transport!r}")
        if key is not None and not callable(key):
            raise TypeError(f"key must be callable as key(request) -> str, got {key!r}")
        if is_failure is not None and not callable(is_failure):
            raise TypeError(
                f"is_failure must be callable as is_failure(request, outcome), got {is_failure!r}"
            )
        if not isinstance(name_prefix, str):
            raise TypeError(f"name_prefix must be a str, got {name_prefix!r}")
        if not isinstance(open_response, bool):
            raise TypeError(f"open_response must be a bool, got {open_response!r}")
        if breakers is not None:
            if breaker_options is not None:
                raise TypeError("pass breaker_options or breakers, not both")
            if not isinstance(breakers, Mapping) and not callable(breakers):
                raise TypeError(
                    f"breakers must be a mapping or a callable breakers(key), got {breakers!r}"
                )
        self._transport = transport if transport is not None else httpx.AsyncHTTPTransport()
        self._key = key if key is not None else host_key
        self._is_failure = is_failure if is_failure is not None else default_is_failure
        self._lookup = breakers
        self._options = _check_options(breaker_options)
        self._name_prefix = name_prefix
        self._open_response = open_response
        self._breakers: dict[str, Breaker] = {}
        self._view = MappingProxyType(self._breakers)
        self._owned: list[Breaker] = []
        self._closed = False

    @property
    def breakers(self) -> Mapping[str, Breaker]:
        """Key → breaker of every key seen so far (a read-only, live view)."""
        return self._view

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` through its breaker; see the class docstring for the outcomes.

        Raises:
            OpenCircuitError: the breaker refused the request (unless ``open_response``).
            CircuitTimeoutError: the breaker's ``timeout`` ran out before the
                response's status line arrived.
            httpx.TransportError: from the wrapped transport (recorded as a failure
                by default).
        """
        if self._closed:
            raise RuntimeError("this BreakerTransport is closed")
        key = self._key(request)
        breaker = self._breakers.get(key)
        if breaker is None:
            breaker = self._add(key)
        admitted = False
        response: httpx.Response | None = None
        try:
            async with breaker:
                admitted = True
                try:
                    response = await self._transport.handle_async_request(request)
                except Exception as error:
                    if self._is_failure(request, error):
                        raise
                    passed = error  # a success for the breaker, still the caller's error
                else:
                    if self._is_failure(request, response):
                        raise _FailedResponse(request, response)
                    return response
        except _FailedResponse as failed:
            return failed.response
        except OpenCircuitError as error:
            if admitted or not self._open_response:
                raise
            return _refusal(request, error)
        except CircuitTimeoutError:
            # A transport that answered after being cancelled: nobody reads this response.
            if response is not None:
                await response.aclose()
            raise
        raise passed

    def _add(self, key: str) -> Breaker:
        """The breaker of a key seen for the first time: made, or asked of ``breakers``."""
        if not isinstance(key, str) or not key:
            raise TypeError(f"key(request) must return a non-empty str, got {key!r}")
        lookup = self._lookup
        if lookup is None:
            breaker: Breaker = CircuitBreaker(name=self._name_prefix + key, **self._options)
            self._owned.append(breaker)
        else:
            if isinstance(lookup, Mapping):
                try:
                    found = lookup[key]
                except KeyError:
                    raise KeyError(f"breakers has no breaker for key {key!r}") from None
            else:
                found = lookup(key)
            if not isinstance(found, CircuitBreaker):
                raise TypeError(f"breakers gave {found!r} for key {key!r}, not a CircuitBreaker")
            breaker = found
        self._breakers[key] = breaker
        return breaker

    async def aclose(self) -> None:
        """Shut down the breakers this transport made, then close the wrapped transport.

        Breakers given through ``breakers`` are left running. Closing twice is a no-op.
        """
        if self._closed:
            return
        self._closed = True
        try:
            await asyncio.gather(*(breaker.shutdown() for breaker in self._owned))
        finally:
            await self._transport.aclose()

    def __repr__(self) -> str:
        return f"<BreakerTransport {len(self._breakers)} breakers around {self._transport!r}>"


def _check_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """A copy of ``breaker_options``, names checked now (values when a breaker is made)."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise TypeError(f"breaker_options must be a dict of breaker options, got {options!r}")
    checked = dict(options)
    if "name" in checked:
        raise TypeError(
            "breaker_options must not hold 'name': each breaker is named name_prefix + key"
        )
    unknown = sorted(str(name) for name in checked if name not in _OPTION_NAMES)
    if unknown:
        raise TypeError(f"unknown breaker option(s) in breaker_options: {', '.join(unknown)}")
    if checked.get("distributed") is not None:
        # Parsed once: every breaker of the transport shares one instance_id.
        checked["distributed"] = DistributedOptions.parse(checked["distributed"])
    return checked


def _refusal(request: httpx.Request, error: OpenCircuitError) -> httpx.Response:
    """The synthetic 503 of ``open_response=True``."""
    retry_after = error.retry_after
    headers = {} if retry_after is None else {"Retry-After": str(math.ceil(retry_after))}
    body = {"error": "circuit_open", "breaker": error.breaker_name, "retry_after": retry_after}
    return httpx.Response(503, headers=headers, json=body, request=request)
