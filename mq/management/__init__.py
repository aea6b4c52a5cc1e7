"""Management: an HTTP API in the shape of RabbitMQ's, Prometheus metrics at /metrics and a
dashboard at /, on their own port, on the broker's event loop. It reads the broker's objects
and calls their methods; the broker never imports it."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
from aiohttp import web

from mq.management.api import Api
from mq.management.stats import SAMPLE_INTERVAL
from mq.management.views import Views

if TYPE_CHECKING:
    from mq.server import Server

log = logging.getLogger("mq.management")
STATIC = Path(__file__).parent / "static"


class Management:
    def __init__(self, server: Server) -> None:
        self.views = Views(server)
        self.api = Api(self.views)
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.api.middleware])
        app.add_routes(self.api.routes())
        app.router.add_get("/", self._index)
        app.router.add_static("/static/", STATIC)
        return app

    async def _index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    async def start(self, host: str, port: int) -> int:
        """Listen (port 0: a free one); returns the port and logs where it is."""
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, shutdown_timeout=1.0, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise SystemExit(f"mq: cannot listen for management on {host}:{port}: {exc}") \
                from None
        port = self._runner.addresses[0][1]
        log.info("mq management listening on http://%s:%d", host, port)
        return port

    async def run(self) -> None:
        """Sample the counters for rates until cancelled; then stop the HTTP side."""
        try:
            while True:
                try:
                    self.views.sample()
                except Exception:  # a bug here must not stop the broker's task group
                    log.exception("management: sampling the counters failed")
                await anyio.sleep(SAMPLE_INTERVAL)
        finally:
            with anyio.CancelScope(shield=True):
                await self._runner.cleanup()
