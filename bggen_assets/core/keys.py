"""Content-addressed object keys and the names allowed into them.

No key is built from unchecked input: merchant and category names are validated against a strict
pattern, everything else enters a key only through a hash.
"""
from __future__ import annotations

import hashlib
import json
import re

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
KEY_RE = re.compile(r"^[a-z0-9][a-z0-9/_.=-]{0,511}$")
# The one product-id rule of the feed, the metadata DB and the API: ASCII only, so an id compares
# byte-exact everywhere and travels in a URL query unescaped.
PRODUCT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


class InvalidName(ValueError):
    pass


class InvalidProductId(ValueError):
    pass


def check_product_id(value: str) -> str:
    """A product id the API can serve: 1-128 ASCII letters, digits, '.', '_', ':' or '-', starting with a letter or digit."""
    if not isinstance(value, str) or not PRODUCT_ID_RE.match(value):
        raise InvalidProductId(f"product id {str(value)[:140]!r} is not allowed: 1-128 letters, digits, '.', '_', ':' "
                               "or '-', starting with a letter or digit")
    return value


def check_name(kind: str, value: str) -> str:
    """Merchant and category names: lowercase letters, digits, '-' and '_', at most 64 chars."""
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise InvalidName(
            f"{kind} name {value!r} is not allowed: use 1-64 lowercase letters, digits, '-' or '_', starting with a letter or digit"
        )
    return value


def check_key(key: str) -> str:
    if not isinstance(key, str) or not KEY_RE.match(key) or ".." in key or "//" in key:
        raise InvalidName(f"object key {key!r} is not allowed")
    return key


def digest(*parts: object) -> str:
    """sha256 over a canonical JSON encoding of the parts (so tuples, floats and dicts hash stably)."""
    payload = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def source_key(image_hash: str) -> str:
    return f"sources/{image_hash[:2]}/{image_hash}"


def mask_key(image_hash: str, masker_id: str) -> str:
    return f"masks/{image_hash[:2]}/{image_hash}-{digest(masker_id)[:16]}.png"


def cutout_key(image_hash: str, masker_id: str) -> str:
    return f"cutouts/{image_hash[:2]}/{image_hash}-{digest(masker_id)[:16]}.png"


def canvas_key(content_digest: str) -> str:
    return f"canvases/{content_digest[:2]}/{content_digest}.png"


def partition_prefix(kind: str, merchant: str, category: str) -> str:
    return f"{kind}/{check_name('merchant', merchant)}/{check_name('category', category)}"
