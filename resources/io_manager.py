"""Asset values are small typed manifests (keys, boxes, counts) kept in the object store as JSON.

Images never pass through the IO manager: assets stream them to the store one product at a time,
so a partition's memory stays flat whatever its size. A manifest is read back as the type the
consuming asset's parameter names (`catalog: CatalogManifest`), through that type's `from_json`,
which also reads the untyped manifests stored before the types existed.

Manifests are keyed by run (`manifests/<m>/<c>/runs/<run_id>/<asset>.json`, written once), so two
runs of one partition never read each other's plans. A downstream step reads its own run's
manifest; one whose upstream did not run in this run (a selective rerun, a re-execution from
failure) reads the manifest the upstream partition's latest materialization names in its metadata
(`manifest_key`). The partition's fixed key (`manifest_key`) is a "latest" alias, written after
the run's own key, for readers outside a run (tests, benchmarks) and the manifests stored before
run keys; the pipeline reads it only when the materialization names no key.
"""

from typing import Optional

from dagster import AssetRecordsFilter, ConfigurableIOManager, InputContext, OutputContext, ResourceDependency

from bggen_assets.core.keys import check_name, partition_prefix
from bggen_assets.core.manifests import Document
from bggen_assets.core.store import ObjectNotFound
from bggen_assets.partitions import split_key

from .object_store import ObjectStore

METADATA_KEY = "manifest_key"


def manifest_key(asset: str, merchant: str, category: str) -> str:
    """The partition's latest manifest of one asset (the alias written after each run's own)."""
    return f"{partition_prefix('manifests', merchant, category)}/{asset}.json"


def run_manifest_key(asset: str, merchant: str, category: str, run_id: str) -> str:
    """The manifest of one asset's partition as one run made it (never rewritten by another run)."""
    return f"{partition_prefix('manifests', merchant, category)}/runs/{check_name('run id', run_id)}/{asset}.json"


class ManifestIOManager(ConfigurableIOManager):
    store: ResourceDependency[ObjectStore]

    @staticmethod
    def _asset(context) -> str:
        return "-".join(context.asset_key.path)

    def handle_output(self, context: OutputContext, obj) -> None:
        if obj is None:
            return
        if not isinstance(obj, Document):
            raise TypeError(f"{context.asset_key.to_user_string()} returned a {type(obj).__name__}; "
                            f"the manifest IO manager stores bggen_assets.core.manifests documents")
        merchant, category = split_key(context.asset_partition_key)
        body = obj.to_json()
        key = run_manifest_key(self._asset(context), merchant, category, context.run_id)
        self.store.put_bytes(key, body, "application/json")
        self.store.put_bytes(manifest_key(self._asset(context), merchant, category), body, "application/json")
        context.add_output_metadata({METADATA_KEY: key})

    def _materialized_key(self, context: InputContext, partition: str) -> Optional[str]:
        """The manifest key the upstream partition's latest materialization recorded, if any."""
        found = context.instance.fetch_materializations(
            AssetRecordsFilter(asset_key=context.asset_key, asset_partitions=[partition]), limit=1)
        for record in found.records:
            materialization = record.asset_materialization
            value = materialization.metadata.get(METADATA_KEY) if materialization else None
            if value is not None:
                return value.value
        return None

    def load_input(self, context: InputContext):
        kind = context.dagster_type.typing_type
        if not (isinstance(kind, type) and issubclass(kind, Document)):
            raise TypeError(f"input {context.name!r} must be annotated with its manifest type "
                            f"(bggen_assets.core.manifests), not {kind!r}")
        partition = context.asset_partition_key
        merchant, category = split_key(partition)
        asset = self._asset(context)
        own = run_manifest_key(asset, merchant, category, context.step_context.run_id)
        try:
            return kind.from_json(self.store.get_bytes(own))  # the upstream ran in this run
        except ObjectNotFound:
            pass
        key = self._materialized_key(context, partition) or manifest_key(asset, merchant, category)
        return kind.from_json(self.store.get_bytes(key))
