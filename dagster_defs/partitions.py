"""Partitions of the asset graph: dynamic ``plate`` x dynamic ``well``.

Per-plate assets use :data:`plate_partitions`; per plate x well assets use
:data:`plate_well_partitions`, whose keys Dagster spells ``<plate>|<well>`` (dimensions in
alphabetical order of their names, e.g. ``Plate1|A1``). Wells are one dimension shared by
all plates, so a plate x well key exists for every combination; for a combination the
index does not hold (or a product whose arm the well lacks, e.g. SBS products of a
CP-only well) the assets record a materialisation with ``absent`` metadata giving the
reason, so that per-plate summaries over a plate's wells are not left waiting.
"""

from __future__ import annotations

import warnings

import dagster as dg

PLATE = "plate"
WELL = "well"

plate_partitions = dg.DynamicPartitionsDefinition(name=PLATE)
well_partitions = dg.DynamicPartitionsDefinition(name=WELL)
plate_well_partitions = dg.MultiPartitionsDefinition(
    {PLATE: plate_partitions, WELL: well_partitions}
)

#: plate x well partition -> its plate (and a plate -> all its wells, the other way).
with warnings.catch_warnings():
    # Beta in Dagster 1.13 but the documented way to map plate x well onto plate.
    warnings.simplefilter("ignore")
    plate_of_well = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name=PLATE)

#: Characters Dagster does not allow in partition keys.
FORBIDDEN = set("|[],")


def plate_well_key(plate: str, well: str) -> str:
    """The plate x well partition key, e.g. ``Plate1|A1``."""
    return str(dg.MultiPartitionKey({PLATE: plate, WELL: well}))


def split_key(key: str | dg.MultiPartitionKey) -> tuple[str, str]:
    """``(plate, well)`` of a plate x well partition key."""
    if isinstance(key, dg.MultiPartitionKey):
        dims = key.keys_by_dimension
        return dims[PLATE], dims[WELL]
    plate, _, well = str(key).partition("|")
    return plate, well


def valid_key(name: str) -> bool:
    """Whether ``name`` can be a partition key (non-empty, none of ``| [ ] ,``)."""
    return bool(name) and not (set(name) & FORBIDDEN)
