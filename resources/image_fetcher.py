"""Product images over HTTP(S) with httpx: the I/O half of image fetching (the rules are
bggen_assets/core/fetch_rules.py).

- bounded concurrency (a thread pool over one httpx.Client, at most `concurrency` downloads and
  twice that many requests in flight);
- connect / read timeouts, and a total deadline per image (a server dripping a byte a second
  never trips a read timeout);
- at most `max_redirects` redirects, followed by hand so that each hop is checked: only http(s);
- a byte cap (16 MiB, the Merchant Center limit) and a pixel cap, both enforced while reading (the
  image's size is known from its header, long before the body ends);
- retries with exponential backoff (or the server's Retry-After) on timeouts, 429 and 5xx;
- conditional GETs: the caller passes the ETag / Last-Modified of the last download and gets
  `not_modified` back instead of the bytes;
- server-side request forgery refused at connect time: the connection is made by a network backend
  that resolves the host itself and connects only to an address `fetch_rules.refusal` accepts, so
  a redirect, or a name re-resolved to another address between a check and the connect, cannot
  reach an internal address either.
"""
from __future__ import annotations

import socket
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional
from urllib.parse import urljoin, urlparse

import httpcore
import httpx
from dagster import Config
from PIL import Image, ImageFile

from bggen_assets.core.fetch_rules import RETRY_STATUSES, FetchRefused, parse_networks, refusal, retry_delay

REFUSED = "refused:"
SNIFF_BYTES = 1 << 20  # an image's header is in its first MiB (JPEG EXIF included); a body that is not is no image


class FetchSettings(Config):
    """How product images are fetched (BGGEN_FETCH_* in bggen_assets/deployment.py)."""

    concurrency: int = 8
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 15.0
    total_timeout_s: float = 60.0
    max_bytes: int = 16 * 1024 * 1024
    max_pixels: int = 64_000_000
    max_redirects: int = 5
    retries: int = 3
    backoff_s: float = 0.5
    allow_networks: str = ""  # CIDRs admitted despite the SSRF guard, e.g. "127.0.0.0/8"
    user_agent: str = "bggen-image-fetcher/1"


@dataclass(frozen=True)
class Validators:
    etag: str = ""
    last_modified: str = ""


@dataclass(frozen=True)
class FetchOutcome:
    url: str
    status: str  # fetched | not_modified | failed
    data: Optional[bytes] = None
    etag: str = ""
    last_modified: str = ""
    reason: str = ""
    attempts: int = 1


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: Optional[str] = None):
        super().__init__(reason)
        self.retry_after = retry_after


class _GuardedBackend(httpcore.SyncBackend):
    """Connects only to addresses the SSRF rule accepts (every address the name resolves to)."""

    def __init__(self, allowed, resolve: Callable = socket.getaddrinfo):
        self._allowed = allowed
        self._resolve = resolve

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        try:
            infos = self._resolve(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise httpcore.ConnectError(f"cannot resolve {host!r}: {exc}") from None
        addresses = list(dict.fromkeys(info[4][0] for info in infos))
        for address in addresses:  # one internal address refuses the name: no round-robin luck
            why = refusal(address, self._allowed)
            if why:
                raise httpcore.ConnectError(f"{REFUSED} {host!r} resolves to {why}")
        error: Optional[Exception] = None
        for address in addresses:
            try:
                return super().connect_tcp(address, port, timeout, local_address, socket_options)
            except httpcore.ConnectError as exc:
                error = exc
        raise error or httpcore.ConnectError(f"{host!r} resolves to no address")


class ImageFetcher:
    """Use as a context manager; `fetch` one URL or `fetch_all` many at bounded concurrency."""

    def __init__(self, settings: FetchSettings, resolve: Callable = socket.getaddrinfo):
        self.settings = settings
        transport = httpx.HTTPTransport(limits=httpx.Limits(max_connections=settings.concurrency))
        # httpx takes no network backend; its transport is a thin wrapper over this httpcore pool,
        # rebuilt here with the guarded backend (same TLS context, same limits)
        transport._pool = httpcore.ConnectionPool(ssl_context=transport._pool._ssl_context,
                                                  max_connections=settings.concurrency,
                                                  network_backend=_GuardedBackend(parse_networks(settings.allow_networks),
                                                                                  resolve))
        timeout = httpx.Timeout(settings.read_timeout_s, connect=settings.connect_timeout_s)
        self._client = httpx.Client(transport=transport, timeout=timeout, follow_redirects=False, trust_env=False,
                                    headers={"User-Agent": settings.user_agent})

    def __enter__(self) -> "ImageFetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def fetch(self, url: str, validators: Optional[Validators] = None) -> FetchOutcome:
        s = self.settings
        reason = ""
        for attempt in range(1, s.retries + 2):
            try:
                return self._once(url, validators, attempt)
            except FetchRefused as exc:
                return FetchOutcome(url, "failed", reason=str(exc), attempts=attempt)
            except _Retryable as exc:
                reason, retry_after = str(exc), exc.retry_after
            except httpx.ConnectError as exc:
                if str(exc).startswith(REFUSED):
                    return FetchOutcome(url, "failed", reason=f"{url}: {exc}", attempts=attempt)
                reason, retry_after = f"{url}: cannot connect: {exc}", None
            except httpx.TimeoutException as exc:
                reason, retry_after = f"{url}: timed out ({type(exc).__name__})", None
            except httpx.HTTPError as exc:
                return FetchOutcome(url, "failed", reason=f"{url}: {type(exc).__name__}: {exc}", attempts=attempt)
            if attempt <= s.retries:
                time.sleep(retry_delay(attempt, s.backoff_s, retry_after))
        return FetchOutcome(url, "failed", reason=f"{reason} (after {s.retries + 1} attempts)", attempts=s.retries + 1)

    def _once(self, url: str, validators: Optional[Validators], attempt: int) -> FetchOutcome:
        s = self.settings
        headers = {}
        if validators and validators.etag:
            headers["If-None-Match"] = validators.etag
        if validators and validators.last_modified:
            headers["If-Modified-Since"] = validators.last_modified
        deadline = time.monotonic() + s.total_timeout_s
        current = url
        for _hop in range(s.max_redirects + 1):
            if urlparse(current).scheme.lower() not in ("http", "https"):
                raise FetchRefused(f"{url}: redirected to {current[:200]!r}: only http(s) is fetched")
            with self._client.stream("GET", current, headers=headers) as r:
                if r.status_code in (301, 302, 303, 307, 308) and r.headers.get("location"):
                    current = urljoin(str(r.url), r.headers["location"])
                    continue
                if r.status_code == 304:
                    return FetchOutcome(url, "not_modified", etag=validators.etag if validators else "",
                                        last_modified=validators.last_modified if validators else "", attempts=attempt)
                if r.status_code in RETRY_STATUSES:
                    raise _Retryable(f"{url}: HTTP {r.status_code}", r.headers.get("retry-after"))
                if r.status_code != 200:
                    return FetchOutcome(url, "failed", reason=f"{url}: HTTP {r.status_code}", attempts=attempt)
                data = self._read(url, r, deadline)
                return FetchOutcome(url, "fetched", data, r.headers.get("etag", ""), r.headers.get("last-modified", ""),
                                    attempts=attempt)
        raise FetchRefused(f"{url}: more than {s.max_redirects} redirects")

    def _read(self, url: str, r: httpx.Response, deadline: float) -> bytes:
        s = self.settings
        declared = r.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > s.max_bytes:
            raise FetchRefused(f"{url}: {int(declared)} bytes is over the {s.max_bytes}-byte cap")
        parser = ImageFile.Parser()
        chunks, total, size = [], 0, None
        for chunk in r.iter_bytes():
            total += len(chunk)
            if total > s.max_bytes:
                raise FetchRefused(f"{url}: the body is over the {s.max_bytes}-byte cap")
            if time.monotonic() > deadline:
                raise FetchRefused(f"{url}: the download took longer than {s.total_timeout_s:g} s")
            chunks.append(chunk)
            if size is None and total - len(chunk) < SNIFF_BYTES:
                size = _image_size(parser, chunk, url)
                if size is not None and size[0] * size[1] > s.max_pixels:
                    raise FetchRefused(f"{url}: {size[0]}x{size[1]} px is over the {s.max_pixels}-pixel cap")
        if size is None:
            kind = r.headers.get("content-type", "no content type")
            raise FetchRefused(f"{url}: not an image ({kind}, {total} bytes)")
        return b"".join(chunks)

    def fetch_all(self, requests: Iterable[tuple[str, Optional[Validators]]]) -> Iterator[FetchOutcome]:
        """Outcomes in completion order; at most 2 x concurrency requests are held at once, so
        memory stays bounded whatever the number of URLs."""
        pending: set[Future] = set()
        it = iter(requests)
        with ThreadPoolExecutor(max_workers=self.settings.concurrency, thread_name_prefix="bggen-fetch") as pool:
            for url, validators in it:
                pending.add(pool.submit(self.fetch, url, validators))
                if len(pending) >= 2 * self.settings.concurrency:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in done:
                        yield f.result()
            for f in pending:
                yield f.result()


def _image_size(parser: ImageFile.Parser, chunk: bytes, url: str) -> Optional[tuple[int, int]]:
    """The image's size once its header has arrived (PIL's incremental parser), else None."""
    try:
        parser.feed(chunk)
    except Image.DecompressionBombError as exc:
        raise FetchRefused(f"{url}: {exc}") from None
    except Exception:  # noqa: BLE001 - PIL raises many types for bytes that are not (yet) an image
        return None
    return parser.image.size if parser.image is not None else None
