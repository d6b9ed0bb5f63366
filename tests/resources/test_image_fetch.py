"""Image fetching over HTTP against a real server on 127.0.0.1 (tests/image_server.py), and the SSRF guard."""
import time

import pytest

from bggen_assets.core.fetch_rules import parse_networks, refusal, retry_delay
from image_server import image_server, jpeg  # noqa: F401 (fixture)
from resources.image_fetcher import FetchSettings, ImageFetcher, Validators

LOCAL = "127.0.0.0/8"


def fetcher(**kw) -> ImageFetcher:
    settings = dict(allow_networks=LOCAL, connect_timeout_s=1.0, read_timeout_s=0.5, total_timeout_s=1.0,
                    retries=2, backoff_s=0.01)
    return ImageFetcher(FetchSettings(**{**settings, **kw}))


def test_an_image_is_fetched_and_an_unchanged_one_is_not_downloaded_again(image_server):
    with fetcher() as f:
        first = f.fetch(image_server.url("/ok.jpg"))
        assert first.status == "fetched" and first.data == image_server.images["/ok.jpg"] and first.etag
        again = f.fetch(image_server.url("/ok.jpg"), Validators(first.etag, first.last_modified))
    assert again.status == "not_modified" and again.data is None
    assert image_server.hits["/ok.jpg"] == 2 and image_server.full_bodies["/ok.jpg"] == 1


def test_a_server_that_answers_too_late_times_out_after_the_retries(image_server):
    started = time.perf_counter()
    with fetcher(retries=1) as f:
        out = f.fetch(image_server.url("/slow"))
    assert out.status == "failed" and "timed out" in out.reason and out.attempts == 2
    assert image_server.hits["/slow"] == 2 and time.perf_counter() - started < 5


def test_a_slow_drip_is_cut_at_the_total_deadline(image_server):
    started = time.perf_counter()
    with fetcher(read_timeout_s=2.0, total_timeout_s=0.5) as f:
        out = f.fetch(image_server.url("/drip"))  # a byte every 50 ms: never a read timeout
    assert out.status == "failed" and "longer than 0.5 s" in out.reason
    assert time.perf_counter() - started < 3


def test_a_body_over_the_byte_cap_is_refused_while_reading(image_server):
    with fetcher(max_bytes=1_000_000) as f:
        out = f.fetch(image_server.url("/big"))
    assert out.status == "failed" and "over the 1000000-byte cap" in out.reason


def test_an_image_over_the_pixel_cap_is_refused(image_server):
    with fetcher(max_pixels=1000) as f:  # the image is 64x48 = 3072 px
        out = f.fetch(image_server.url("/ok.jpg"))
    assert out.status == "failed" and "64x48 px is over the 1000-pixel cap" in out.reason


def test_a_redirect_to_file_is_refused_and_redirects_are_capped(image_server):
    with fetcher() as f:
        out = f.fetch(image_server.url("/redirect-to/file__/etc/passwd"))
        assert out.status == "failed" and "only http(s) is fetched" in out.reason and "file:///etc/passwd" in out.reason
        loop = f.fetch(image_server.url("/loop"))
        assert loop.status == "failed" and "more than 5 redirects" in loop.reason
        ok = f.fetch(image_server.url("/redirect-to/" + image_server.url("/ok.jpg").replace("://", "__")))
        assert ok.status == "fetched"
    assert image_server.hits["/loop5"] == 1 and image_server.hits["/loop6"] == 0


@pytest.mark.parametrize("status", [500, 429])
def test_500_and_429_are_retried_with_backoff(image_server, status):
    image_server.fail_first["/ok.jpg"] = (status, 2)
    with fetcher(retries=2) as f:
        out = f.fetch(image_server.url("/ok.jpg"))
    assert out.status == "fetched" and out.attempts == 3 and image_server.hits["/ok.jpg"] == 3


def test_404_is_not_retried_and_a_500_that_persists_fails(image_server):
    image_server.fail_first["/ok.jpg"] = (500, 10)
    with fetcher(retries=2) as f:
        missing = f.fetch(image_server.url("/nope.jpg"))
        down = f.fetch(image_server.url("/ok.jpg"))
    assert missing.status == "failed" and "HTTP 404" in missing.reason and image_server.hits["/nope.jpg"] == 1
    assert down.status == "failed" and "HTTP 500 (after 3 attempts)" in down.reason


def test_a_body_that_is_not_an_image_is_refused(image_server):
    with fetcher() as f:
        out = f.fetch(image_server.url("/page.jpg"))
    assert out.status == "failed" and "not an image (text/html" in out.reason


def test_loopback_is_refused_without_the_allowlist(image_server):
    with fetcher(allow_networks="") as f:
        out = f.fetch(image_server.url("/ok.jpg"))
    assert out.status == "failed" and "127.0.0.1 is a loopback address" in out.reason
    assert image_server.hits["/ok.jpg"] == 0  # refused before connecting


@pytest.mark.parametrize("host", ["10.0.0.1", "0x0a000001", "[::ffff:10.0.0.1]", "169.254.169.254"])
def test_names_and_addresses_that_resolve_to_internal_networks_are_refused(host):
    # "0x0a000001" is a host name the system resolver (inet_aton) resolves to 10.0.0.1
    with fetcher(allow_networks=LOCAL) as f:
        out = f.fetch(f"http://{host}/image.jpg")
    assert out.status == "failed" and out.attempts == 1
    assert ("is a private address" in out.reason or "is a link-local address" in out.reason), out.reason


def test_many_images_at_bounded_concurrency(image_server):
    for i in range(30):
        image_server.images[f"/p{i}.jpg"] = jpeg((i * 8, 100, 50))
    with fetcher(concurrency=4) as f:
        outcomes = list(f.fetch_all((image_server.url(f"/p{i}.jpg"), None) for i in range(30)))
    assert sorted(o.url for o in outcomes) == sorted(image_server.url(f"/p{i}.jpg") for i in range(30))
    assert all(o.status == "fetched" for o in outcomes)


def test_rules():
    nets = parse_networks("127.0.0.0/8, 10.1.0.0/16")
    assert refusal("127.0.0.1", nets) is None and refusal("10.1.2.3", nets) is None
    assert "private" in refusal("10.2.0.1", nets) and "multicast" in refusal("224.0.0.1", ())
    assert refusal("93.184.216.34", ()) is None
    with pytest.raises(ValueError, match="not a CIDR"):
        parse_networks("localhost")
    assert retry_delay(1, 0.5) == 0.5 and retry_delay(3, 0.5) == 2.0 and retry_delay(1, 0.5, "7") == 7.0
