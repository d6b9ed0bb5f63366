"""Every asset is partitioned by merchant x category, both dynamic (sensors add new ones)."""
from dagster import DynamicPartitionsDefinition, MultiPartitionKey, MultiPartitionsDefinition

merchant_partitions = DynamicPartitionsDefinition(name="merchant")
category_partitions = DynamicPartitionsDefinition(name="category")
merchant_category = MultiPartitionsDefinition({"merchant": merchant_partitions, "category": category_partitions})


def partition_key(merchant: str, category: str) -> MultiPartitionKey:
    return MultiPartitionKey({"merchant": merchant, "category": category})


def split_key(key) -> tuple[str, str]:
    """(merchant, category) from a MultiPartitionKey or its string form."""
    dims = key.keys_by_dimension if hasattr(key, "keys_by_dimension") else None
    if dims is None:
        # string form joins dimension values in dimension-name order: category|merchant
        category, merchant = str(key).split("|")
        return merchant, category
    return dims["merchant"], dims["category"]
