"""``Breakers``: the breakers of one app, the Redis client they share, and their lifespan.

A breaker is final after ``shutdown()``, but an app's lifespan may run more
than once in a process (every ``TestClient`` block runs it). So the object
keeps what each breaker is made of (its action and options, by name) rather
than the breaker: a lifespan makes them all at its start and shuts them down
at its end, and the next one makes fresh ones from the same recipe. Between
lifespans, or without one, ``get()`` makes a breaker when it is asked for.

The object owns no background work of its own: a breaker's work (timers, the
coordinator's ticker and pub/sub listener) belongs to the breaker, which
starts it on whatever loop uses it and stops it in ``shutdown()``. The
lifespan is only the point where that shutdown, then the client's close,
happen in the right order.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, ParamSpec, TypeVar, overload

from fastapi import APIRouter
from redis.asyncio import Redis, RedisCluster
from starlette.applications import Starlette
from starlette.responses import JSONResponse

from distributed_opossum._breaker import CircuitBreaker
from distributed_opossum._names import check_name
from distributed_opossum._options import parse_options
from distributed_opossum._registry import breakers as process_breakers

from ._failures import StatusPredicate, judged_by_status, server_error
from ._guard import BreakerGuard
from ._recipes import DISTRIBUTED_KEYS, Recipe, conflict
from ._status import breaker_status

__all__ = ["Breakers"]

P = ParamSpec("P")
R = TypeVar("R")
AppT = TypeVar("AppT")
StateT = TypeVar("StateT")


class Breakers:
    """The circuit breakers of a FastAPI app: made once per name, injected, shut down.

    Args:
        redis: a ``redis.asyncio`` client (``Redis``, ``RedisCluster``, or
            Sentinel-managed) to make every breaker distributed. It stays yours:
            close it after the app's lifespan ends.
        url: a Redis URL instead: the object makes the client, and closes it
            at the end of every lifespan, after its breakers are shut down
            (redis-py reconnects on the next lifespan's loop).
        prefix: namespace of every Redis key and channel of these breakers
            (``"dopossum"`` when not given).
        is_failure_status: which HTTP statuses count as failures when an
            ``HTTPException`` (or a ``RequestValidationError``, 422) leaves a
            guarded endpoint or a fired action; by default 5xx do, 4xx do not.
        **defaults: breaker options for every breaker (``timeout``,
            ``reset_timeout``, ``error_filter``, ...), and the ``distributed``
            keys given flat: ``quorum``, ``min_pod_volume``, ``sync_interval``,
            ``instance_id``. Checked now; a bad one raises here.

    Raises:
        TypeError: both ``redis`` and ``url``, an unknown option, ``name`` or
            ``distributed`` among the defaults, or distributed keys without Redis.
        ValueError: an option out of range.

    Example::

        breakers = Breakers(url="redis://127.0.0.1:6379", timeout=3.0, reset_timeout=10.0)
        app = FastAPI(lifespan=breakers.lifespan)
        install_exception_handlers(app)

        Payments = Annotated[CircuitBreaker, Depends(breakers.dependency("payments"))]

        @app.post("/charge", dependencies=[breakers.guard("ledger")])
        async def charge(order: Order, payments: Payments) -> Receipt:
            return await payments.fire(order)
    """

    def __init__(
        self,
        redis: Redis | RedisCluster | None = None,
        *,
        url: str | None = None,
        prefix: str | None = None,
        is_failure_status: StatusPredicate = server_error,
        **defaults: Any,
    ) -> None:
        if redis is not None and url is not None:
            raise TypeError("Breakers() takes redis= (a client) or url=, not both")
        if url is not None and not isinstance(url, str):
            raise TypeError(f"Breakers(url=...) must be a str, got {url!r:.80}")
        if not callable(is_failure_status):
            raise TypeError(
                f"Breakers(is_failure_status=...) must be callable, got {is_failure_status!r:.80}"
            )
        if prefix is not None and redis is None and url is None:
            raise TypeError("Breakers(prefix=...) needs Redis: give redis= or url= too")
        self._client: Any = Redis.from_url(url) if url is not None else redis
        self._owns_client = url is not None
        self._prefix = "dopossum" if prefix is None else prefix
        self._is_failure_status = is_failure_status
        self._defaults = dict(defaults)
        self._recipes: dict[str, Recipe] = {}
        self._made: dict[str, CircuitBreaker[Any, Any]] = {}
        self._dependencies: dict[str, Callable[[], Awaitable[CircuitBreaker[..., Any]]]] = {}
        self._guards: dict[str, BreakerGuard] = {}
        self._lifespans = 0
        # Checked now, so that a typo fails at import time, not at the first request.
        checked = self._options("Breakers()", "defaults", Recipe(None, {}))
        parse_options(None, {**checked, "name": "defaults"})

    # -- breakers by name ------------------------------------------------------------------------

    @overload
    def get(
        self, name: str, action: Callable[P, Awaitable[R]], **options: Any
    ) -> CircuitBreaker[P, R]: ...

    @overload
    def get(self, name: str, action: Callable[P, R], **options: Any) -> CircuitBreaker[P, R]: ...

    @overload
    def get(self, name: str, action: None = None, **options: Any) -> CircuitBreaker[..., Any]: ...

    def get(
        self, name: str, action: Callable[..., Any] | None = None, **options: Any
    ) -> CircuitBreaker[Any, Any]:
        """The breaker named ``name``, made on first use from the defaults and ``options``.

        The first call that gives an ``action`` or options says what the breaker
        is; later calls may give the same again or nothing at all (a lookup).
        A name asked for without anything, and never described, gets a breaker
        of the defaults without an action (it guards ``async with`` blocks).

        Args:
            name: the breaker's name (its identity across pods).
            action: the callable ``fire()`` calls.
            **options: breaker options over the defaults, and ``quorum``,
                ``min_pod_volume``, ``sync_interval``, ``instance_id``.

        Raises:
            ValueError: ``name`` was made with another action or other options.
            TypeError: an unknown option (and see :class:`CircuitBreaker`).

        Example::

            payments = breakers.get("payments", charge, timeout=2.0, quorum=2)
            assert breakers.get("payments") is payments
        """
        check_name("Breakers.get(): 'name'", name)
        known = self._recipes.get(name)
        recipe = Recipe(action, dict(options)) if action is not None or options else None
        if recipe is not None and known is not None:
            # Compared as made, so that repeating a default is no difference.
            was, now = self._with_defaults(known), self._with_defaults(recipe)
            if was != now:
                raise ValueError(conflict(name, was, now))
        recipe = known or recipe or Recipe(None, {})
        breaker = self._made.get(name)
        if breaker is None or breaker.is_shutdown:
            options = self._options("Breakers.get()", name, recipe)
            breaker = CircuitBreaker(recipe.action, name=name, **options)
            self._made[name] = breaker
        self._recipes[name] = recipe
        return breaker

    def _with_defaults(self, recipe: Recipe) -> Recipe:
        return Recipe(recipe.action, {**self._defaults, **recipe.options})

    def _options(self, where: str, name: str, recipe: Recipe) -> dict[str, Any]:
        """The keyword options of ``CircuitBreaker`` for ``recipe``."""
        merged = dict(self._with_defaults(recipe).options)
        for reserved, use in (
            ("name", "the name is get()'s first argument"),
            ("distributed", "give Breakers redis= or url=, and quorum=, sync_interval=, ... flat"),
        ):
            if reserved in merged:
                raise TypeError(f"{where}: {reserved!r} is not an option here: {use}")
        options = {key: value for key, value in merged.items() if key not in DISTRIBUTED_KEYS}
        distributed = {key: value for key, value in merged.items() if key in DISTRIBUTED_KEYS}
        if distributed and self._client is None:
            keys = ", ".join(repr(key) for key in sorted(distributed))
            raise TypeError(
                f"{where}: {keys} for breaker {name!r} need Redis: "
                "make Breakers with redis= or url="
            )
        user_filter = options.get("error_filter")
        if user_filter is not None and not callable(user_filter):
            raise TypeError(f"{where}: 'error_filter' must be callable, got {user_filter!r:.80}")
        options["error_filter"] = judged_by_status(self._is_failure_status, user_filter)
        if self._client is not None:
            options["distributed"] = {"client": self._client, "prefix": self._prefix, **distributed}
        return options

    # -- FastAPI dependencies --------------------------------------------------------------------

    def dependency(self, name: str) -> Callable[[], Awaitable[CircuitBreaker[..., Any]]]:
        """A dependency that injects the breaker ``name`` (see :meth:`get`).

        The same callable is returned for a name every time, so FastAPI's
        ``app.dependency_overrides`` can replace it in tests.

        Example::

            Payments = Annotated[CircuitBreaker, Depends(breakers.dependency("payments"))]

            @app.get("/balance")
            async def balance(payments: Payments) -> dict[str, str]:
                return {"state": payments.state.value}
        """
        check_name("Breakers.dependency(): 'name'", name)
        found = self._dependencies.get(name)
        if found is None:

            async def breaker() -> CircuitBreaker[..., Any]:
                return self.get(name)

            found = self._dependencies[name] = breaker
        return found

    def guard(self, name: str) -> BreakerGuard:
        """A dependency that runs the whole endpoint inside ``async with breaker:``.

        The breaker admits the request (or raises ``OpenCircuitError``: a 503
        with the handlers installed), its timeout applies to the endpoint, and
        the endpoint's outcome is its outcome: an exception counts as a failure
        (an ``HTTPException`` by its status) and still reaches the app's
        exception handlers. See :class:`BreakerGuard`.

        Example::

            @app.get("/stock/{sku}", dependencies=[breakers.guard("inventory")])
            async def stock(sku: str) -> Stock:
                return await inventory_db.stock(sku)
        """
        check_name("Breakers.guard(): 'name'", name)
        found = self._guards.get(name)
        if found is None:
            found = self._guards[name] = BreakerGuard(name, lambda: self.get(name))
        return found

    # -- lifespan --------------------------------------------------------------------------------

    @overload
    def lifespan(self, app: Starlette, /) -> AbstractAsyncContextManager[None]: ...

    @overload
    def lifespan(
        self, app: Callable[[AppT], AbstractAsyncContextManager[StateT]], /
    ) -> Callable[[AppT], AbstractAsyncContextManager[StateT]]: ...

    def lifespan(self, app: Any, /) -> Any:
        """The app's lifespan, alone or around the app's own.

        ``FastAPI(lifespan=breakers.lifespan)`` makes every breaker described so
        far at startup and, at shutdown, shuts them all down, then closes the
        client if the object made it. ``breakers.lifespan(own_lifespan)``
        returns a lifespan that runs ``own_lifespan`` inside that one: the
        breakers are there during its startup and its shutdown, and what it
        yields (a state mapping) is passed on.

        Example::

            @asynccontextmanager
            async def own_lifespan(app: FastAPI) -> AsyncIterator[None]:
                await warm_caches()
                yield

            app = FastAPI(lifespan=breakers.lifespan(own_lifespan))
        """
        if isinstance(app, Starlette):
            return self._running()
        if not callable(app):
            raise TypeError(
                "Breakers.lifespan() takes the app (as FastAPI calls it) or a lifespan "
                f"function to wrap, got {app!r:.80}"
            )
        own = app

        @asynccontextmanager
        async def lifespan(app: Any) -> AsyncIterator[Any]:
            async with self._running(), own(app) as state:
                yield state

        return lifespan

    @asynccontextmanager
    async def _running(self) -> AsyncIterator[None]:
        self._lifespans += 1
        try:
            for name in list(self._recipes):
                self.get(name)  # fresh breakers; distributed ones sync before the first request
            yield
        finally:
            self._lifespans -= 1
            if not self._lifespans:  # two apps may share the object: the last one closes
                await self.aclose()

    async def aclose(self) -> None:
        """Shut every breaker down, then close the client if the object made it.

        The lifespan calls it; call it yourself where there is no lifespan.
        Breakers asked for afterwards are made anew.
        """
        made = list(self._made.values())
        self._made.clear()
        await asyncio.gather(*(breaker.shutdown() for breaker in made))
        if self._owns_client:
            await self._client.aclose()

    # -- status ----------------------------------------------------------------------------------

    def status(self, *, every_breaker: bool = False) -> dict[str, Any]:
        """``{"breakers": [...]}``: each breaker's state, window and cluster view, as JSON.

        Args:
            every_breaker: every live breaker of the process
                (``distributed_opossum.breakers()``), not only this object's.
        """
        if every_breaker:
            found = process_breakers()
        else:
            found = [breaker for breaker in self._made.values() if not breaker.is_shutdown]
        return {"breakers": [breaker_status(breaker) for breaker in found]}

    def status_router(
        self, path: str = "/breakers", *, every_breaker: bool = False, **route_options: Any
    ) -> APIRouter:
        """A router with ``GET path``: :meth:`status` as JSON, never cached.

        Each breaker shows ``name``, ``group``, ``state``, ``enabled``,
        ``retry_after``, ``attempts``, ``stats`` (``fires``, ``failures``, ...) and
        ``cluster`` (``breaker.cluster.to_dict()``: the cluster's state,
        ``retry_after``, ``attempts``, ``pods_reporting``, the pooled
        ``failure_rate``...; None for local breakers). Reading it costs no Redis
        round trip. ``route_options`` go to ``APIRouter.add_api_route``
        (``dependencies=`` for access control, ``include_in_schema=``, ``tags=``).

        Example::

            app.include_router(breakers.status_router("/internal/breakers"))
        """
        route_options.setdefault("name", "breaker_status")
        route_options.setdefault("summary", "Circuit breakers of this process")

        async def breaker_status_route() -> JSONResponse:
            status = self.status(every_breaker=every_breaker)
            return JSONResponse(status, headers={"Cache-Control": "no-store"})

        router = APIRouter()
        router.add_api_route(path, breaker_status_route, methods=["GET"], **route_options)
        return router

    @property
    def redis(self) -> Redis | RedisCluster | None:
        """The Redis client of the breakers (None: they are local)."""
        client: Redis | RedisCluster | None = self._client
        return client

    def __repr__(self) -> str:
        where = "local" if self._client is None else f"prefix {self._prefix!r}"
        return f"<Breakers {where}: {', '.join(self._recipes) or 'none yet'}>"
