"""Where the merchant feeds, placements and prompts live, and the bucketing settings."""

from pathlib import Path

from dagster import ConfigurableResource

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

FEED_SUFFIXES = (".csv", ".parquet")


class CreativeConfig(ConfigurableResource):
    """feeds_dir holds one feed per merchant (`<merchant>.csv` or `.parquet`)."""

    feeds_dir: str = "bggen_data/sample/feeds"
    placements_path: str = "bggen_data/sample/placements.yaml"
    prompts_path: str = "bggen_data/sample/prompts.yaml"
    bucket_ratio: float = 1.2
    canvas_pixels: int = 786_432  # 1024 x 768: the largest standard placements upscale at most ~2x
    # grid: one canvas per grid bucket (the paper); cover: fewer canvases chosen freely, at no worse
    # a worst-case area ratio than the grid's at bucket_ratio (core/covers.py)
    bucketing: str = "grid"

    def bucketing_mode(self) -> str:
        if self.bucketing not in BUCKETING_MODES:
            raise ConfigError(f"bucketing must be one of {', '.join(BUCKETING_MODES)}, got {self.bucketing!r}")
        return self.bucketing

    def feed_paths(self) -> dict[str, Path]:
        """merchant -> feed file. Files whose stem is not a valid merchant name are an error."""
        root = Path(self.feeds_dir)
        if not root.is_dir():
            return {}
        out = {}
        for path in sorted(root.iterdir()):
            if path.suffix in FEED_SUFFIXES and path.is_file():
                try:
                    out[check_name("merchant", path.stem)] = path
                except InvalidName as exc:
                    raise ConfigError(f"{path}: feed file name: {exc}") from None
        return out

    def read_feed(self, merchant: str) -> list[FeedRow]:
        paths = self.feed_paths()
        if merchant not in paths:
            raise ConfigError(f"no feed for merchant {merchant!r} in {self.feeds_dir}")
        return read_feed(paths[merchant])

    def placements(self, merchant: str) -> list[Placement]:
        by_merchant = parse_placements(load_yaml(Path(self.placements_path)), self.placements_path)
        found = by_merchant.get(merchant) or by_merchant.get("default")
        if not found:
            raise ConfigError(f"{self.placements_path}: no placements for merchant {merchant!r} and no 'default'")
        return found

    def prompts(self, category: str) -> list[Prompt]:
        by_category = parse_prompts(load_yaml(Path(self.prompts_path)), self.prompts_path)
        if category not in by_category:
            raise ConfigError(f"{self.prompts_path}: no prompts for category {category!r}")
        return by_category[category]
