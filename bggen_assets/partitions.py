"""Every asset is partitioned by merchant x category, both dynamic (sensors add new ones).

One order everywhere: code passes (merchant, category) pairs and builds or splits a key only
through these functions. A key's string form is Dagster's own, which joins the dimension values in
dimension-name order ("category|merchant"); it appears in run tags, the UI and sensor cursors.
"""
from dagster import DynamicPartitionsDefinition, MultiPartitionKey, MultiPartitionsDefinition

merchant_partitions = DynamicPartitionsDefinition(name="merchant")
category_partitions = DynamicPartitionsDefinition(name="category")
merchant_category = MultiPartitionsDefinition({"merchant": merchant_partitions, "category": category_partitions})


def partition_key(merchant: str, category: str) -> MultiPartitionKey:
    return MultiPartitionKey({"merchant": merchant, "category": category})


def split_key(key: MultiPartitionKey | str) -> tuple[str, str]:
    """(merchant, category) from a MultiPartitionKey or its string form."""
    if isinstance(key, MultiPartitionKey):
        dims = key.keys_by_dimension
        return dims["merchant"], dims["category"]
    category, merchant = str(key).split("|")  # the string form: dimension-name order
    return merchant, category
