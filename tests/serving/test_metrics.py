"""GET /metrics: the API's Prometheus metrics, scraped from a live server after known traffic."""
from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from test_api import LiveServer, bandit_only, find_miss_size, make_app, params, product, world  # noqa: F401 (fixtures)


def scrape(client) -> dict:
    """{(sample name, sorted labels): value} of one scrape."""
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def test_metrics_count_requests_results_latency_caches_and_buffers(world, bandit_only):
    app = make_app(world, bandit_only, prefetch=False, response_cache_bytes=8 * 2**20)
    pid = product(world)
    mw, mh = find_miss_size(world["doc"], pid)
    with LiveServer(app) as srv, httpx.Client(base_url=srv.url, timeout=10) as client:
        for _ in range(3):
            assert client.get("/creative", params=params(world)).headers["x-cache"] == "hit"
        for _ in range(2):
            r = client.get("/creative", params=params(world, width=mw, height=mh, fill=0.35, anchor="0.1,0.9"))
            assert r.headers["x-cache"] == "miss"
        assert client.get("/creative", params=params(world, product="no-such-product")).status_code == 404
        assert client.get("/creative", params=params(world, width=0)).status_code in (400, 422)
        assert client.get("/no/such/path").status_code == 404
        m = scrape(client)

    def requests(route, status):
        return m.get(("bggen_http_requests_total", (("method", "GET"), ("route", route), ("status", str(status)))), 0)

    assert requests("/creative", 200) == 5
    assert requests("/creative", 404) == 1
    assert requests("/creative", 400) + requests("/creative", 422) == 1
    assert requests("unmatched", 404) == 1  # an unknown path is one label, never the path itself
    assert m[("bggen_http_request_seconds_count", (("route", "/creative"),))] == 7
    assert 0 < m[("bggen_http_request_seconds_sum", (("route", "/creative"),))] < 60
    assert m[("bggen_http_request_seconds_bucket", (("le", "+Inf"), ("route", "/creative")))] == 7
    assert m[("bggen_served_total", (("result", "hit"),))] == 3
    assert m[("bggen_served_total", (("result", "miss"),))] == 2
    assert m[("bggen_fallbacks_total", ())] == 2 and m[("bggen_placeholders_total", ())] == 0
    assert m[("bggen_cache_bytes", (("cache", "canvases"),))] == app.state.serving.service.cache.size > 0
    assert m[("bggen_store_errors_total", ())] == 0 and m[("bggen_store_degraded", ())] == 0
    assert m[("bggen_db_errors_total", ())] == 0 and m[("bggen_db_degraded", ())] == 0
    # the 3 hits looked up the encoded-hit LRU (a theme seen before is a cache hit)
    creatives = app.state.serving.service.creatives
    assert m[("bggen_creative_cache_lookups_total", (("result", "hit"),))] == creatives.hits
    assert creatives.hits + m[("bggen_creative_cache_lookups_total", (("result", "miss"),))] == 3
    assert m[("bggen_cache_bytes", (("cache", "creatives"),))] == creatives.size > 0
    # no flusher runs (background=False): the 5 impressions and the misses are still buffered
    assert m[("bggen_buffered_events", (("kind", "impressions"),))] == 5
    assert m[("bggen_buffered_events", (("kind", "misses"),))] == len(app.state.serving.misses)  # held by the miss gate or buffered
    assert m[("bggen_buffered_events", (("kind", "clicks"),))] == 0
