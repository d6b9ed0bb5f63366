"""Manifests are keyed by run: concurrent runs of one partition never read each other's manifests,
and a selective rerun of a downstream asset reads what the upstream's latest materialization made.

Real Dagster runs (materialize, in process) on one instance and one local store: run A's middle
step starts run B of the same partition, which rewrites the upstream manifest; A's last step must
still read A's own (with the fixed `manifests/<m>/<c>/<asset>.json` keys it read B's).
"""
from __future__ import annotations

from dagster import DagsterInstance, asset, materialize

from bggen_assets.core.manifests import CatalogManifest
from bggen_assets.partitions import merchant_category, partition_key, split_key
from resources.io_manager import ManifestIOManager, manifest_key, run_manifest_key
from resources.object_store import LocalObjectStore

MERCHANT, CATEGORY = "northwind", "boots"
RUN_INSIDE: list = []  # the run the middle step starts, when a test arms it


def catalog_of(context, tag: str) -> CatalogManifest:
    merchant, category = split_key(context.partition_key)
    return CatalogManifest(merchant=merchant, category=category, snapshot_key=f"snapshots/{tag}.parquet",
                           products=(), rejected=())


@asset(partitions_def=merchant_category, config_schema={"tag": str})
def catalog(context) -> CatalogManifest:
    return catalog_of(context, context.op_config["tag"])


@asset(partitions_def=merchant_category)
def middle(context, catalog: CatalogManifest) -> CatalogManifest:
    if RUN_INSIDE:
        RUN_INSIDE.pop()()  # another run of this partition, while this one is between its steps
    return catalog


@asset(partitions_def=merchant_category)
def seen(context, catalog: CatalogManifest, middle: CatalogManifest) -> CatalogManifest:
    return catalog.model_copy(update={"feed_format": f"seen {catalog.snapshot_key} after {middle.snapshot_key}"})


def run(instance, store, tag: str, selection=None):
    result = materialize([catalog, middle, seen], instance=instance, partition_key=partition_key(MERCHANT, CATEGORY),
                         resources={"io_manager": ManifestIOManager(store=store)}, selection=selection,
                         run_config={"ops": {"catalog": {"config": {"tag": tag}}}} if selection is None else None)
    assert result.success
    return result


def test_concurrent_runs_read_their_own_manifests_and_reruns_read_the_latest(tmp_path):
    store = LocalObjectStore(root=str(tmp_path / "objects"))
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("merchant", [MERCHANT])
    instance.add_dynamic_partitions("category", [CATEGORY])
    other: list = []
    RUN_INSIDE.append(lambda: other.append(run(instance, store, "B", selection=None)))
    first = run(instance, store, "A")
    assert other, "the inner run did not happen"
    own = CatalogManifest.from_json(store.get_bytes(manifest_key("seen", MERCHANT, CATEGORY)))
    # run B finished its `seen` inside run A; A's `seen` came last and read A's catalog, not B's
    assert own.feed_format == "seen snapshots/A.parquet after snapshots/A.parquet"
    run_b = CatalogManifest.from_json(store.get_bytes(run_manifest_key("seen", MERCHANT, CATEGORY, other[0].run_id)))
    assert run_b.feed_format == "seen snapshots/B.parquet after snapshots/B.parquet"
    keys = first.asset_materializations_for_node("catalog")[0].metadata["manifest_key"].value
    assert keys == run_manifest_key("catalog", MERCHANT, CATEGORY, first.run_id) and store.exists(keys)

    # a rerun of `seen` alone reads the manifests of the upstreams' latest materializations, found
    # through their metadata, not the alias: B's catalog (B materialized it after A), A's middle
    # (A's middle step finished after B's run)
    store.put_bytes(manifest_key("catalog", MERCHANT, CATEGORY),
                    catalog_of_key("snapshots/alias.parquet").to_json())
    rerun = run(instance, store, "unused", selection=[seen])
    again = CatalogManifest.from_json(store.get_bytes(run_manifest_key("seen", MERCHANT, CATEGORY, rerun.run_id)))
    assert again.feed_format == "seen snapshots/B.parquet after snapshots/A.parquet"


def catalog_of_key(snapshot_key: str) -> CatalogManifest:
    return CatalogManifest(merchant=MERCHANT, category=CATEGORY, snapshot_key=snapshot_key, products=(), rejected=())
