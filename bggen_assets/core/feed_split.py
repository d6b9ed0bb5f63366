"""A feed version split into per-category snapshots once, for the sensor and every partition.

Reading a 1M-row feed takes seconds; a sensor tick and each of a merchant's partitions must not
repeat it. A version of a feed (its path, size and mtime, its mapping file's, the settings) is
streamed once into a directory of its own under the split cache::

    <cache>/<merchant>/<version digest>/
        summary.json              format, per category: rows, rejected, out of stock, content hash
        <category>.tsv            the category's usable rows (line + FEED_COLUMNS), in feed order
        rejected.jsonl            every rejected row (file, line, product id, category, reason)

The directory is written under a temporary name and renamed into place: readers see a whole
split or none, and two processes splitting the same version at once both end with a whole one.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Optional

from .feed_formats import CategoryMapping, FeedRow, FeedStream, RowRejection, uri_scheme
from .keys import digest

SPLIT_VERSION = 1
SUMMARY = "summary.json"
REJECTED = "rejected.jsonl"
KEEP_OLD_S = 3600.0  # an older split stays this long: a run that started on it can finish reading


def stamp(path: Optional[Path]) -> Optional[tuple[int, int]]:
    """(size, mtime_ns): the cheap fingerprint of a file; None when it is absent."""
    if path is None:
        return None
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_size, st.st_mtime_ns


def is_local_uri(uri: str) -> bool:
    return uri_scheme(uri) in ("", "file")


@dataclass
class CategorySummary:
    rows: int = 0
    rejected: int = 0
    out_of_stock: int = 0
    content_hash: str = ""
    local_images: int = 0  # rows whose image is a local file (their stat joins the sensor's fingerprint)


@dataclass
class FeedSplit:
    directory: Path
    feed: str
    format: str
    categories: dict[str, CategorySummary] = field(default_factory=dict)
    unassigned_rejected: int = 0  # rejected rows without a category (no id, no category, unparsable)

    def rows(self, category: str) -> Iterator[FeedRow]:
        path = self.directory / f"{category}.tsv"
        if category not in self.categories or not path.exists():
            return
        with open(path, newline="", encoding="utf-8") as f:
            for rec in csv.reader(f, delimiter="\t"):
                yield FeedRow(int(rec[0]), *rec[1:])

    def rejections(self, category: Optional[str] = None) -> Iterator[RowRejection]:
        """The rejected rows of a category ("" : those without one; None: all)."""
        with open(self.directory / REJECTED, encoding="utf-8") as f:
            for line in f:
                r = RowRejection(**json.loads(line))
                if category is None or r.category == category:
                    yield r

    def to_json(self) -> str:
        return json.dumps({"feed": self.feed, "format": self.format, "unassigned_rejected": self.unassigned_rejected,
                           "categories": {c: asdict(s) for c, s in self.categories.items()}}, sort_keys=True)

    @classmethod
    def load(cls, directory: Path) -> "FeedSplit":
        doc = json.loads((directory / SUMMARY).read_text())
        return cls(directory, doc["feed"], doc["format"],
                   {c: CategorySummary(**s) for c, s in doc["categories"].items()}, doc["unassigned_rejected"])


def version_key(feed: Path, mapping: Optional[Path], skip_out_of_stock: bool) -> str:
    return digest(SPLIT_VERSION, str(feed.resolve()), stamp(feed), str(mapping), stamp(mapping), skip_out_of_stock)[:32]


def write_split(stream: FeedStream, directory: Path) -> FeedSplit:
    """Stream the feed once into `directory` (which must not exist yet)."""
    tmp = directory.parent / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir(parents=True)
    try:
        summaries: dict[str, CategorySummary] = {}
        hashes: dict[str, "hashlib._Hash"] = {}
        # one open file per category: categories are first levels of a taxonomy (tens, not thousands)
        files, writers = {}, {}
        unassigned = 0
        with open(tmp / REJECTED, "w", encoding="utf-8") as rejected:
            for parsed in stream:
                if isinstance(parsed, RowRejection):
                    rejected.write(json.dumps(asdict(parsed)) + "\n")
                    if parsed.category:
                        summaries.setdefault(parsed.category, CategorySummary()).rejected += 1
                    else:
                        unassigned += 1
                    continue
                cat = parsed.category
                if cat not in writers:
                    files[cat] = open(tmp / f"{cat}.tsv", "w", newline="", encoding="utf-8")
                    writers[cat] = csv.writer(files[cat], delimiter="\t", lineterminator="\n")
                    hashes[cat] = hashlib.sha256()
                values = [parsed.product_id, parsed.title, cat, parsed.subcategory, parsed.colour, parsed.image_uri]
                writers[cat].writerow([parsed.line, *values])
                hashes[cat].update("\x1f".join(values).encode() + b"\n")
                summary = summaries.setdefault(cat, CategorySummary())
                summary.rows += 1
                summary.local_images += is_local_uri(parsed.image_uri)
        for f in files.values():
            f.close()
        for cat, n in stream.out_of_stock.items():
            summaries.setdefault(cat, CategorySummary()).out_of_stock = n
        for cat, summary in summaries.items():
            summary.content_hash = hashes[cat].hexdigest() if cat in hashes else hashlib.sha256().hexdigest()
        split = FeedSplit(directory, str(stream.path), stream.format, dict(sorted(summaries.items())), unassigned)
        (tmp / SUMMARY).write_text(split.to_json())
        try:
            os.rename(tmp, directory)
        except OSError:  # another process renamed its split of this version first: the same content
            shutil.rmtree(tmp, ignore_errors=True)
        return FeedSplit.load(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_or_split(feed: Path, cache_root: Path, mapping_path: Optional[Path], mapping: CategoryMapping,
                  skip_out_of_stock: bool = True) -> FeedSplit:
    """The split of the feed's current version: read from the cache, or made now (once)."""
    root = cache_root / feed.name
    directory = root / version_key(feed, mapping_path, skip_out_of_stock)
    if (directory / SUMMARY).exists():
        return FeedSplit.load(directory)
    split = write_split(FeedStream(feed, mapping, skip_out_of_stock), directory)
    _drop_old_splits(root, keep=directory)
    return split


def _drop_old_splits(root: Path, keep: Path) -> None:
    now = time.time()
    for old in root.iterdir():
        if old != keep and now - old.stat().st_mtime > KEEP_OLD_S:
            shutil.rmtree(old, ignore_errors=True)


def main(argv: Optional[list[str]] = None) -> int:
    """`python -m bggen_assets.core.feed_split FEED CACHE_DIR`: split one feed, print what it found
    with the time taken and this process's peak RSS as JSON (benchmarks/catalog.py and the scale
    test measure a split in a process of its own this way)."""
    import argparse
    import resource
    import sys

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("feed", type=Path)
    p.add_argument("cache", type=Path)
    a = p.parse_args(argv)
    started = time.perf_counter()
    split = load_or_split(a.feed, a.cache, None, CategoryMapping())
    seconds = time.perf_counter() - started
    rows = sum(c.rows for c in split.categories.values())
    rejected = sum(c.rejected for c in split.categories.values()) + split.unassigned_rejected
    out_of_stock = sum(c.out_of_stock for c in split.categories.values())
    json.dump({"format": split.format, "rows": rows, "rejected": rejected, "out_of_stock": out_of_stock,
               "read": rows + rejected + out_of_stock, "seconds": seconds,
               "peak_rss_mib": _peak_rss_mib(resource),
               "categories": {c: s.rows for c, s in split.categories.items()}}, sys.stdout)
    return 0


def _peak_rss_mib(resource) -> float:
    """This process image's peak RSS. VmHWM, not ru_maxrss: on Linux ru_maxrss keeps the high-water
    mark of the process that forked us (exec records it), so a child of a big parent reads big."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    raise SystemExit(main())
