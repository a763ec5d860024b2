"""The supervisor's Prometheus endpoint: `--metrics-port` (KUBETRAIN_METRICS_PORT; 0, the default: off).

    collector    the metrics, read at each scrape from the control folder and the restart ledger
    ledger_view  restarts by cause, the crash-loop budget left, goodput (pure, the ledger's rules)

`start()` serves /metrics on a thread of prometheus_client's own HTTP server and returns a handle to
close, or None: off, or the port could not be had (one log line; training goes on). The metrics and
what to alert on: README, "Metrics". prometheus_client is imported only when the port is on.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("kubetrain.metrics")


class MetricsServer:
    def __init__(self, server: Any, thread: Any, port: int) -> None:
        self._server, self._thread, self.port = server, thread, port

    def close(self) -> None:
        try:
            self._server.shutdown()
            self._server.server_close()
        except Exception as e:  # noqa: BLE001
            log.debug("metrics: closing the server: %s", e)


def start(port: int, **sources: Any) -> MetricsServer | None:
    """Serve the metrics of `sources` (collector.Sources' fields) at :port/metrics on every address;
    None when off or not served."""
    if not port:
        return None
    try:
        from prometheus_client import CollectorRegistry, start_http_server

        from trainer.metrics.collector import RuntimeCollector, Sources

        registry = CollectorRegistry(auto_describe=False)
        registry.register(RuntimeCollector(Sources(**sources)))
        server, thread = start_http_server(port, registry=registry)
    except Exception as e:  # noqa: BLE001 - a port taken, no client installed: the run goes on unobserved
        log.warning("metrics: not served on port %d (%s); training goes on without /metrics", port, e)
        return None
    log.info("metrics: serving :%d/metrics", port)
    return MetricsServer(server, thread, port)
