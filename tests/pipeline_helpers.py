"""Running the asset graph for one partition on an ephemeral Dagster instance."""
from dagster import AssetCheckKey, AssetKey, DagsterInstance, materialize

from bggen_assets.assets.pipeline import pipeline_assets
from bggen_assets.partitions import partition_key, split_key
from resources.io_manager import manifest_key


def run_partition(resources, merchant, category, instance=None, selection=None, raise_on_error=True):
    instance = instance or DagsterInstance.ephemeral()
    if merchant not in instance.get_dynamic_partitions("merchant"):
        instance.add_dynamic_partitions("merchant", [merchant])
    if category not in instance.get_dynamic_partitions("category"):
        instance.add_dynamic_partitions("category", [category])
    result = materialize(pipeline_assets, partition_key=partition_key(merchant, category), resources=resources,
                         instance=instance, selection=selection, raise_on_error=raise_on_error)
    return result, instance


def metadata_of(result, asset):
    for ev in result.get_asset_materialization_events():
        if ev.materialization.asset_key.to_user_string() == asset:
            return {k: getattr(v, "value", v) for k, v in ev.materialization.metadata.items()}
    raise KeyError(asset)


def checks_of(result):
    return {c.check_name: c for c in result.get_asset_check_evaluations()}


def read_manifest(store, kind, asset, merchant, category):
    """The manifest an asset stored for a partition, as its type (kind: a core.manifests class)."""
    return kind.from_json(store.get_bytes(manifest_key(asset, merchant, category)))


def check_status_by_partition(instance, asset: str, check: str) -> dict[tuple[str, str], str]:
    """(merchant, category) -> status of the check's latest evaluation there, as the instance holds it."""
    infos = instance.event_log_storage.get_asset_check_partition_info([AssetCheckKey(AssetKey(asset), check)])
    return {split_key(i.partition_key) if i.partition_key else None: i.latest_execution_status.value for i in infos}
