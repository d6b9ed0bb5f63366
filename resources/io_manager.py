"""Asset values are small typed manifests (keys, boxes, counts) kept in the object store as JSON.

Images never pass through the IO manager: assets stream them to the store one product at a time,
so a partition's memory stays flat whatever its size. A manifest is read back as the type the
consuming asset's parameter names (`catalog: CatalogManifest`), through that type's `from_json`,
which also reads the untyped manifests stored before the types existed.
"""

from dagster import ConfigurableIOManager, InputContext, OutputContext, ResourceDependency

from bggen_assets.core.keys import partition_prefix
from bggen_assets.core.manifests import Document
from bggen_assets.partitions import split_key

from .object_store import ObjectStore


def manifest_key(asset: str, merchant: str, category: str) -> str:
    """Where the manifest of one asset's partition is stored."""
    return f"{partition_prefix('manifests', merchant, category)}/{asset}.json"


class ManifestIOManager(ConfigurableIOManager):
    store: ResourceDependency[ObjectStore]

    def _key(self, context) -> str:
        merchant, category = split_key(context.asset_partition_key)
        return manifest_key("-".join(context.asset_key.path), merchant, category)

    def handle_output(self, context: OutputContext, obj) -> None:
        if obj is None:
            return
        if not isinstance(obj, Document):
            raise TypeError(f"{context.asset_key.to_user_string()} returned a {type(obj).__name__}; "
                            f"the manifest IO manager stores bggen_assets.core.manifests documents")
        self.store.put_bytes(self._key(context), obj.to_json(), "application/json")

    def load_input(self, context: InputContext):
        kind = context.dagster_type.typing_type
        if not (isinstance(kind, type) and issubclass(kind, Document)):
            raise TypeError(f"input {context.name!r} must be annotated with its manifest type "
                            f"(bggen_assets.core.manifests), not {kind!r}")
        return kind.from_json(self.store.get_bytes(self._key(context)))
