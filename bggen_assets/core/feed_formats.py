"""Merchant feeds as merchants have them, read as a stream: format detected by content.

- the project's own CSV (``product_id, category, image_uri, ...``) and Parquet;
- Google Merchant Center delimited text (TSV / CSV / pipe / tilde, any file name) and XML (RSS 2.0
  or Atom with the ``g:`` namespace ``http://base.google.com/ns/1.0``);
- Meta (Facebook) catalog CSV / TSV / XML: the same attribute names (``id``, ``image_link``,
  ``availability`` spelled ``in stock``); told apart from Merchant Center by Meta-only columns
  (``fb_product_category``, ``quantity_to_sell_on_facebook``), which changes nothing but the name
  reported.

Any of them may be gzip-compressed (detected by its magic bytes, whatever the suffix). Text must be
UTF-8, with or without BOM, LF or CRLF; anything else is a :class:`FeedError` naming the file.

A feed is read row by row (``csv.reader`` over a decoding stream, expat fed in chunks, Parquet in
record batches): memory does not grow with the feed. Each row is either a :class:`FeedRow` or a
:class:`RowRejection` (file, line, reason); a bad row never sinks the feed. Only a file that is not
a feed at all (no header, unknown columns, not UTF-8, not XML) raises.
"""
from __future__ import annotations

import codecs
import csv
import gzip
import hashlib
import io
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterator, Optional, Union
from xml.parsers import expat

from .keys import NAME_RE, PRODUCT_ID_RE, InvalidName, InvalidProductId, check_name, check_product_id

FEED_COLUMNS = ("product_id", "title", "category", "subcategory", "colour", "image_uri")
OWN_REQUIRED = ("product_id", "category", "image_uri")
MAX_FIELD = {"product_id": 128, "title": 512, "category": 64, "subcategory": 128, "colour": 64, "image_uri": 1024}
GMC_NS = "http://base.google.com/ns/1.0"
ATOM_NS = "http://www.w3.org/2005/Atom"
# Merchant Center / Meta attributes bggen reads (the others, e.g. brand, price, link, gender,
# age_group, item_group_id, additional_image_link, are accepted and ignored: nothing downstream uses them yet)
MERCHANT_ATTRIBUTES = ("id", "title", "image_link", "product_type", "google_product_category", "color", "availability")
META_ONLY = frozenset({"fb_product_category", "quantity_to_sell_on_facebook", "commerce_tax_category"})
OUT_OF_STOCK = frozenset({"out_of_stock", "discontinued"})  # GMC and Meta spellings, normalised
IMAGE_SCHEMES = ("", "file", "http", "https")
SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
DELIMITERS = ("\t", ",", "|", "~")
CHUNK = 1 << 16
csv.field_size_limit(1 << 20)  # a description may exceed csv's 128 KiB default; far larger is an error


class FeedError(ValueError):
    """A file that is not a usable feed: the message names the file (and the line where known)."""


@dataclass
class FeedRow:
    line: int
    product_id: str
    title: str
    category: str
    subcategory: str
    colour: str
    image_uri: str
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {c: getattr(self, c) for c in FEED_COLUMNS}


@dataclass(frozen=True)
class RowRejection:
    """A row left out of the feed, alone: where it is and why (category "" when it has none)."""

    file: str
    line: int
    product_id: str
    category: str
    reason: str


Parsed = Union[FeedRow, RowRejection]


# -- categories ------------------------------------------------------------------------------------
def slug(value: str, limit: int = 64) -> str:
    """'Apparel & Accessories' -> 'apparel-accessories' (ASCII folding, as check_name wants)."""
    ascii_text = unicodedata.normalize("NFKD", value).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")[:limit].strip("-")


def _levels(value: str) -> tuple[str, ...]:
    return tuple(part.strip().casefold() for part in value.split(">") if part.strip())


@dataclass(frozen=True)
class CategoryMapping:
    """A merchant's mapping file: feed category values (a path or a prefix of its levels) -> bggen
    categories, and bggen categories -> the prompt set (a category of the prompts file) they use::

        categories:
          "Apparel & Accessories > Shoes": footwear
          "Home & Garden": home
        prompts:
          footwear: footwear
    """

    categories: dict[tuple[str, ...], str] = field(default_factory=dict)
    prompt_sets: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_doc(cls, doc: Any, where: str) -> "CategoryMapping":
        if doc is None:
            return cls()
        if not isinstance(doc, dict) or set(doc) - {"categories", "prompts"}:
            raise FeedError(f"{where}: expected a mapping with 'categories' and/or 'prompts'")
        cats, sets = {}, {}
        for raw, name in (doc.get("categories") or {}).items():
            try:
                cats[_levels(str(raw))] = check_name("category", str(name))
            except InvalidName as exc:
                raise FeedError(f"{where}: categories[{raw!r}]: {exc}") from None
        for cat, prompt_set in (doc.get("prompts") or {}).items():
            try:
                sets[check_name("category", str(cat))] = check_name("category", str(prompt_set))
            except InvalidName as exc:
                raise FeedError(f"{where}: prompts[{cat!r}]: {exc}") from None
        return cls(cats, sets)

    def resolve(self, value: str) -> tuple[str, str]:
        """A feed category path -> (category, subcategory): the longest mapped prefix, else the
        slugged first level; the subcategory is the next level, slugged."""
        levels = _levels(value)
        for n in range(len(levels), 0, -1):
            if levels[:n] in self.categories:
                return self.categories[levels[:n]], slug(levels[n], 128) if n < len(levels) else ""
        if not levels:
            return "", ""
        return slug(levels[0]), slug(levels[1], 128) if len(levels) > 1 else ""


# -- rows ------------------------------------------------------------------------------------------
class _Rows:
    """Turns raw records (attribute -> text) into rows or rejections: the one validation of every format."""

    def __init__(self, path: str, merchant_format: bool, mapping: CategoryMapping, skip_out_of_stock: bool):
        self.path = path
        self.merchant_format = merchant_format
        self.mapping = mapping
        self.skip_out_of_stock = skip_out_of_stock
        self.names = {c: c for c in FEED_COLUMNS}  # the feed's own name of each column, for messages
        if merchant_format:
            self.names.update(product_id="id", category="product_type", image_uri="image_link", colour="color")
        self._categories: dict[str, tuple[str, str]] = {}
        self.out_of_stock: dict[str, int] = {}  # category -> rows skipped
        # 8-byte digests, not the ids: a 1M-row feed's duplicate check stays ~60 MB
        self._seen: set[bytes] = set()

    def product_id_of(self, values: dict[str, str]) -> str:
        return (values.get("id" if self.merchant_format else "product_id") or "").strip()

    def raw_category(self, values: dict[str, str]) -> str:
        if self.merchant_format:
            return (values.get("product_type") or "").strip() or (values.get("google_product_category") or "").strip()
        return (values.get("category") or "").strip()

    def category_of(self, values: dict[str, str]) -> str:
        """The row's category where it can be told, else ""."""
        category = self._category(self.raw_category(values))[0]
        return category if NAME_RE.match(category) else ""

    def reject(self, line: int, pid: str, category: str, reason: str) -> RowRejection:
        return RowRejection(self.path, line, pid[:128], category, reason)

    def _category(self, raw: str) -> tuple[str, str]:
        """(category, subcategory) of a feed category value, cached: a feed has few distinct ones."""
        found = self._categories.get(raw)
        if found is None:
            if self.merchant_format:
                found = self.mapping.resolve(raw)
            else:  # the category column is a bggen category already, unless the mapping renames it
                found = (self.mapping.categories.get(_levels(raw), raw.lower()), "")
            if len(self._categories) > 100_000:  # a feed with a unique value per row: stay bounded
                self._categories.clear()
            self._categories[raw] = found
        return found

    def make(self, line: int, values: dict[str, str]) -> Optional[Parsed]:
        """None for a row that is skipped, not rejected (out of stock)."""
        names = self.names
        get = values.get
        if self.merchant_format:
            pid = (get("id") or "").strip()
            image = (get("image_link") or "").strip()
            colour = (get("color") or "").strip().lower()
        else:
            pid = (get("product_id") or "").strip()
            image = (get("image_uri") or "").strip()
            colour = (get("colour") or "").strip().lower()
        if not pid:
            return self.reject(line, "", self.category_of(values), f"column '{names['product_id']}' is empty")
        if not PRODUCT_ID_RE.match(pid):
            try:
                check_product_id(pid)
            except InvalidProductId as exc:
                return self.reject(line, pid, self.category_of(values), f"column '{names['product_id']}': {exc}")
        category, subcategory = self._category(self.raw_category(values))
        if not self.merchant_format:
            subcategory = (get("subcategory") or "").strip().lower()
        if not category:
            what = "product_type' and 'google_product_category' are" if self.merchant_format else "category' is"
            return self.reject(line, pid, "", f"column '{what} empty")
        if not NAME_RE.match(category):
            try:
                check_name("category", category)
            except InvalidName as exc:
                return self.reject(line, pid, "", f"column '{names['category']}': {exc}")
        if not image:
            return self.reject(line, pid, category, f"column '{names['image_uri']}' is empty")
        scheme = uri_scheme(image)
        if scheme not in IMAGE_SCHEMES:
            return self.reject(line, pid, category, f"column '{names['image_uri']}': unsupported image "
                                                    f"URI scheme {scheme!r} (use http(s), a path or file://)")
        title = (get("title") or "").strip()
        fields = (pid, title, category, subcategory, colour, image)
        for col, value in zip(FEED_COLUMNS, fields):
            if len(value) > MAX_FIELD[col]:
                return self.reject(line, pid, category, f"column '{names[col]}' is longer than {MAX_FIELD[col]} characters")
        availability = get("availability")
        if availability and self.skip_out_of_stock and availability.strip().lower().replace(" ", "_") in OUT_OF_STOCK:
            self.out_of_stock[category] = self.out_of_stock.get(category, 0) + 1
            return None
        key = hashlib.blake2b(pid.encode(), digest_size=8).digest()
        if key in self._seen:
            return self.reject(line, pid, category, f"column '{names['product_id']}': duplicate id "
                                                    f"{pid!r} (an earlier row has it)")
        self._seen.add(key)
        return FeedRow(line, *fields)


def uri_scheme(uri: str) -> str:
    """The URI's scheme, lowercased; "" for a path (a Windows drive letter is a path too). A regex,
    not urlparse: this runs once per row and urlparse is most of a row's parsing time."""
    if uri.startswith("https://"):  # the common cases first: most feeds are all http(s)
        return "https"
    if uri.startswith("http://"):
        return "http"
    m = SCHEME_RE.match(uri)
    return m.group(1).lower() if m and len(m.group(1)) > 1 else ""


# -- opening ---------------------------------------------------------------------------------------
def _open_bytes(path: Path) -> IO[bytes]:
    raw = open(path, "rb")
    magic = raw.read(2)
    raw.seek(0)
    return gzip.GzipFile(fileobj=raw, mode="rb") if magic == b"\x1f\x8b" else raw


def _peek(stream: IO[bytes], n: int = 512) -> bytes:
    """The first bytes of a (possibly gzip) stream without consuming them."""
    return stream.peek(n)[:n] if hasattr(stream, "peek") else b""


def detect(path: Path) -> str:
    """'parquet' | 'xml' | 'delimited', by content (gzip looked through)."""
    with _open_bytes(path) as stream:
        try:
            head = _peek(stream)
        except (OSError, EOFError) as exc:
            raise FeedError(f"{path}: not a readable gzip file: {exc}") from None
    if head.startswith(b"PAR1"):
        return "parquet"
    for bom, name in ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"), (codecs.BOM_UTF16_LE, "UTF-16"),
                      (codecs.BOM_UTF16_BE, "UTF-16")):
        if head.startswith(bom):
            raise FeedError(f"{path}: the feed is {name}-encoded; save it as UTF-8 (with or without BOM)")
    text = head[3:] if head.startswith(codecs.BOM_UTF8) else head
    return "xml" if text.lstrip().startswith(b"<") else "delimited"


@dataclass
class FeedStream:
    """One feed file read once: iterate for its rows and rejections; then `format`, `out_of_stock`."""

    path: Path
    mapping: CategoryMapping = field(default_factory=CategoryMapping)
    skip_out_of_stock: bool = True
    format: str = ""
    out_of_stock: dict[str, int] = field(default_factory=dict)  # category -> rows skipped, once read

    def __iter__(self) -> Iterator[Parsed]:
        kind = detect(self.path)
        reader = {"parquet": self._parquet, "xml": self._xml, "delimited": self._delimited}[kind]
        rows: Optional[_Rows] = None
        for rows, parsed in reader():
            if parsed is not None:
                yield parsed
        if rows is not None:
            self.out_of_stock = dict(rows.out_of_stock)

    def _rows(self, columns: set[str], fmt_hint: str) -> _Rows:
        path = str(self.path)
        if "product_id" in columns:
            missing = [c for c in OWN_REQUIRED if c not in columns]
            if missing:
                raise FeedError(f"{path}:1: header is missing column '{missing[0]}' (expected {', '.join(FEED_COLUMNS)})")
            self.format = f"bggen-{fmt_hint}"
            return _Rows(path, False, self.mapping, self.skip_out_of_stock)
        if "id" in columns and "image_link" in columns:
            if "product_type" not in columns and "google_product_category" not in columns:
                raise FeedError(f"{path}:1: header is missing column 'product_type' (or 'google_product_category'): "
                                "bggen's categories come from it")
            self.format = f"{'meta' if columns & META_ONLY else 'google-merchant-center'}-{fmt_hint}"
            return _Rows(path, True, self.mapping, self.skip_out_of_stock)
        want = "'product_id' (bggen CSV) or 'id' and 'image_link' (Merchant Center / Meta)"
        raise FeedError(f"{path}:1: header is missing column {want}; found {', '.join(sorted(columns)[:12])}")

    def _delimited(self) -> Iterator[tuple[_Rows, Optional[Parsed]]]:
        path = self.path
        with _open_bytes(path) as stream:
            text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="strict", newline="")
            line_no = 1
            try:
                header_line = text.readline()
                if not header_line.strip():
                    raise FeedError(f"{path}:1: the feed is empty (expected a header: {', '.join(FEED_COLUMNS)})")
                delimiter = max(DELIMITERS, key=header_line.count)
                header = [h.strip().lower() for h in next(csv.reader([header_line], delimiter=delimiter))]
                rows = self._rows(set(header), "tsv" if delimiter == "\t" else "csv")
                reader = csv.reader(text, delimiter=delimiter, strict=True)
                width = len(header)
                while True:
                    try:
                        record = next(reader)
                    except StopIteration:
                        break
                    except csv.Error as exc:
                        line_no = 1 + reader.line_num
                        yield rows, rows.reject(line_no, "", "", str(exc))
                        continue
                    line_no = 1 + reader.line_num
                    if not any(record):  # a blank line (or one of empty fields only)
                        continue
                    if len(record) != width:
                        col = header[len(record)] if len(record) < width else f"#{len(record)} (beyond the header)"
                        values = dict(zip(header, record))  # best effort: the partition the row was meant for
                        yield rows, rows.reject(line_no, rows.product_id_of(values), rows.category_of(values),
                                                f"column {col}: expected {width} fields, found {len(record)}")
                        continue
                    yield rows, rows.make(line_no, dict(zip(header, record)))
            except UnicodeDecodeError as exc:
                raise FeedError(f"{path}:{line_no + 1}: not valid UTF-8 ({exc.reason}); save the feed as UTF-8") from None
            except (OSError, EOFError) as exc:  # a truncated or corrupt gzip member
                raise FeedError(f"{path}: unreadable after line {line_no}: {exc}") from None

    def _parquet(self) -> Iterator[tuple[_Rows, Optional[Parsed]]]:
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(self.path)
        except Exception as exc:  # pyarrow raises several types for a corrupt file
            raise FeedError(f"{self.path}: not a readable Parquet file: {exc}") from None
        rows = self._rows(set(pf.schema_arrow.names), "parquet")
        line = 0
        for batch in pf.iter_batches(batch_size=8192):
            for rec in batch.to_pylist():
                line += 1  # a Parquet "line" is the 1-based row number
                yield rows, rows.make(line, {k: "" if v is None else str(v) for k, v in rec.items()})

    def _xml(self) -> Iterator[tuple[_Rows, Optional[Parsed]]]:
        """expat fed in chunks, directly rather than through ElementTree: it gives each item's line
        number (iterparse does not), and entity declarations are refused (no entity expansion)."""
        path = str(self.path)
        parser = expat.ParserCreate(namespace_separator=" ")
        parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
        state: dict[str, Any] = {"item": None, "line": 0, "field": None, "text": [], "depth": 0, "ns": False}
        ready: list[tuple[int, dict[str, str]]] = []
        item_tags = {"item", f"{ATOM_NS} entry"}

        def refuse_entities(*_: Any) -> None:
            raise FeedError(f"{path}:{parser.CurrentLineNumber}: entity declarations are not allowed in a feed")

        def start(name: str, attrs: dict) -> None:
            if state["item"] is None:
                if name in item_tags:
                    state.update(item={}, line=parser.CurrentLineNumber, depth=0)
                return
            state["depth"] += 1
            if state["depth"] == 1:
                ns, _, local = name.rpartition(" ")
                if ns == GMC_NS or (ns in ("", ATOM_NS) and local in ("title", "link")):
                    state["field"] = local
                    state["text"] = []
                    state["ns"] = state["ns"] or ns == GMC_NS
                    if ns == ATOM_NS and local == "link" and "href" in attrs:
                        state["text"] = [attrs["href"]]

        def end(name: str) -> None:
            if state["item"] is None:
                return
            if state["depth"] == 0:
                ready.append((state["line"], state["item"]))
                state["item"] = None
                return
            if state["depth"] == 1 and state["field"]:
                value = "".join(state["text"])
                key = state["field"]
                # additional_image_link repeats; the first value of every other attribute counts
                state["item"].setdefault(key, value)
                state["field"] = None
            state["depth"] -= 1

        def text(data: str) -> None:
            if state["field"] is not None and state["depth"] == 1:
                state["text"].append(data)

        parser.StartElementHandler = start
        parser.EndElementHandler = end
        parser.CharacterDataHandler = text
        parser.EntityDeclHandler = refuse_entities
        rows: Optional[_Rows] = None
        with _open_bytes(self.path) as stream:
            while True:
                try:
                    chunk = stream.read(CHUNK)
                    parser.Parse(chunk, not chunk)
                except expat.ExpatError as exc:
                    raise FeedError(f"{path}:{exc.lineno}: not well-formed XML ({expat.errors.messages[exc.code]}); "
                                    "a feed must be UTF-8") from None
                except (OSError, EOFError) as exc:
                    raise FeedError(f"{path}: unreadable: {exc}") from None
                for line, values in ready:
                    if rows is None:
                        if not state["ns"] and not any(k in values for k in ("id", "image_link")):
                            raise FeedError(f"{path}:{line}: XML items without the Merchant Center namespace "
                                            f"xmlns:g=\"{GMC_NS}\"")
                        rows = self._rows(set(values) | {"id", "image_link", "product_type"}, "xml")
                    yield rows, rows.make(line, values)
                ready.clear()
                if not chunk:
                    break
        if rows is None:
            self._rows({"id", "image_link", "product_type"}, "xml")  # sets the format: an empty XML feed
