"""What an image fetch may do, as pure rules: which addresses it may connect to, which responses it
retries and after how long, and the caps on what it reads. The I/O (httpx) is
resources/image_fetcher.py.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Optional, Sequence

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


class FetchRefused(ValueError):
    """A fetch that policy forbids (an address, a redirect's scheme): never retried."""


def parse_networks(text: Optional[str]) -> tuple[IPNetwork, ...]:
    """'127.0.0.0/8, 10.1.0.0/16' (BGGEN_FETCH_ALLOW_NETWORKS) -> networks; a bad CIDR is an error naming it."""
    out = []
    for part in (text or "").replace(";", ",").split(","):
        if part.strip():
            try:
                out.append(ipaddress.ip_network(part.strip(), strict=False))
            except ValueError as exc:
                raise ValueError(f"BGGEN_FETCH_ALLOW_NETWORKS: {part.strip()!r} is not a CIDR network: {exc}") from None
    return tuple(out)


def refusal(address: str, allowed: Sequence[IPNetwork]) -> Optional[str]:
    """Why connecting to `address` is server-side request forgery (None: it is not). Loopback,
    private, link-local, multicast, reserved and unspecified addresses are refused unless an
    allowed network contains them."""
    ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1
    if any(ip in net for net in allowed):
        return None
    for kind, bad in (("loopback", ip.is_loopback), ("private", ip.is_private), ("link-local", ip.is_link_local),
                      ("multicast", ip.is_multicast), ("reserved", ip.is_reserved), ("unspecified", ip.is_unspecified)):
        if bad:
            return f"{ip} is a {kind} address (allow it with BGGEN_FETCH_ALLOW_NETWORKS)"
    return None


def retry_delay(attempt: int, backoff_s: float, retry_after: Optional[str] = None, cap_s: float = 30.0) -> float:
    """Seconds before retry number `attempt` (1-based): the server's Retry-After in seconds where it
    gives one, else exponential backoff; never more than cap_s."""
    if retry_after:
        try:
            return min(cap_s, max(0.0, float(retry_after)))
        except ValueError:
            pass  # an HTTP date: fall back to our own backoff
    return min(cap_s, backoff_s * 2 ** (attempt - 1))


@dataclass(frozen=True)
class Caps:
    max_bytes: int = 16 * 1024 * 1024  # Merchant Center's image size limit
    max_pixels: int = 64_000_000
    max_redirects: int = 5
