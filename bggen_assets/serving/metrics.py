"""Prometheus metrics of one serving app (``GET /metrics``, prometheus-client's text format).

Per app, its own registry (two apps in one process, as in tests, do not share counters):

- ``bggen_http_requests_total{route, method, status}`` and ``bggen_http_request_seconds{route}``
  (a histogram): every request, by its route template (``/creative``, not the query), counted by
  a pure ASGI middleware around the routers, 500s included;
- read from the serving state at scrape time, so the request path pays nothing more for them:
  ``bggen_served_total{result="hit"|"miss"}``, ``bggen_fallbacks_total``, ``bggen_placeholders_total``,
  ``bggen_cache_bytes{cache="canvases"|"responses"|"creatives"}``,
  ``bggen_creative_cache_lookups_total{result="hit"|"miss"}`` (the encoded-hit LRU), ``bggen_store_errors_total``,
  ``bggen_store_degraded``, ``bggen_db_errors_total``, ``bggen_db_degraded``, ``bggen_buffered_events{kind="impressions"|"misses"|"clicks"}``,
  ``bggen_prefetched_canvases_total``, ``bggen_prerendered_creatives_total``.
"""
from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

# seconds: a hit is milliseconds; a cold canvas decode or a miss's fallback tens of them
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServingCollector:
    """The serving state's figures, read when Prometheus scrapes."""

    def __init__(self, state):
        self.state = state

    def collect(self):
        s, service = self.state, self.state.service
        served = CounterMetricFamily("bggen_served", "Creatives served by the bandit path, by result", labels=["result"])
        for result in ("hit", "miss"):
            served.add_metric([result], s.served.get(result, 0))
        yield served
        yield CounterMetricFamily("bggen_fallbacks", "Misses answered with the fallback", value=service.fallbacks)
        yield CounterMetricFamily("bggen_placeholders", "Answered with a plain placeholder (store down, cutout not held)",
                                  value=service.placeholders)
        yield CounterMetricFamily("bggen_prefetched_canvases", "Canvases decoded ahead of their first request",
                                  value=service.prefetched)
        yield CounterMetricFamily("bggen_prerendered_creatives", "Hits of configured placements encoded ahead of "
                                  "their first request", value=service.prerendered)
        cache = GaugeMetricFamily("bggen_cache_bytes", "Bytes held by the in-memory caches", labels=["cache"])
        cache.add_metric(["canvases"], service.cache.size)
        cache.add_metric(["responses"], s.responses.size if s.responses is not None else 0)
        cache.add_metric(["creatives"], service.creatives.size if service.creatives is not None else 0)
        yield cache
        lookups = CounterMetricFamily("bggen_creative_cache_lookups", "Encoded-hit LRU look-ups, by result",
                                      labels=["result"])
        creatives = service.creatives
        lookups.add_metric(["hit"], creatives.hits if creatives is not None else 0)
        lookups.add_metric(["miss"], creatives.misses if creatives is not None else 0)
        yield lookups
        yield CounterMetricFamily("bggen_store_errors", "Object store calls that failed (background retries included)",
                                  value=service.health.errors)
        yield GaugeMetricFamily("bggen_store_degraded", "1 while the object store is down and serving degraded",
                                value=1 if service.health.degraded else 0)
        yield CounterMetricFamily("bggen_db_errors", "Metadata DB calls that failed (background retries included)",
                                  value=s.db.errors)
        yield GaugeMetricFamily("bggen_db_degraded", "1 while the metadata DB is down (events buffered)",
                                value=1 if s.db.degraded else 0)
        buffered = GaugeMetricFamily("bggen_buffered_events", "Events buffered in memory, not yet written",
                                     labels=["kind"])
        buffered.add_metric(["impressions"], len(s.impressions))
        buffered.add_metric(["misses"], len(s.misses))
        buffered.add_metric(["clicks"], len(s.clicks))
        yield buffered


class Metrics:
    """The app's registry, its request metrics and the ASGI middleware that records them."""

    def __init__(self, state):
        self.registry = CollectorRegistry()
        self.requests = Counter("bggen_http_requests", "HTTP requests by route template, method and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("bggen_http_request_seconds", "HTTP request latency by route template", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(ServingCollector(state))

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)


class RequestMetrics:
    """Pure ASGI middleware: each HTTP request's route template, status and duration."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), [500]

        async def sending(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            # the route template, never the raw path: unmatched paths would grow the label set without bound
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.observe(template, scope.get("method", ""), status[0], time.perf_counter() - start)
