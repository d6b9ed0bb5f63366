"""Where the merchant feeds, placements and prompts live, how feeds are read, and the bucketing settings."""

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from dagster import ConfigurableResource
from pydantic import Field

from bggen_assets.core.feed_formats import CategoryMapping, FeedError
from bggen_assets.core.feed_split import FeedSplit, load_or_split
from bggen_assets.core.feeds import (
    ConfigError,
    FeedRow,
    Prompt,
    load_yaml,
    parse_placements,
    parse_prompts,
    read_feed,
)
from bggen_assets.core.geometry import Placement
from bggen_assets.core.keys import InvalidName, check_name
from bggen_assets.core.manifests import BUCKETING_MODES

from .image_fetcher import FetchSettings

# <merchant>.<one of these>[.gz]; the format itself is detected from the content
FEED_SUFFIXES = (".csv", ".tsv", ".txt", ".xml", ".parquet")
MAPPING_SUFFIXES = (".mapping.yaml", ".mapping.yml")
DEFAULT_PROMPT_SET = "default"


@dataclass(frozen=True)
class FeedDirectory:
    """The feeds directory as read: merchant -> feed file, and the files skipped with why."""

    feeds: dict[str, Path] = field(default_factory=dict)
    mappings: dict[str, Path] = field(default_factory=dict)
    skipped: tuple[str, ...] = ()


@dataclass(frozen=True)
class PromptSet:
    name: str  # the prompts file's category whose prompts these are ("default": the fallback)
    prompts: list[Prompt]
    fallback: bool  # True: the category has none of its own and uses the 'default' set


def _feed_name(path: Path) -> Optional[tuple[str, str]]:
    """(merchant stem, kind) for a feed or mapping file name, else None."""
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    for suffix in MAPPING_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)], "mapping"
    for suffix in FEED_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)], "feed"
    return None


class CreativeConfig(ConfigurableResource):
    """feeds_dir holds one feed per merchant (`<merchant>.csv|tsv|txt|xml|parquet`, optionally
    `.gz`), optional `<merchant>.mapping.yaml` files, and the images local feeds point at (a local
    image path must stay under feeds_dir)."""

    feeds_dir: str = "bggen_data/sample/feeds"
    placements_path: str = "bggen_data/sample/placements.yaml"
    prompts_path: str = "bggen_data/sample/prompts.yaml"
    bucket_ratio: float = 1.2
    canvas_pixels: int = 786_432  # 1024 x 768: the largest standard placements upscale at most ~2x
    skip_out_of_stock: bool = True
    max_rejected_fraction: float = 0.5  # more of a partition's rows rejected: a mass failure (blocking check)
    split_cache_dir: str = ""  # where feed versions are split per category; "" : the system temp dir
    fetch: FetchSettings = Field(default_factory=FetchSettings)
    # grid: one canvas per grid bucket (the paper); cover: fewer canvases chosen freely, at no worse
    # a worst-case area ratio than the grid's at bucket_ratio (core/covers.py)
    bucketing: str = "grid"

    def bucketing_mode(self) -> str:
        if self.bucketing not in BUCKETING_MODES:
            raise ConfigError(f"bucketing must be one of {', '.join(BUCKETING_MODES)}, got {self.bucketing!r}")
        return self.bucketing

    def feed_directory(self) -> FeedDirectory:
        """Every usable feed; a file with an unusable name or format is reported and skipped alone."""
        root = Path(self.feeds_dir)
        if not root.is_dir():
            return FeedDirectory()
        feeds: dict[str, list[Path]] = {}
        mappings, skipped = {}, []
        for path in sorted(root.iterdir()):
            if path.name.startswith(".") or not path.is_file():
                continue  # hidden files and the image directories
            found = _feed_name(path)
            if found is None:
                skipped.append(f"{path}: not a feed (use <merchant>.{{{','.join(s[1:] for s in FEED_SUFFIXES)}}}[.gz])")
                continue
            stem, kind = found
            try:
                check_name("merchant", stem)
            except InvalidName as exc:
                skipped.append(f"{path}: feed file name: {exc}")
                continue
            if kind == "mapping":
                mappings[stem] = path
            else:
                feeds.setdefault(stem, []).append(path)
        out = {}
        for merchant, paths in feeds.items():
            if len(paths) > 1:
                skipped.append(f"{', '.join(map(str, paths))}: more than one feed for merchant {merchant!r}; keep one")
            else:
                out[merchant] = paths[0]
        return FeedDirectory(out, mappings, tuple(skipped))

    def feed_paths(self) -> dict[str, Path]:
        """merchant -> feed file (the files feed_directory skips are left out)."""
        return self.feed_directory().feeds

    def mapping(self, merchant: str) -> tuple[Optional[Path], CategoryMapping]:
        path = self.feed_directory().mappings.get(merchant)
        if path is None:
            return None, CategoryMapping()
        try:
            return path, CategoryMapping.from_doc(load_yaml(path), str(path))
        except ConfigError as exc:
            raise FeedError(str(exc)) from None

    def _feed(self, merchant: str) -> Path:
        paths = self.feed_paths()
        if merchant not in paths:
            raise ConfigError(f"no feed for merchant {merchant!r} in {self.feeds_dir}")
        return paths[merchant]

    def read_feed(self, merchant: str) -> list[FeedRow]:
        """The merchant's usable rows, in memory (small feeds, tests); the pipeline uses feed_split."""
        return read_feed(self._feed(merchant), self.mapping(merchant)[1], self.skip_out_of_stock)

    def feed_split(self, merchant: str) -> FeedSplit:
        """The merchant's current feed version split per category: made once, then read from the cache."""
        mapping_path, mapping = self.mapping(merchant)
        cache = Path(self.split_cache_dir or Path(tempfile.gettempdir()) / "bggen-feed-splits") / merchant
        return load_or_split(self._feed(merchant), cache, mapping_path, mapping, self.skip_out_of_stock)

    def placements(self, merchant: str) -> list[Placement]:
        by_merchant = parse_placements(load_yaml(Path(self.placements_path)), self.placements_path)
        found = by_merchant.get(merchant) or by_merchant.get("default")
        if not found:
            raise ConfigError(f"{self.placements_path}: no placements for merchant {merchant!r} and no 'default'")
        return found

    def prompt_set(self, category: str, merchant: Optional[str] = None) -> PromptSet:
        """The category's prompts: the set the merchant's mapping names, else the category's own,
        else the prompts file's 'default' set (fallback=True, for the caller to report)."""
        by_category = parse_prompts(load_yaml(Path(self.prompts_path)), self.prompts_path)
        name = category
        if merchant is not None:
            name = self.mapping(merchant)[1].prompt_sets.get(category, category)
            if name not in by_category and name != category:
                raise ConfigError(f"mapping of {merchant!r}: prompt set {name!r} for {category!r} is not in "
                                  f"{self.prompts_path}")
        if name in by_category:
            return PromptSet(name, by_category[name], False)
        if DEFAULT_PROMPT_SET in by_category:
            return PromptSet(DEFAULT_PROMPT_SET, by_category[DEFAULT_PROMPT_SET], True)
        raise ConfigError(f"{self.prompts_path}: no prompts for category {category!r} and no 'default' set")

    def prompts(self, category: str, merchant: Optional[str] = None) -> list[Prompt]:
        return self.prompt_set(category, merchant).prompts
