"""Partitions of `meeting_pages`: municipality (dynamic, civic.band subdomains) x document type."""

import dagster as dg

from .naming import DOCUMENT_TYPES

MUNICIPALITY = "municipality"
DOCUMENT_TYPE = "document_type"

municipality_partitions = dg.DynamicPartitionsDefinition(name=MUNICIPALITY)
document_type_partitions = dg.StaticPartitionsDefinition(list(DOCUMENT_TYPES))
meeting_page_partitions = dg.MultiPartitionsDefinition(
    {MUNICIPALITY: municipality_partitions, DOCUMENT_TYPE: document_type_partitions}
)


def partition_key(municipality: str, document_type: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({MUNICIPALITY: municipality, DOCUMENT_TYPE: document_type})


def partition_tags(municipality: str, document_type: str) -> dict[str, str]:
    """The run tags Dagster gives a run of this partition (the run queue limits by the municipality tag)."""
    return {
        "dagster/partition": partition_key(municipality, document_type),
        f"dagster/partition/{MUNICIPALITY}": municipality,
        f"dagster/partition/{DOCUMENT_TYPE}": document_type,
    }


def split_partition_key(key: str | dg.MultiPartitionKey) -> tuple[str, str]:
    """(municipality, document_type) of a multi-partition key."""
    dims = key.keys_by_dimension if isinstance(key, dg.MultiPartitionKey) else dict(
        zip(sorted((DOCUMENT_TYPE, MUNICIPALITY)), key.split("|"))
    )
    return dims[MUNICIPALITY], dims[DOCUMENT_TYPE]
