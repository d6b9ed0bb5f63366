"""The serving index in the object store: the one place that knows its keys and how it is published.

Per (merchant, category) partition::

    index/<merchant>/<category>/v000007-<sha256[:12]>.json   one version (an IndexDocument), never rewritten
    index/<merchant>/<category>/current.json                 the pointer (an IndexPointer) to the live one

The pipeline publishes (new version, then the pointer flip); serving replicas read the pointer and,
when it moved, the document it names. The flip is a compare-and-swap on the pointer (the store's
conditional writes), so the pointer only ever moves from version n to n + 1: two publishers of one
partition never share a version, and the one that lost the swap publishes again on top of the winner.
"""
from __future__ import annotations

import hashlib
import time
from typing import Callable, NamedTuple, Optional

from . import keys
from .covers import CanvasIndex, canvas_index, find_covering_placement, request_canvas
from .geometry import Bucket, CoverCanvas, Placement, bucket_for, canvas_from_id, place_product
from .manifests import IndexDocument, IndexEntry, IndexPointer, PlanManifest, Value, item_key
from .store import ObjectNotFound, ObjectStore

ROOT = "index"
POINTER_NAME = "current.json"
# How many times a publisher that lost the pointer's compare-and-swap tries again on top of the
# winner: each lost try means another publisher advanced the pointer, so n concurrent publishers
# all land within n tries.
PUBLISH_ATTEMPTS = 64


class PublishConflict(RuntimeError):
    """A publish lost the pointer's compare-and-swap to other publishers too many times in a row."""


def index_prefix(merchant: str, category: str) -> str:
    return keys.partition_prefix(ROOT, merchant, category)


def pointer_key(merchant: str, category: str) -> str:
    return f"{index_prefix(merchant, category)}/{POINTER_NAME}"


def _partition_of_pointer(key: str) -> Optional[tuple[str, str]]:
    """(merchant, category) when key is a partition's pointer, else None."""
    parts = key.split("/")
    if len(parts) == 4 and parts[0] == ROOT and parts[3] == POINTER_NAME:
        return parts[1], parts[2]
    return None


def read_pointer(store: ObjectStore, merchant: str, category: str) -> Optional[IndexPointer]:
    """The partition's live version, or None when it never published."""
    try:
        return IndexPointer.from_json(store.get_bytes(pointer_key(merchant, category)))
    except ObjectNotFound:
        return None


def read_document(store: ObjectStore, pointer: IndexPointer) -> IndexDocument:
    return IndexDocument.from_json(store.get_bytes(pointer.key))


def read_current(store: ObjectStore, merchant: str, category: str) -> Optional[IndexDocument]:
    """The partition's live index document, or None when it never published."""
    pointer = read_pointer(store, merchant, category)
    return None if pointer is None else read_document(store, pointer)


def _read_tagged_pointer(store: ObjectStore, merchant: str, category: str) -> Optional[tuple[IndexPointer, str]]:
    try:
        data, tag = store.get_tagged(pointer_key(merchant, category))
    except ObjectNotFound:
        return None
    return IndexPointer.from_json(data), tag


def publish(store: ObjectStore, document: IndexDocument, now: Callable[[], float] = time.time,
            attempts: int = PUBLISH_ATTEMPTS) -> IndexPointer:
    """Write the new version under its own key, then flip the pointer: readers see the old index
    or the new one, never a partial one.

    The flip is conditional on the pointer still being the one this version was numbered after
    (`put_if_match` on its tag, or `put_if_absent` for a partition's first version), so every
    published version is its predecessor's + 1 and no two publishers share one. A publisher that
    lost the swap renumbers its document after the winner's version and tries again (its lost
    version object stays unreferenced, like one of a killed publish); after `attempts` losses in a
    row it raises PublishConflict."""
    merchant, category = document.merchant, document.category
    pkey = pointer_key(merchant, category)
    for _ in range(attempts):
        current = _read_tagged_pointer(store, merchant, category)
        version = current[0].version + 1 if current else 1
        numbered = document.model_copy(update={"version": version, "published_at": now()})
        body = numbered.to_json()
        key = f"{index_prefix(merchant, category)}/v{version:06d}-{hashlib.sha256(body).hexdigest()[:12]}.json"
        store.put_bytes(key, body, "application/json")
        new_pointer = IndexPointer(version=version, key=key, entries=len(numbered.entries))
        flipped = (store.put_if_match(pkey, new_pointer.to_json(), current[1], "application/json") if current
                   else store.put_if_absent(pkey, new_pointer.to_json(), "application/json"))
        if flipped:
            return new_pointer
    raise PublishConflict(f"publishing {merchant}/{category} lost the pointer's compare-and-swap {attempts} times "
                          f"in a row ({pkey} in {_describe(store)}): too many concurrent publishers of one partition")


def _describe(store: ObjectStore) -> str:
    describe = getattr(store, "describe", None)
    return describe() if callable(describe) else type(store).__name__


def categories(store: ObjectStore, merchant: str) -> list[str]:
    """The categories of a merchant that have a published index, sorted."""
    prefix = f"{ROOT}/{keys.check_name('merchant', merchant)}/"
    return sorted({found[1] for k in store.list_keys(prefix) if (found := _partition_of_pointer(k))})


def published_partitions(store: ObjectStore) -> list[tuple[str, str]]:
    """Every (merchant, category) with a published index."""
    return [found for k in store.list_keys(f"{ROOT}/") if (found := _partition_of_pointer(k))]


class IndexCompleteness(Value):
    """The index_complete check's findings (lists cut to their first 20)."""

    planned: int
    indexed: int
    missing: tuple[str, ...]  # planned item keys without an entry
    missing_count: int
    absent_images: tuple[str, ...]  # entries whose image is not in the store
    absent_count: int

    @property
    def complete(self) -> bool:
        return self.missing_count == 0 and self.absent_count == 0


def completeness(plan: PlanManifest, pointer: IndexPointer, store: ObjectStore) -> IndexCompleteness:
    """Every planned (product, bucket, prompt) in the published index, and every image in the store."""
    doc = read_document(store, pointer)
    missing = [item.key for item in plan.items if item.key not in doc.entries]
    absent = [e.image_key for e in doc.entries.values() if not store.exists(e.image_key)]
    return IndexCompleteness(planned=len(plan.items), indexed=len(doc.entries), missing=missing[:20],
                             missing_count=len(missing), absent_images=absent[:20], absent_count=len(absent))


# -- lookups: which canvas serves a request ----------------------------------------------------------
class Found(NamedTuple):
    """The canvas that serves a request: its id (a grid bucket or cover canvas id) and entry."""

    canvas_id: str
    entry: IndexEntry


class _ProductCanvases(NamedTuple):
    index: CanvasIndex
    found: tuple[Found, ...]  # in index.canvases order


def _as_cover(canvas_id: str) -> CoverCanvas:
    canvas = canvas_from_id(canvas_id)
    # a grid bucket canvas covers whatever the largest cover canvas inside it dominates
    return CoverCanvas.inside_bucket(canvas) if isinstance(canvas, Bucket) else canvas


class CanvasLookup:
    """Which generated canvas of an index serves a request (product, theme, placement).

    First the request's own canvas (its grid bucket, or in a cover index the smallest cover canvas
    it fits), a dict lookup; else, when the index names its bounds, **containment**: any canvas of
    the product and theme that covers the request within them, the sharpest one (covers.
    find_covering_placement over a small per-product array, built on first use and kept with this
    lookup, so once per index version). An index without bounds (version 2 and older) answers
    from the own bucket only."""

    def __init__(self, doc: IndexDocument):
        self.doc = doc
        self.bounds = doc.bounds.cover_bounds() if doc.bounds is not None else None
        self._grouped: Optional[dict[tuple[str, str], list[tuple[str, IndexEntry]]]] = None
        self._products: dict[tuple[str, str], _ProductCanvases] = {}

    def requested_id(self, product_id: str, placement: Placement) -> str:
        """The id of the canvas this request asks for: what a miss queues."""
        _, _, bw, bh = self.doc.products[product_id].bbox
        if self.doc.bucketing == "cover":
            return request_canvas(bw, bh, placement).id
        return bucket_for(place_product(bw, bh, placement), self.doc.bucket_ratio).id

    def find(self, product_id: str, prompt_id: str, placement: Placement) -> Optional[Found]:
        own = self.requested_id(product_id, placement)
        entry = self.doc.entries.get(item_key(product_id, own, prompt_id))
        if entry is not None:
            return Found(own, entry)
        if self.bounds is None:
            return None
        canvases = self._canvases(product_id, prompt_id)
        if canvases is None:
            return None
        _, _, bw, bh = self.doc.products[product_id].bbox
        k = find_covering_placement(canvases.index, bw, bh, placement, self.bounds)
        return canvases.found[k] if k >= 0 else None

    def _canvases(self, product_id: str, prompt_id: str) -> Optional[_ProductCanvases]:
        key = (product_id, prompt_id)
        built = self._products.get(key)
        if built is None:
            if self._grouped is None:
                grouped: dict[tuple[str, str], list[tuple[str, IndexEntry]]] = {}
                for k, entry in self.doc.entries.items():
                    pid, canvas_id, prompt = k.split("|")
                    grouped.setdefault((pid, prompt), []).append((canvas_id, entry))
                self._grouped = grouped
            rows = self._grouped.get(key)
            if not rows or product_id not in self.doc.products:
                return None
            by_canvas: dict[CoverCanvas, Found] = {}
            for canvas_id, entry in rows:
                by_canvas.setdefault(_as_cover(canvas_id), Found(canvas_id, entry))
            _, _, bw, bh = self.doc.products[product_id].bbox
            index = canvas_index(list(by_canvas), bw / bh)
            built = _ProductCanvases(index, tuple(by_canvas[c] for c in index.canvases))
            self._products[key] = built
        return built
