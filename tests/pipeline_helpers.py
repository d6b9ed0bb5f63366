"""Running the asset graph for one partition on an ephemeral Dagster instance."""
from dagster import DagsterInstance, materialize

from bggen_assets.assets.pipeline import pipeline_assets
from bggen_assets.partitions import partition_key


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
