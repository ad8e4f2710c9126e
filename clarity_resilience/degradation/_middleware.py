"""The framework-neutral half of the ASGI and WSGI ``DegradationMiddleware``.

Both middlewares take the same options and answer the probes the same way; only how a
request is read and a response sent differs, and that stays in ``asgi.py`` and
``wsgi.py``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

from ._problem import HealthResponse, liveness, readiness

if TYPE_CHECKING:
    from .._guard import ModelGuard

__all__ = ["DegradationMiddlewareBase"]

AppT = TypeVar("AppT")

_PROBE_METHODS: Final = ("GET", "HEAD")


class DegradationMiddlewareBase(Generic[AppT]):
    """Keep a middleware's options and answer its probes; subclasses speak the protocol.

    The subclasses document the options for their users.
    """

    def __init__(
        self,
        app: AppT,
        *,
        guards: Iterable[ModelGuard[Any]] = (),
        livez: str | None = "/livez",
        readyz: str | None = "/readyz",
        max_body_size: int | None = None,
    ) -> None:
        if max_body_size is not None and max_body_size < 0:
            raise ValueError(f"max_body_size must be >= 0 or None, got {max_body_size!r}")
        self.app = app
        self.guards = tuple(guards)
        self.livez = livez
        self.readyz = readyz if self.guards else None
        self.max_body_size = max_body_size

    def _probe(self, path: str, method: str) -> HealthResponse | None:
        """Return the answer to a request for ``path``, or None when it is not a probe.

        A probe answers GET and HEAD only; any other method gets a 405 naming them.
        The caller sends the answer (without its body for HEAD).
        """
        if path == self.livez:
            health = liveness()
        elif path == self.readyz:
            health = readiness(*self.guards)
        else:
            return None
        if method not in _PROBE_METHODS:
            return HealthResponse(405, [("Allow", ", ".join(_PROBE_METHODS))], b"")
        return health
