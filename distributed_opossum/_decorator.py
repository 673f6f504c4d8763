"""``@circuit_breaker(...)``: guard a coroutine function with a breaker."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, Protocol, TypeVar, overload

from ._breaker import CircuitBreaker

__all__ = ["BreakerFunction", "circuit_breaker"]

P = ParamSpec("P")
R = TypeVar("R")


class BreakerFunction(Protocol[P, R]):
    """A coroutine function whose calls go through ``breaker.fire``.

    Decorated methods bind like any function (``__get__``); one breaker then
    guards the method for every instance.
    """

    breaker: CircuitBreaker[P, R]

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call through the breaker."""
        ...

    @overload
    def __get__(self, instance: None, owner: type[Any] | None = None) -> BreakerFunction[P, R]: ...

    @overload
    def __get__(
        self, instance: object, owner: type[Any] | None = None
    ) -> Callable[..., Awaitable[R]]: ...

    def __get__(
        self, instance: object | None, owner: type[Any] | None = None
    ) -> BreakerFunction[P, R] | Callable[..., Awaitable[R]]:
        """Bind as a method."""
        ...


def circuit_breaker(
    **options: Any,
) -> Callable[[Callable[P, Awaitable[R]]], BreakerFunction[P, R]]:
    """Decorate a coroutine function so every call goes through a :class:`CircuitBreaker`.

    The options are those of ``CircuitBreaker``; ``name`` defaults to the
    function's ``__qualname__`` (``distributed`` needs an explicit one). The
    breaker is reachable as ``.breaker``. Plain functions, methods, and
    ``classmethod``/``staticmethod`` objects on either side of this
    decorator work; one breaker guards a method for every instance.

    Example::

        @circuit_breaker(name="payments", timeout=2.0)
        async def charge(order): ...

        await charge(order)
        charge.breaker.stats
    """

    def decorate(fn: Callable[P, Awaitable[R]]) -> BreakerFunction[P, R]:
        if isinstance(fn, classmethod | staticmethod):
            # Guard the function inside, then wrap it again the same way.
            inner = decorate(fn.__func__)
            rewrapped: Any = type(fn)(inner)
            rewrapped.breaker = inner.breaker
            # Typing limitation: a classmethod/staticmethod object cannot be typed as the
            # function protocol it behaves as once looked up on its class.
            return rewrapped  # type: ignore[no-any-return]
        if not callable(fn):
            raise TypeError(
                f"circuit_breaker() decorates functions and methods, got {type(fn).__name__} "
                f"{fn!r:.80}"
            )
        breaker: CircuitBreaker[P, R] = CircuitBreaker(fn, **options)

        @functools.wraps(fn)
        async def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            return await breaker.fire(*args, **kwargs)

        # Typing limitation: a function object cannot declare the attribute it gets
        # here, nor be typed as the protocol it then satisfies.
        guarded.breaker = breaker  # type: ignore[attr-defined]
        return guarded  # type: ignore[return-value]

    return decorate
