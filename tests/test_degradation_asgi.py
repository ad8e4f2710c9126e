"""Tests for what only degradation.asgi does: started streams, lifespan, non-HTTP scopes.

The HTTP contract every stack shares, run on a Starlette app with the middleware
wrapped outside it and in its middleware list among others, is in
test_degradation_contract.py.
"""

from __future__ import annotations

import contextlib
import pathlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from degradation_helpers import make_guard, write_model
from degradation_stacks import ASGI_STACKS, Stack, starlette_routes
from http_servers import serve_asgi
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette

from clarity_resilience.degradation.asgi import DegradationMiddleware


@pytest.fixture(params=ASGI_STACKS, ids=str)
def client(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[httpx.Client]:
    """Serve the Starlette predict service in either placement of the middleware."""
    stack: Stack = request.param
    with stack.serving_loaded(tmp_path) as service:
        yield service.client


class TestContract:
    def test_error_after_response_started_is_not_rewritten(self, client: httpx.Client) -> None:
        """An error raised mid-stream cannot change the started 200: the stream breaks."""
        with client.stream("GET", "/stream-then-raise") as response:
            assert response.status_code == 200
            with pytest.raises(httpx.RemoteProtocolError):
                response.read()


class TestProbes:
    def test_lifespan_passes_through(
        self, tmp_path: pathlib.Path, registry: CollectorRegistry
    ) -> None:
        """The app's lifespan runs through the middleware: a model loaded there is ready."""
        path = tmp_path / "ranker.safetensors"
        guard = make_guard(path, write_model(path), registry)

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            await guard.load_async()
            yield

        app = Starlette(routes=starlette_routes(guard, tmp_path), lifespan=lifespan)
        with (
            serve_asgi(DegradationMiddleware(app, guards=[guard]), lifespan="on") as url,
            httpx.Client(base_url=url, timeout=5.0) as http,
        ):
            assert http.get("/readyz").status_code == 200


# -- non-HTTP scopes ------------------------------------------------------------------


class TestPassThrough:
    async def _call(self, scope_type: str) -> list[dict[str, Any]]:
        seen: list[dict[str, Any]] = []

        async def app(scope: Any, receive: Any, send: Any) -> None:
            seen.append({"type": scope["type"], "receive": receive, "send": send})

        async def receive() -> dict[str, Any]:
            return {"type": f"{scope_type}.connect"}

        async def send(message: Any) -> None:
            raise AssertionError("the middleware must not send for non-HTTP scopes")

        middleware = DegradationMiddleware(app, guards=[], max_body_size=0)
        await middleware({"type": scope_type, "path": "/livez"}, receive, send)
        assert seen[0]["receive"] is receive
        assert seen[0]["send"] is send
        return seen

    @pytest.mark.parametrize("scope_type", ["websocket", "lifespan"])
    @pytest.mark.asyncio
    async def test_non_http_scopes_reach_the_app_untouched(self, scope_type: str) -> None:
        """Websocket and lifespan scopes reach the app with the original receive and send."""
        seen = await self._call(scope_type)
        assert [s["type"] for s in seen] == [scope_type]
