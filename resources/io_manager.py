"""Asset values are small JSON manifests (keys, boxes, counts) kept in the object store.

Images never pass through the IO manager: assets stream them to the store one product at a time,
so a partition's memory stays flat whatever its size.
"""

import json

from dagster import ConfigurableIOManager, InputContext, OutputContext, ResourceDependency

from bggen_assets.core.keys import partition_prefix
from bggen_assets.partitions import split_key

from .object_store import ObjectStore


class ManifestIOManager(ConfigurableIOManager):
    store: ResourceDependency[ObjectStore]

    def _key(self, context) -> str:
        asset = "-".join(context.asset_key.path)
        merchant, category = split_key(context.asset_partition_key)
        return f"{partition_prefix('manifests', merchant, category)}/{asset}.json"

    def handle_output(self, context: OutputContext, obj) -> None:
        if obj is None:
            return
        self.store.put_bytes(self._key(context), json.dumps(obj, sort_keys=True).encode(), "application/json")

    def load_input(self, context: InputContext):
        return json.loads(self.store.get_bytes(self._key(context)))
