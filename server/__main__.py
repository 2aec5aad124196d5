"""Run the shim: `python -m server` (settings from RERANKER_* variables).

SIGTERM/SIGINT start a drain: readiness turns 503 at once, requests keep being served for
`drain_delay` seconds (load balancers stop sending), then uvicorn stops accepting and waits up
to `drain_timeout` for in-flight requests before exiting.
"""

from __future__ import annotations

import asyncio
import logging

import uvicorn

from server.app import create_app
from server.ops.logs import setup_logging
from server.settings import Settings

log = logging.getLogger("server")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app, drain_delay: float) -> None:
        super().__init__(config)
        self.fastapi_app = app
        self.drain_delay = drain_delay
        self._drain_started = False

    def handle_exit(self, sig, frame) -> None:
        if self._drain_started:  # a second signal: stop now
            self.force_exit = True
            return super().handle_exit(sig, frame)
        self._drain_started = True
        self.fastapi_app.state.draining = True
        log.info("drain started", extra={"signal": int(sig), "delay_s": self.drain_delay})
        asyncio.get_event_loop().call_later(self.drain_delay, self._stop_accepting)

    def _stop_accepting(self) -> None:
        self.should_exit = True


def main() -> None:
    settings = Settings()
    setup_logging(settings.log_level)
    app = create_app(settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None,
                            timeout_graceful_shutdown=int(settings.drain_timeout),
                            timeout_keep_alive=30, access_log=False,
                            # client addresses are resolved by our trusted_proxies, not uvicorn
                            proxy_headers=False)
    DrainingServer(config, app, settings.drain_delay).run()


if __name__ == "__main__":
    main()
