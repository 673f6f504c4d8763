"""HTTP errors judged by their status: a client's mistake is not a downstream failure.

An endpoint under a guard (or an action fired through a breaker of
:class:`~distributed_opossum.fastapi.Breakers`) often raises
``HTTPException(404)`` on purpose: the order does not exist, the input is
wrong. Counted as failures, a burst of 404s would open the breaker and cut
every caller off a healthy downstream. So an exception that carries an HTTP
status is judged by that status (5xx counts, 4xx does not, by default), through
the breaker's ``error_filter``; everything else is judged as usual.

FastAPI raises ``RequestValidationError`` (422) from dependency solving, after
a guard declared before the body has already admitted the request: it
carries the status 422 here, so it is judged like any other client error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

__all__ = ["StatusPredicate", "http_status", "judged_by_status", "server_error"]

StatusPredicate = Callable[[int], bool]
"""``is_failure_status(status) -> bool``: True when an error with this HTTP status
is a failure of the downstream."""


def server_error(status: int) -> bool:
    """The default rule: 5xx statuses are failures, the others are not."""
    return status >= 500


def http_status(error: BaseException) -> int | None:
    """The HTTP status ``error`` carries, or None when it carries none."""
    if isinstance(error, HTTPException):
        return error.status_code
    if isinstance(error, RequestValidationError):
        return 422
    return None


def judged_by_status(
    is_failure_status: StatusPredicate, error_filter: Callable[..., bool] | None
) -> Callable[..., bool]:
    """An ``error_filter`` that ignores errors whose status is not a failure.

    Errors it does not ignore go on to ``error_filter`` (the user's own, with
    the call's arguments), so either may spare an error.
    """

    def status_filter(error: BaseException, *args: Any, **kwargs: Any) -> bool:
        status = http_status(error)
        if status is not None and not is_failure_status(status):
            return True
        return error_filter is not None and bool(error_filter(error, *args, **kwargs))

    return status_filter
